"""RARM from a bundle without torch: p_D pseudo-queries -> neighbour embeddings from the memmap ->
context.onnx once -> step.onnx at every code position with the key-value cache -> codebook -> decoder.

The same steps as RARMPipeline.generate + rissole.heads.rarm.sampling.sample_codes: guidance doubles
the batch with all-zero embeddings and mixes the log-probabilities (Eq. 8, rissole.diffusion's
`guide`), and the draw is rarm_pick's, the one PyTorch sampling uses. The uniforms come from a
numpy generator, or from any `uniform(n)` the caller passes (the parity tests pass PyTorch's).
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from rissole_runtime.diffusion.guidance import doubled, guide, halves, with_zeros
from rissole_runtime.rarm_pick import log_softmax, pick_from_uniform
from rissole_runtime.bundle import CODEBOOK, CONTEXT, STEP, Bundle
from rissole_runtime.sampler import BundleSampler

Uniform = Callable[[int], np.ndarray]


def codes_to_latents(codes: np.ndarray, codebook: np.ndarray, latent_shape: tuple[int, int, int]) -> np.ndarray:
    """Code indices (n, h*w) in raster order -> unscaled latents (n, c, h, w) (the VQ-GAN's decode_code lookup)."""
    c, h, w = latent_shape
    return np.ascontiguousarray(codebook[np.asarray(codes)].reshape(len(codes), h, w, c).transpose(0, 3, 1, 2))


class KVCache:
    """step.onnx's self-attention cache, owned by the caller and written one slot per position: per decoder
    block, keys transposed (B, heads, head_dim, seq_len) as self_k{i} and values (B, heads, seq_len,
    head_dim) as self_v{i} (the graph's input names)."""

    def __init__(self, model: dict, batch: int) -> None:
        self.depth = int(model["depth"])
        h, L, dh = int(model["num_heads"]), int(model["seq_len"]), int(model["head_dim"])
        self.arrays: dict[str, np.ndarray] = {}
        for i in range(self.depth):
            self.arrays[f"self_k{i}"] = np.zeros((batch, h, dh, L), dtype=np.float32)
            self.arrays[f"self_v{i}"] = np.zeros((batch, h, L, dh), dtype=np.float32)

    def write(self, kv_new: np.ndarray, pos: int) -> None:
        """Store the step's kv_new (B, depth, 2, heads, 1, head_dim) in slot `pos`."""
        for i in range(self.depth):
            self.arrays[f"self_k{i}"][:, :, :, pos] = kv_new[:, i, 0, :, 0]
            self.arrays[f"self_v{i}"][:, :, pos] = kv_new[:, i, 1, :, 0]


def context_feeds(context_session, neighbours: np.ndarray) -> dict[str, np.ndarray]:  # noqa: ANN001
    """context.onnx's outputs by name (cross_k{i}, cross_v{i}): the step's per-block context inputs."""
    names = [o.name for o in context_session.get_outputs()]
    return dict(zip(names, context_session.run(None, {"neighbours": neighbours})))


class TokenEdgeSampler(BundleSampler):
    """An RARM bundle's context and step sessions, its codebook and decoder, ready to generate images."""

    def __init__(self, bundle: Bundle, provider: str = "auto", threads: int | None = None) -> None:
        super().__init__(bundle, provider, threads)
        self.context = self.session(CONTEXT, "context")
        self.step = self.session(STEP, "step")
        self.codebook = np.load(bundle.file(CODEBOOK))
        m = bundle.model
        self.seq_len, self.start_token = int(m["seq_len"]), int(m["start_token"])

    def sample_codes(self, neighbours: np.ndarray, uniform: Uniform, guidance: float = 1.0, top_k: int = 0,
                     temperature: float = 1.0, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Code indices (n, seq_len) from neighbour embeddings (n, k, d), max_samples samples per call."""
        out = []
        for s in range(0, len(neighbours), self.bundle.max_samples):
            out.append(self._codes(neighbours[s: s + self.bundle.max_samples], uniform, guidance, top_k, temperature,
                                   progress))
        return np.concatenate(out)

    def _codes(self, nb: np.ndarray, uniform: Uniform, guidance: float, top_k: int, temperature: float,
               progress: Callable[[int], None] | None) -> np.ndarray:
        t0 = time.perf_counter()
        n, guided = len(nb), guidance != 1.0
        nb = np.ascontiguousarray(with_zeros(nb) if guided else nb, dtype=np.float32)
        cross = context_feeds(self.context, nb)
        cache = KVCache(self.bundle.model, len(nb))
        token = np.full(len(nb), self.start_token, dtype=np.int64)
        codes = np.empty((n, self.seq_len), dtype=np.int64)
        for pos in range(self.seq_len):
            feed = {"token": token, "pos": np.full(len(nb), pos, dtype=np.int64), **cache.arrays, **cross}
            logits, kv_new = self.step.run(None, feed)
            cache.write(kv_new, pos)  # the cache is the runtime's: one slot written per position
            logp = log_softmax(logits)
            if guided:
                logp = guide(*halves(logp), guidance)
            codes[:, pos] = pick_from_uniform(logp, uniform(n), top_k, temperature)
            token = doubled(codes[:, pos]) if guided else codes[:, pos]
            if progress is not None:
                progress(pos)
        self.timings.network_calls += 1 + self.seq_len
        self.timings.network_s += time.perf_counter() - t0
        return codes

    def latents(self, codes: np.ndarray) -> np.ndarray:
        return codes_to_latents(codes, self.codebook, self.bundle.block_shape)

    def generate(self, n: int, seed: int = 0, top_m: float = 1.0, guidance: float = 1.0, top_k: int = 0,
                 temperature: float = 1.0, progress: Callable[[int], None] | None = None,
                 uniform: Uniform | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(uint8 images (n, C, H, W), pseudo-query rows (n,)); uniforms from numpy seeded by `seed` unless given."""
        rows = self.pseudo_queries(n, top_m, seed)
        if uniform is None:
            rng = np.random.default_rng(seed + 1)
            uniform = rng.random
        codes = self.sample_codes(self.neighbours(rows)[:, 0], uniform, guidance, top_k, temperature, progress)
        return self.decode(self.latents(codes)), rows
