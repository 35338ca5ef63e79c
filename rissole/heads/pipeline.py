"""One inference interface for every head: a trained model, its database and its VQ-GAN.

    pipe = load_pipeline("checkpoints/rdm-fmnist-vq")            # the head's Pipeline, by the checkpoint's kind
    images, seconds = pipe.sample(64, SamplingOptions(guidance=2.0, top_m=0.1, seed=0))

`Pipeline` owns what every head shares: loading (checkpoint kind, weights, the VQ-GAN the model was
trained on, checked by hash), the proposal p_D of the database (RDM paper, Eq. 5; top-m, Eq. 7),
neighbour ids from the `database` table or a live search of the user's images, decoding, and
`sample(n, options)`. A head implements `open` (its model's database), `neighbour_ids`,
`query_neighbours`, `row_latents` and `generate`, and says in `accepts` which head-specific
SamplingOptions it takes; asking for another is an error naming the option and the head.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch

from rissole.checkpoint import Checkpoint, load_checkpoint
from rissole.heads.neighbour_data import resolve_path
from rissole.paths import REPO_ROOT, SHIPPED_VQGAN
from rissole.retrieval.database import BlockDatabase
from rissole.retrieval.neighbours import list_tables, open_table
from rissole_runtime.diffusion.loop import Sampler
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole_runtime.diffusion.solvers import ODE_SOLVERS, SAMPLERS, make_sampler
from rissole_runtime.errors import CheckpointError, ConfigError, DataError
from rissole_runtime.validate import check_finite
from rissole_runtime.retrieval.proposal import PseudoQuerySampler, proposal_from_table

# options only some heads take -> the `rissole sample` flag that sets it
HEAD_OPTIONS = {"sampler": "--sampler", "steps": "--steps", "eta": "--eta", "order": "--order", "k": "-k",
                "top_k": "--top-k", "temperature": "--temperature", "prompt": "--prompt", "strategy": "--strategy",
                "class_name": "--class", "pool": "--pool"}


@dataclass(frozen=True)
class SamplingOptions:
    """How to sample. Every head: guidance, top_m, seed, batch. Diffusion heads: sampler, steps, eta;
    RISSOLE: order; RDM and RARM: k (neighbours per sample; None: the model's k_train); RARM: top_k,
    temperature; RDM and RARM in a text-image space (rissole.heads.text_conditioning): prompt (texts, cycled
    over the samples) with strategy, or class_name with pool, instead of pseudo-queries. `batch`: None draws
    all n in one generate call with noise seed `seed`; a number draws `batch` at a time, the batch starting at image s with noise seed `seed * 100_003 + s` (the paper
    table's evaluation)."""

    guidance: float = 1.0
    top_m: float = 1.0
    seed: int = 0
    batch: int | None = None
    sampler: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    order: str = "parallel"
    k: int | None = None
    top_k: int = 0
    temperature: float = 1.0
    spacing: str | None = None  # timestep spacing of dpmpp2m / unipc (None: the solvers' default, trailing)
    prompt: tuple[str, ...] | None = None
    strategy: str | None = None  # how a prompt conditions (rissole_runtime.prompts; None: the model's default)
    class_name: str | None = None
    pool: int | None = None

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {', '.join(SAMPLERS)}, found {self.sampler!r}")
        if self.eta and self.sampler in ODE_SOLVERS:
            raise ConfigError(f"--eta {self.eta}: {self.sampler} solves the probability-flow ODE and has no eta; "
                              "eta is for --sampler ddim.")
        if not 0.0 < self.top_m <= 1.0:
            raise ConfigError(f"top-m must be in (0, 1], found {self.top_m}")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"batch must be >= 1, found {self.batch}")
        if self.prompt is not None and self.class_name is not None:
            raise ConfigError("--prompt and --class both given; condition on a text prompt or on a class, not both.")
        if self.strategy is not None and self.prompt is None:
            raise ConfigError(f"--strategy {self.strategy}: a strategy says how a --prompt conditions; give --prompt.")
        if self.pool is not None and self.class_name is None:
            raise ConfigError("--pool: the neighbour pool of --class; give --class.")
        if self.prompt is not None and not (self.prompt and all(t.strip() for t in self.prompt)):
            raise ConfigError("--prompt: empty text; give at least one non-empty prompt.")

    def changed(self) -> set[str]:
        """Head-specific options set to something other than their default."""
        default = SamplingOptions()
        return {f for f in HEAD_OPTIONS if getattr(self, f) != getattr(default, f)}


@dataclass(frozen=True)
class Conditioning:
    """What n samples condition on: `ids` (n, k) database rows (None: a head without retrieval), the
    pseudo-query `rows` they came from (None for a user's query or a prompt), and for text prompts the
    `context` embeddings themselves (n, k', d) with the `texts` (rissole.heads.text_conditioning)."""

    ids: np.ndarray | None
    rows: np.ndarray | None = None
    context: np.ndarray | None = None
    texts: list[str] | None = None

    def part(self, sl: slice) -> "Conditioning":
        cut = lambda a: None if a is None else a[sl]  # noqa: E731
        return Conditioning(cut(self.ids), cut(self.rows), cut(self.context), cut(self.texts))


class Pipeline:
    """What every head's inference shares; subclasses are registered in rissole.heads.registry."""

    kind: ClassVar[str]
    accepts: ClassVar[frozenset[str]]  # the HEAD_OPTIONS this head takes

    def __init__(self, ckpt: Checkpoint, model: torch.nn.Module, db: BlockDatabase, vqgan: torch.nn.Module,
                 device: torch.device) -> None:
        self.path, self.model, self.config, self.db, self.vqgan, self.device = ckpt.path, model, ckpt.config, db, vqgan, device

    @classmethod
    def load(cls, ckpt: str | os.PathLike, database: str | os.PathLike | None = None,
             vqgan: str | os.PathLike | None = None, device: str = "auto") -> "Pipeline":
        """The pipeline of the checkpoint's head (must be `cls` or a subclass), on `database` (default: the
        one its config names) and `vqgan` (default: the one its config names, checked by hash)."""
        from rissole.autoencoder import load_vqgan
        from rissole.device import pick_device
        from rissole.heads.registry import head

        c = load_checkpoint(ckpt)
        spec = head(c.kind, f"{ckpt}/config.yaml")
        pipe_cls = spec.load("pipeline")
        if not issubclass(pipe_cls, cls):
            raise CheckpointError(f"{ckpt}: a {c.kind} checkpoint; expected a {cls.__name__} head.")
        dev = pick_device(device)
        model = spec.build_model(c.config["model"])
        c.load_into(model, c.inference_weights_name())
        vq_path = vqgan or resolve_path(c.config["data"].get("vqgan") or str(SHIPPED_VQGAN), REPO_ROOT)
        vq_hash = load_checkpoint(vq_path).weights_hash()
        if vq_hash != c.config["vqgan_hash"]:
            raise CheckpointError(f"{vq_path}: VQ-GAN {vq_hash[:12]}, but the model {ckpt} was trained on latents of "
                                  f"VQ-GAN {c.config['vqgan_hash'][:12]}. Pass that VQ-GAN with --vqgan.")
        db = database or resolve_path(c.config["data"]["db"], REPO_ROOT)
        pipe = pipe_cls.open(c, model.to(dev).eval(), db, load_vqgan(vq_path, dev), dev)
        pipe.vqgan_path = Path(vq_path)
        return pipe

    @classmethod
    def open(cls, ckpt: Checkpoint, model: torch.nn.Module, database: str | os.PathLike, vqgan: torch.nn.Module,
             device: torch.device) -> "Pipeline":
        """Open the head's database and check that it fits the model."""
        raise NotImplementedError

    def reference_source(self) -> str | None:
        """The held-out data of the model's images (its VQ-GAN's data.val_source): what `rissole eval fid`
        compares samples with by default."""
        vq = getattr(self, "vqgan_path", None)
        return None if vq is None else (load_checkpoint(vq).config.get("data") or {}).get("val_source")

    # -- conditioning ------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.model.config.k)

    def proposal(self) -> np.ndarray | None:
        """p_D from the database's `train` table (RDM paper, Eq. 5); None (uniform) without one."""
        if "train" not in list_tables(self.db):
            return None
        return proposal_from_table(open_table(self.db, "train").ids, self.db.rows)

    def pseudo_queries(self, n: int, top_m: float = 1.0, seed: int = 0) -> np.ndarray:
        """n database rows drawn from p_D truncated to its top-m fraction (RDM paper, Eq. 7)."""
        return PseudoQuerySampler(self.proposal(), self.db.rows, m=top_m, seed=seed).sample(n)

    def neighbour_ids(self, rows: np.ndarray, k: int | None = None) -> np.ndarray | None:
        """(n, k) neighbour ids of database rows, read from the `database` table (k: the model's by default)."""
        k = k or self.k
        table = open_table(self.db, "database")
        if k > table.k:
            raise DataError(f"{self.db.path}: {k} neighbours asked for, its database table holds {table.k}. "
                            f"Re-run `rissole db neighbours {self.db.path}` with -k {k}.")
        return np.asarray(table.ids[np.asarray(rows), :k])

    def query_neighbours(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, k) neighbour ids of the user's own uint8 images, by a live exact search."""
        raise NotImplementedError

    def conditioning(self, n: int, options: SamplingOptions) -> Conditioning:
        """n samples' conditioning without a user query: pseudo-queries from p_D (top-m, seeded) and their
        neighbours (heads that take text prompts override this for options.prompt / class_name)."""
        rows = self.pseudo_queries(n, options.top_m, options.seed)
        return Conditioning(self.neighbour_ids(rows, options.k), rows)

    # -- images ------------------------------------------------------------------------------------
    def row_latents(self, rows: np.ndarray) -> np.ndarray:
        """Unscaled latents (n, c, h, w) of database rows."""
        raise NotImplementedError

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """uint8 images of unscaled latents, 256 at a time; non-finite latents (a broken model or option) are
        an error, not black images."""
        from rissole.data import from_model_range

        check_finite(latents.cpu().numpy(), "the sampled latents (before decoding)")
        return np.concatenate([from_model_range(self.vqgan.decode(latents[s : s + 256].to(self.device)).clamp(-1, 1))
                               for s in range(0, len(latents), 256)])

    def rows_as_images(self, rows: np.ndarray) -> np.ndarray:
        """Database rows decoded back to images: the retrieved neighbours as a person sees them."""
        rows = np.asarray(rows)
        images = self.decode(torch.from_numpy(self.row_latents(rows.ravel())))
        return images.reshape(*rows.shape, *images.shape[1:])

    # -- sampling ----------------------------------------------------------------------------------
    @classmethod
    def check(cls, options: SamplingOptions, given: set[str] | None = None, where: str = "") -> None:
        """Refuse head-specific options this head does not take (`given`: those the user set; default: those
        not at their default), naming the flag and the head."""
        asked = options.changed() if given is None else set(given)
        wrong = [f for f in HEAD_OPTIONS if f in asked and f not in cls.accepts]
        if wrong:
            takes = ", ".join(HEAD_OPTIONS[f] for f in HEAD_OPTIONS if f in cls.accepts) or "none"
            raise ConfigError(f"{where + ': ' if where else ''}{', '.join(HEAD_OPTIONS[f] for f in wrong)} "
                              f"{'is not an option' if len(wrong) == 1 else 'are not options'} of a {cls.kind} "
                              f"model; its own options are {takes}.")

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.config["diffusion"])

    def sampler(self, options: SamplingOptions) -> Sampler:
        """The diffusion sampler the options ask for (DDIM, DDPM, DPM-Solver++ 2M, UniPC), on the model's schedule."""
        try:
            return make_sampler(options.sampler, self.schedule, options.steps, options.eta, options.spacing)
        except ValueError as e:
            raise ConfigError(f"--sampler {options.sampler} --steps {options.steps} --eta {options.eta}: {e}") from None

    def num_steps(self, options: SamplingOptions) -> int:
        """Network steps of one `generate` (for a progress bar)."""
        return len(self.sampler(options))

    def describe(self, options: SamplingOptions) -> str:
        """How the samples were drawn, for the command's report."""
        return f"{options.sampler} {self.num_steps(options)} steps"

    def generate(self, neighbour_ids: np.ndarray | None, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None, x_T: torch.Tensor | None = None,
                 context: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), the head's raw output) for these neighbours, noise seed options.seed.
        `x_T` (diffusion heads) fixes the initial noise (parity with the edge runtime); `context` (heads
        conditioned on embeddings) replaces the neighbours' embeddings (a text prompt's Conditioning)."""
        raise NotImplementedError

    def sample(self, n: int, options: SamplingOptions,
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
        """n uint8 images from n pseudo-queries (p_D, top-m, seeded) or the options' prompt or class, and the
        seconds spent in `generate`; options.batch at a time (see SamplingOptions)."""
        self.check(options)
        cond = self.conditioning(n, options)
        batch = options.batch or n
        out, seconds = [], 0.0
        for s in range(0, n, batch):
            part = cond.part(slice(s, s + batch))
            seed = options.seed if options.batch is None else options.seed * 100_003 + s
            t0 = time.perf_counter()
            images, _ = self.generate(part.ids, dataclasses.replace(options, seed=seed), n=min(batch, n - s),
                                      progress=progress, context=part.context)
            seconds += time.perf_counter() - t0
            out.append(images)
        return np.concatenate(out), seconds
