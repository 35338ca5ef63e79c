"""Sampling from a bundle without torch: p_D pseudo-queries -> neighbours from the memmap -> the shared
DDIM loop (rissole.diffusion) around the ONNX denoiser -> stitched latents -> ONNX decoder.

BundleSampler holds what every kind shares (decoder session, pseudo-queries, the neighbour gather,
decoding); EdgeSampler is the diffusion kinds' sampler; RARM's code-by-code sampler is
rissole_runtime.token_sampler. `open_sampler` picks the one a bundle needs.

One sampler for both diffusion kinds. For RISSOLE the steps mirror RissolePipeline.generate +
sample_blocks (parallel order); for RDM, RDMPipeline.generate + rissole.heads.rdm.sampling.sample_latents.
Both: the same proposal sampler, the same (n, b, c, s, s) noise layout folded into the batch (RDM:
b = 1, the block is the whole latent), the same guidance by doubling the batch with all-zero
conditioning in one call. The only kind-specific piece is what `neighbours` gathers: scaled
neighbour blocks (RISSOLE) or the neighbours' unit embeddings (RDM).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from rissole_runtime.diffusion.guidance import eps_function
from rissole_runtime.diffusion.loop import denoise
from rissole_runtime.diffusion.noise import NoiseSource
from rissole_runtime.diffusion.schedule import AffineSampler
from rissole_runtime.diffusion.solvers import MultistepSolver, make_sampler
from rissole_runtime.errors import ConfigError, RissoleError
from rissole_runtime.retrieval.blocks import merge_blocks
from rissole_runtime.retrieval.database import gather_neighbours
from rissole_runtime.retrieval.proposal import PseudoQuerySampler
from rissole_runtime.retrieval.search import own_neighbour_ids
from rissole_runtime.bundle import DECODER, DENOISER, Bundle
from rissole_runtime.validate import check_finite
from rissole_runtime.session import check_inputs, open_session, providers_for, used_provider

if TYPE_CHECKING:
    from rissole_runtime.text import TextEncoder


def to_uint8(images: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8, rounded and clipped (as rissole.data.from_model_range)."""
    return ((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).round().astype(np.uint8)


@dataclass
class Timings:
    network_s: float = 0.0  # in the sampling networks: the denoiser, or RARM's context and step
    decode_s: float = 0.0
    network_calls: int = 0


class BundleSampler:
    """What every kind's sampler shares: the decoder session, p_D pseudo-queries, the neighbour gather."""

    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None) -> None:
        self.bundle = bundle
        self.providers = providers_for(provider, cache_dir=bundle.path / "trt_cache")
        self.threads = threads
        self.decoder = self.session(DECODER, "decoder")
        self.provider = used_provider(self.decoder)
        self.timings = Timings()
        self._text: TextEncoder | None = None

    def session(self, name: str, section: str):  # noqa: ANN201 - an onnxruntime.InferenceSession
        """An ONNX session on the bundle's file `name`, its inputs checked against manifest[section]."""
        sess = open_session(self.bundle.file(name), self.providers, self.threads)
        check_inputs(sess, self.bundle.file(name), self.bundle.manifest[section]["inputs"])
        return sess

    def pseudo_queries(self, n: int, top_m: float = 1.0, seed: int = 0) -> np.ndarray:
        """n database rows drawn from p_D truncated to its top-m fraction (as RissolePipeline.pseudo_queries)."""
        return PseudoQuerySampler(self.bundle.proposal, self.bundle.db.rows, m=top_m, seed=seed).sample(n)

    def neighbours(self, rows: np.ndarray) -> np.ndarray:
        """float32 conditioning (n, b, k, ...) of the pseudo-query rows, gathered from the memmap:
        rissole: each sample's k neighbours' same-position blocks (n, b, k, c, s, s), scaled;
        rdm, rarm: the k neighbours' unit embeddings as the one block's conditioning (n, 1, k, d), unscaled."""
        ids = np.asarray(self.bundle.neighbour_ids[np.asarray(rows)])
        if self.bundle.kind_info.embedding_database:
            if self.bundle.own_embedding:  # kNN-Diffusion: the row itself, then its k nearest others
                ids = own_neighbour_ids(rows, ids, self.bundle.k)
            return self.bundle.db.vectors(ids[:, : self.bundle.table_k])[:, None]
        return gather_neighbours(self.bundle.db, ids, self.bundle.k) * np.float32(self.bundle.scale_factor)

    def prompt_neighbours(self, prompts: list[str], n: int, strategy: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n, m) with TEXT_ID for the text, conditioning (n, 1, m, d)) of prompts cycled over n samples: the
        bundle's text encoder, exact search over the memmapped embeddings, the strategy of `rissole sample`
        (rissole_runtime.prompts; default: the model's)."""
        from rissole_runtime.prompts import default_strategy, prompt_condition
        from rissole_runtime.retrieval.search import exact_search

        text = self.text_encoder().embed(list(prompts))[np.arange(n) % len(prompts)]
        db = self.bundle.db
        ids, vectors = prompt_condition(text, lambda q, j: exact_search(q, db.vector_chunks(), j)[0], db.vectors,
                                        strategy or default_strategy(self.bundle.own_embedding), self.bundle.table_k)
        return ids, vectors[:, None]

    def text_encoder(self) -> "TextEncoder":
        """The bundle's text encoder (opened on first use); a clear error for a bundle without one."""
        if self._text is None:
            from rissole_runtime.text import TextEncoder, Tokenizer

            te = self.bundle.text_encoder
            if te is None or not self.bundle.kind_info.embedding_database:
                raise ConfigError(f"{self.bundle.path}: this bundle has no text encoder, so --prompt cannot be embedded. "
                                  "rissole-export adds text_encoder.onnx to RDM and kNN-Diffusion bundles of models trained "
                                  "on a text-image embedding (joint or clip:PATH; e.g. checkpoints/knn-stickers-joint).")
            tok = Tokenizer(self.bundle.file(te["tokenizer"]), int(te["max_tokens"]))
            self._text = TextEncoder(self.session(te["file"], "text_encoder"), tok, self.bundle.db.dim)
        return self._text

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """uint8 images (n, C, H, W) from unscaled latents, max_samples at a time."""
        check_finite(latents, "the sampled latents (before decoding)")
        t0 = time.perf_counter()
        step = self.bundle.max_samples
        out = [self.decoder.run(None, {"latents": np.ascontiguousarray(latents[s: s + step], dtype=np.float32)})[0]
               for s in range(0, len(latents), step)]
        self.timings.decode_s += time.perf_counter() - t0
        return to_uint8(np.concatenate(out))


def open_sampler(bundle: Bundle, provider: str = "auto", threads: int | None = None) -> BundleSampler:
    """The sampler of the bundle's kind: EdgeSampler (rissole, rdm) or TokenEdgeSampler (rarm)."""
    if not bundle.kind_info.diffusion:
        from rissole_runtime.token_sampler import TokenEdgeSampler

        return TokenEdgeSampler(bundle, provider, threads)
    return EdgeSampler(bundle, provider, threads)


class EdgeSampler(BundleSampler):
    """The diffusion kinds (rissole, rdm): the bundle's denoiser in the shared DDIM loop."""

    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None) -> None:
        if not bundle.kind_info.diffusion:
            raise RissoleError(f"{bundle.path}: a {bundle.kind} bundle has no denoiser; open it with open_sampler.")
        super().__init__(bundle, provider, threads)
        self.denoiser = self.session(DENOISER, "denoiser")

    def initial_noise(self, n: int, seed: int = 0) -> np.ndarray:
        """x_T (n, b, c, s, s) from the shared noise source (the PyTorch pipelines draw the same)."""
        c, s, _ = self.bundle.block_shape
        return NoiseSource(seed, n, (self.bundle.num_blocks, c, s, s)).initial()

    def _eps_fn(self, neighbours: np.ndarray | None, n: int) -> Callable[[np.ndarray, np.ndarray, bool], object]:
        """eps(x, t, guided) over the ONNX denoiser (which returns eps whatever the model predicts); guided
        doubles the batch with zero neighbours in one call (rissole_runtime.diffusion.guidance)."""
        b = self.bundle.num_blocks
        feeds = {}
        if neighbours is not None:
            feeds["neighbours"] = neighbours.reshape(n * b, *neighbours.shape[2:])
        if self.bundle.position:
            feeds["position"] = np.tile(np.arange(b, dtype=np.int64), n)

        def network(x: np.ndarray, t: np.ndarray, **cond: np.ndarray) -> np.ndarray:
            self.timings.network_calls += 1
            return self.denoiser.run(None, {"x": x, "t": t, **cond})[0]

        return eps_function(network, "eps", self.bundle.schedule, feeds, conditioning=("neighbours",))

    def sample_latents(self, neighbours: np.ndarray | None, x_T: np.ndarray, sampler: AffineSampler | MultistepSolver,
                       guidance: float = 1.0, seed: int = 0, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Unscaled latents (n, c, h, w) from the conditioning of `neighbours` (n, b, k, ...) and noise
        (n, b, c, s, s), max_samples samples per network call."""
        n, b = x_T.shape[:2]
        if self.bundle.retrieval and neighbours is None:
            raise RissoleError("this bundle's model conditions on neighbours: pass them (EdgeSampler.neighbours)")
        noise = NoiseSource(seed, n, x_T.shape[1:])  # stochastic steps only (DDPM, DDIM eta > 0), per sample
        t_fn = lambda t, m: np.full((m,), t, dtype=np.int64)  # noqa: E731
        out = []
        t0 = time.perf_counter()
        for s in range(0, n, self.bundle.max_samples):
            e = min(s + self.bundle.max_samples, n)
            nb = None if neighbours is None else neighbours[s:e]
            x = x_T[s:e].reshape((e - s) * b, *x_T.shape[2:])
            noise_fn = lambda shape, s=s, e=e: noise.step(s, e, shape)  # noqa: E731
            x = denoise(self._eps_fn(nb, e - s), sampler, x, noise_fn, t_fn, guidance, progress)
            out.append(merge_blocks(x.reshape(e - s, b, *x_T.shape[2:]), self.bundle.grid))
        self.timings.network_s += time.perf_counter() - t0
        return np.concatenate(out) / np.float32(self.bundle.scale_factor)

    def sampler(self, steps: int, eta: float = 0.0, kind: str = "ddim") -> AffineSampler | MultistepSolver:
        """The sampler `kind` (rissole_runtime.diffusion.solvers.SAMPLERS) over the bundle's schedule; for the
        manifest's own sampler and step count its timesteps are checked against the recorded ones."""
        sampler = make_sampler(kind, self.bundle.schedule, steps, eta)
        recorded = self.bundle.manifest["sampler"]
        if (kind == recorded.get("kind", "ddim") and len(sampler) == recorded["num_steps"]
                and sampler.timesteps.tolist() != recorded["timesteps"]):
            raise RissoleError(f"{self.bundle.path}: {kind}-{steps} timesteps differ from the manifest's; the bundle was "
                               "written by an incompatible rissole version. Re-export it.")
        return sampler

    def generate(self, n: int, steps: int = 50, seed: int = 0, top_m: float = 1.0, guidance: float = 1.0,
                 eta: float = 0.0, progress: Callable[[int], None] | None = None, sampler: str = "ddim",
                 prompts: list[str] | None = None, strategy: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images (n, C, H, W), pseudo-query rows (n,), or with prompts the conditioning ids (n, m)):
        either kind, one path."""
        if prompts:
            rows, nb = self.prompt_neighbours(prompts, n, strategy)
        else:
            rows = self.pseudo_queries(n, top_m, seed)
            nb = self.neighbours(rows) if self.bundle.retrieval else None
        lat = self.sample_latents(nb, self.initial_noise(n, seed), self.sampler(steps, eta, sampler), guidance, seed,
                                  progress)
        return self.decode(lat), rows
