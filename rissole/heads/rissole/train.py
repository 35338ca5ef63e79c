"""Training the RISSOLE block denoiser (and, with grid 1 and retrieval off, the plain LDM baseline).

Run directory (same layout as the VQ-GAN's):
    RUN/checkpoint/  latest weights, EMA, optimizer and RNG state (bit-exact --resume)
    RUN/final/       config + model + EMA: what `rissole sample` loads
    RUN/log.csv      step, loss, lr, seconds
The final config records what sampling needs: the latent scale factor, the database it was
trained with (path, grid, key mode) and the VQ-GAN hash that ties them together.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from rissole.checkpoint import Checkpoint
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole.heads.rissole.batches import BlockBatcher, check_pairing, latent_std
from rissole.heads.rissole.loss import BlockDiffusionLoss
from rissole.heads.trainer import COMMON_DEFAULTS, HeadTrainer, train_head
from rissole.models.block_unet import BlockDenoiser
from rissole.retrieval import open_database
from rissole.retrieval.neighbours import open_table

KIND = "rissole"
TRAIN_DEFAULTS: dict[str, Any] = {**COMMON_DEFAULTS, "steps": 10000, "batch_size": 64}  # images; b blocks each



def synthetic_loss(model: BlockDenoiser, images: int, generator: torch.Generator) -> torch.Tensor:
    """The training loss on a random batch of `images` images (all b blocks, k neighbours each): what a real
    step computes: the used-parameter count (rissole.heads.registry.Head.parameter_counts) and `rissole
    budget`'s activation memory."""
    from rissole.heads.rissole.batches import BlockBatch

    cfg = model.config
    dev = next(model.parameters()).device
    c, s, b, n = cfg.latent_channels, cfg.block_size, cfg.num_blocks, images * cfg.num_blocks
    x0 = torch.randn((n, c, s, s), generator=generator).to(dev)
    nb = torch.randn((n, cfg.k, c, s, s), generator=generator).to(dev) if cfg.retrieval else None
    batch = BlockBatch(x0, nb, torch.arange(b).repeat(images), torch.zeros_like(x0), images)
    return BlockDiffusionLoss(NoiseSchedule(), 0.1)(model, batch, generator)


class BlockDiffusionTrainer(HeadTrainer):
    """The RISSOLE head on the shared trainer: block batches from the database and its neighbour table."""

    kind = KIND
    defaults = TRAIN_DEFAULTS

    def setup_data(self) -> None:
        config, dc = self.config, self.config["data"]
        self.db = open_database(dc["db"])
        mc = self.model.config
        self.table = open_table(self.db, dc.get("table", "train")) if mc.retrieval else None
        check_pairing(self.db, self.table, mc, config.get("vqgan_hash"), "the config")
        self.data_vqgan(self.db.checkpoint_hash, f"the database {self.db.path}")
        config["vqgan_hash"] = self.db.checkpoint_hash
        if "scale_factor" not in config:
            config["scale_factor"] = 1.0 / latent_std(self.db)
        latents = None
        if dc.get("latents"):
            from rissole.latents import open_latents

            lat = open_latents(dc["latents"])
            self.db.check_vqgan(lat.checkpoint_hash, f"the training latents {dc['latents']}")
            latents = lat.array
        self.batcher = BlockBatcher(self.db, self.table, mc.grid, mc.k, config["scale_factor"], latents)
        self.schedule = NoiseSchedule.from_dict(config.get("diffusion", {}))
        config["diffusion"] = self.schedule.to_dict()
        self.loss_fn = BlockDiffusionLoss(self.schedule, self.tc["cond_dropout"])

    def num_rows(self) -> int:
        return len(self.batcher)

    def on_resume(self, ckpt: Checkpoint) -> None:
        self.config["scale_factor"] = ckpt.config["scale_factor"]
        self.batcher.scale = ckpt.config["scale_factor"]

    def loss(self, ids: np.ndarray) -> torch.Tensor:
        batch = self.batcher.batch(ids)
        for name in ("x0", "neighbours", "previous"):
            if getattr(batch, name) is not None:
                setattr(batch, name, getattr(batch, name).to(self.device))
        return self.loss_fn(self.model, batch, self.gen)


def train_block_diffusion(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> BlockDiffusionTrainer:
    """Train (or resume) a run; `stop_after` ends this invocation early, with a checkpoint."""
    return train_head(BlockDiffusionTrainer, config, run_dir, resume, stop_after, progress)  # type: ignore[return-value]
