"""RISSOLE's pipeline: the block denoiser, its block database and its VQ-GAN (rissole.heads.pipeline).

    pipe = load_pipeline("checkpoints/rissole-fmnist-g2")
    rows = pipe.pseudo_queries(64, top_m=1.0, seed=0)          # p_D (RDM paper, Eq. 5), truncated (Eq. 7)
    images, latents = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(steps=50, seed=0))

Unconditional sampling needs no search: pseudo-queries come from p_D and their neighbours
from the `database` table. A user's own image is a query: it is encoded, keyed and searched live.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from rissole.checkpoint import Checkpoint
from rissole.heads.rissole.batches import check_pairing
from rissole.heads.rissole.sampling import sample_blocks
from rissole_runtime.diffusion.noise import NoiseSource
from rissole.heads.pipeline import Pipeline, SamplingOptions
from rissole.retrieval import open_database
from rissole.retrieval.database import gather_neighbours
from rissole.retrieval.neighbours import open_table
from rissole_runtime.retrieval.blocks import merge_blocks


class RissolePipeline(Pipeline):
    kind = "rissole"
    accepts = frozenset({"sampler", "steps", "eta", "order"})

    @classmethod
    def open(cls, ckpt: Checkpoint, model: torch.nn.Module, database: str | os.PathLike, vqgan: torch.nn.Module,
             device: torch.device) -> "RissolePipeline":
        db = open_database(database)
        table = open_table(db, "database") if model.config.retrieval else None
        check_pairing(db, table, model.config, ckpt.config["vqgan_hash"], ckpt.path)
        return cls(ckpt, model, db, vqgan, device)

    def neighbour_ids(self, rows: np.ndarray, k: int | None = None) -> np.ndarray | None:
        return super().neighbour_ids(rows, k) if self.model.config.retrieval else None

    @torch.no_grad()
    def query_neighbours(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        from rissole.data import to_model_range
        from rissole.retrieval.keys import KeySet, latent_keys
        from rissole.retrieval.searchers import make_searcher

        z = self.vqgan.encode(to_model_range(images).to(self.device)).cpu().numpy()
        keys = KeySet(self.db, self.model.config.key)
        return make_searcher("exact").build(keys).search(latent_keys(z, self.db.grid, keys.mode), k or self.k)[0]

    def row_latents(self, rows: np.ndarray) -> np.ndarray:
        """The rows' blocks stitched back into latents."""
        return merge_blocks(self.db.blocks(np.asarray(rows)), self.db.grid)

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray | None, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None, x_T: torch.Tensor | None = None,
                 context: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), unscaled latents (n, c, h, w)); x_T (n, b, c, s, s). x_T and the stochastic
        steps' noise come from NoiseSource(seed), as in rissole-run, so the same seed gives the same image there."""
        if context is not None:
            raise ValueError("RISSOLE conditions on neighbour blocks of its database, not on embeddings (context)")
        scale = float(self.config["scale_factor"])
        nb = None
        if self.model.config.retrieval:
            if neighbour_ids is None:
                raise ValueError("this model needs neighbours: pass neighbour_ids(rows) or query_neighbours(images)")
            nb = torch.from_numpy(gather_neighbours(self.db, neighbour_ids, self.k) * np.float32(scale))
            n = len(neighbour_ids)
        if n is None:
            raise ValueError("n is needed for a model without retrieval")
        cfg = self.model.config  # x_T and stochastic-step noise from the numpy source rissole-run uses
        noise = NoiseSource(options.seed, n, (cfg.num_blocks, cfg.latent_channels, cfg.block_size, cfg.block_size))
        lat = sample_blocks(self.model, self.sampler(options), nb, n, torch.Generator(), options.guidance, options.order,
                            progress, x_T, noise=noise) / scale
        return self.decode(lat), lat.cpu()
