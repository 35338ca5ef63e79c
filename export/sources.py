"""What rissole-export takes from a checkpoint, per kind; everything else is one writer (bundle_writer).

    rissole  the block denoiser over g x g blocks; db/ ships the block database, whose blocks
             (gathered at the sample's own positions, times scale_factor) are the conditioning
    rdm      RDM's latent UNet over the whole latent, shipped as a grid-1 model with ONE block (the
             block is the latent), so the runtime's noise layout, batching, guidance and DDIM loop
             serve it unchanged; db/ ships the embedding database itself
    rarm     RARM's transformer as two graphs, the neighbours' cross-attention keys/values (once
             per sample) and one decoding position, the key-value cache in and its new slot out (64 calls
             per sample), plus the VQ codebook to turn codes into latents; db/ as for rdm

Why the RDM bundle ships the embedding database (and not latents to embed on the device): an
embedding database is already a block database with grid 1, its blocks.npy (1, N, d) holding
exactly the unit vectors the head's cross-attention reads (EmbeddingDatabase.embeddings), so it is
hard-linked like a block database, stays memory-mapped, and the runtime gathers neighbour
embeddings with one memmap read: no embedder, no torch, no extra copy. For the vq embedder the
vectors could be recomputed on the device (latent (c, h, w) -> token-major (h w c) -> unit length,
rissole.embeddings.vq_tokens), but that would ship the same bytes (d = c h w values a row) plus the
source latents file and rows.npy; for the inception embedder it would need the network. The bundle
size without the database is unchanged by the choice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from torch import nn

from rissole_runtime.diffusion.guidance import doubled, with_zeros
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole_runtime.errors import ConfigError
from rissole.retrieval.database import BlockDatabase, gather_neighbours
from rissole.retrieval.neighbours import open_table
from rissole_export.graphs import EpsDenoiserGraph, RDMEpsGraph
from rissole_runtime.bundle import TABLE

EMBEDDING_CONDITIONING = ("neighbours (B, k, d): unit embeddings gathered from db/blocks.npy (1, rows, d) at the "
                          "`database` table's ids of the pseudo-query row; not scaled")
OWN_CONDITIONING = ("neighbours (B, 1 + k, d), kNN-Diffusion: the pseudo-query row's own unit embedding, then its k "
                    "nearest other rows' (the `database` table's k + 1 columns without the row itself); with a "
                    "prompt, the text embedding and its k nearest rows by exact search")


@dataclass
class ExportSource:
    """One checkpoint's parts for the bundle: the eps graph, real inputs for the parity checks, what to ship."""

    kind: str
    config: dict[str, Any]  # the checkpoint's run config (scale_factor, vqgan_hash, step)
    graph: nn.Module | None  # diffusion kinds: (inputs) -> eps, float32, eval; rarm: None (rissole_export.rarm_parts)
    input_names: list[str]
    vqgan: nn.Module
    db: BlockDatabase  # shipped as db/ (a block database, or an embedding database: grid 1)
    schedule: NoiseSchedule | None  # None for rarm
    model: dict[str, Any]  # the manifest's "model" section
    zero_conditioning: str  # what the guidance half of the batch holds
    database_role: str  # role of db/blocks.npy in the manifest's file list
    pipe: Any  # the PyTorch pipeline it came from (rissole.heads.pipeline.Pipeline): real inputs
    # diffusion kinds, for the parity checks: scaled x0 rows (n * blocks, c, s, s) of database rows, and the
    # denoiser's neighbour input (n * blocks, vectors, ...) of the same rows
    denoiser_x0: Callable[[np.ndarray], np.ndarray] | None = None
    denoiser_neighbours: Callable[[np.ndarray], np.ndarray] | None = None
    dynamic: dict[str, dict[int, str]] | None = None  # denoiser input axes besides the batch that may vary

    @property
    def own_embedding(self) -> bool:
        return bool(self.model.get("own_embedding", False))

    @property
    def table_k(self) -> int:
        """Columns of the shipped `database` table (rissole_runtime.bundle.Bundle.table_k)."""
        return self.k + int(self.own_embedding)

    @property
    def k(self) -> int:
        return int(self.model["k"])

    @property
    def retrieval(self) -> bool:
        return bool(self.model["retrieval"])

    @property
    def diffusion(self) -> bool:
        return self.graph is not None

    @property
    def scale_factor(self) -> float:
        """Latent scaling of the diffusion kinds; RARM samples codes, whose latents are never scaled."""
        return float(self.config["scale_factor"]) if self.diffusion else 1.0


def load_source(ckpt: str | os.PathLike, db: str | os.PathLike | None = None,
                vqgan: str | os.PathLike | None = None) -> ExportSource:
    """The export source of `ckpt`, by its head (rissole.heads.registry)."""
    from rissole.heads.registry import head, load_pipeline

    pipe = load_pipeline(ckpt, database=db, vqgan=vqgan, device="cpu")
    return head(pipe.kind).load("export_source")(pipe)


def rissole_source(pipe: Any) -> ExportSource:
    """A RissolePipeline's parts."""
    cfg = pipe.model.config
    graph = EpsDenoiserGraph(pipe.model.float().eval(), pipe.schedule).eval()
    model = {"kind": "rissole", "grid": cfg.grid, "num_blocks": cfg.num_blocks, "k": cfg.k,
             "latent_shape": list(pipe.db.latent_shape), "block_shape": list(pipe.db.block_shape),
             "retrieval": cfg.retrieval, "position": cfg.position, "key": cfg.key, "prediction": cfg.prediction}
    scale, b, k = np.float32(pipe.config["scale_factor"]), cfg.num_blocks, cfg.k
    return ExportSource("rissole", pipe.config, graph, graph.input_names(), pipe.vqgan.float().eval(), pipe.db,
                        pipe.schedule, model, "all-zero neighbour blocks", "block database", pipe,
                        lambda rows: pipe.db.blocks(rows).reshape(len(rows) * b, *pipe.db.block_shape) * scale,
                        lambda rows: gather_neighbours(pipe.db, pipe.neighbour_ids(rows), k)
                        .reshape(len(rows) * b, k, *pipe.db.block_shape) * scale)


def rdm_source(pipe: Any) -> ExportSource:
    """A NeighbourHeadPipeline's parts (kind rdm): one block = the whole latent; db/ = the embedding database.
    kNN-Diffusion (model.own_embedding) conditions on 1 + k vectors; the neighbour axis is left free so
    a prompt may condition on fewer (--strategy text)."""
    from rissole.embeddings.store import KEY_MODE

    cfg = pipe.model.config
    if cfg.edit:
        raise ConfigError(f"{pipe.path}: an edit model (model.edit) reads the image to edit beside z_t and does not "
                          "export; edit on the desktop with `rissole edit`.")
    schedule = pipe.schedule
    graph = RDMEpsGraph(pipe.model.float().eval(), schedule).eval()
    shape = [cfg.latent_channels, cfg.latent_size, cfg.latent_size]
    model = {"kind": "rdm", "grid": 1, "num_blocks": 1, "k": cfg.k, "latent_shape": shape, "block_shape": shape,
             "retrieval": True, "position": False, "key": KEY_MODE, "prediction": cfg.prediction,
             "embedding": pipe.edb.spec.to_dict(), "own_embedding": bool(cfg.own_embedding),
             "conditioning": OWN_CONDITIONING if cfg.own_embedding else EMBEDDING_CONDITIONING}
    scale = np.float32(pipe.config["scale_factor"])
    return ExportSource("rdm", pipe.config, graph, graph.input_names(), pipe.vqgan.float().eval(), pipe.edb.db,
                        schedule, model, "all-zero neighbour embeddings", "neighbour embedding database", pipe,
                        lambda rows: pipe.edb.latents(rows) * scale,
                        lambda rows: pipe.edb.embeddings(pipe.neighbour_ids(rows)),
                        {"neighbours": {0: "batch", 1: "vectors"}})


def rarm_source(pipe: Any) -> ExportSource:
    """A NeighbourHeadPipeline's parts (kind rarm): the transformer's shapes; db/ = the embedding database."""
    from rissole.embeddings.store import KEY_MODE

    if pipe.model.config.own_embedding:
        raise ConfigError(f"{pipe.path}: an RARM with kNN-Diffusion's conditioning (model.own_embedding) does not export: "
                          "the edge RARM conditions on database neighbours only. Sample it with `rissole sample`.")
    cfg = pipe.model.config
    shape = [int(d) for d in pipe.vqgan.config.latent_shape]
    model = {"kind": "rarm", "grid": 1, "num_blocks": 1, "k": cfg.k, "latent_shape": shape, "block_shape": shape,
             "retrieval": True, "position": False, "key": KEY_MODE, "embedding": pipe.edb.spec.to_dict(),
             "vocab_size": cfg.vocab_size, "seq_len": cfg.seq_len, "start_token": pipe.model.start_token,
             "depth": cfg.depth, "num_heads": cfg.num_heads, "head_dim": cfg.width // cfg.num_heads,
             "context_len": cfg.k * cfg.context_tokens,
             "conditioning": EMBEDDING_CONDITIONING}
    return ExportSource("rarm", pipe.config, None, [], pipe.vqgan.float().eval(), pipe.edb.db, None, model,
                        "all-zero neighbour embeddings", "neighbour embedding database", pipe)


def real_neighbour_embeddings(src: ExportSource, n: int, seed: int) -> np.ndarray:
    """(n, k, d) embeddings of real database rows' table neighbours (RDM, RARM)."""
    rows = np.random.default_rng(seed).choice(src.db.rows, size=n, replace=False)
    ids = np.asarray(open_table(src.db, TABLE).ids[rows])
    return src.pipe.edb.embeddings(ids[:, : src.k]).astype(np.float32)


def real_denoiser_inputs(src: ExportSource, n: int, seed: int,
                         timesteps: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Noised real latents (RISSOLE: their blocks) at random timesteps (drawn from `timesteps` when given,
    e.g. a sampler's) with their real neighbours, plus a zero-conditioned copy (guidance)."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(src.db.rows, size=n, replace=False)
    x0 = src.denoiser_x0(rows)
    t = (rng.integers(0, src.schedule.num_timesteps, size=len(x0)) if timesteps is None
         else rng.choice(np.asarray(timesteps), size=len(x0)))
    a, s = (v.astype(np.float32)[:, None, None, None] for v in src.schedule.noise_coefficients(t))
    xt = a * x0 + s * rng.standard_normal(x0.shape).astype(np.float32)
    feeds = {"x": doubled(xt).astype(np.float32), "t": doubled(t).astype(np.int64)}
    if src.retrieval:
        feeds["neighbours"] = with_zeros(src.denoiser_neighbours(rows)).astype(np.float32)
    if src.model["position"]:
        feeds["position"] = np.tile(np.arange(src.model["num_blocks"], dtype=np.int64), 2 * n)
    return feeds


def real_latents(src: ExportSource, n: int, seed: int) -> np.ndarray:
    """Unscaled real latents (n, c, h, w) for the decoder's parity check."""
    rows = np.random.default_rng(seed).choice(src.db.rows, size=n, replace=False)
    return np.ascontiguousarray(src.pipe.row_latents(rows)).astype(np.float32)
