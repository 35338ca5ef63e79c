"""The block denoiser's training loss: eps- (or v-) prediction, one independent timestep per block sample.

Each block of each image draws its own t (the authors' code draws one t per batch: needless
variance). The squared error is averaged over a block's elements, summed over the b blocks of
an image and averaged over images. With probability cond_dropout an image's neighbours are
replaced by zeros, the conditioning classifier-free guidance contrasts with at sampling time.
"""

from __future__ import annotations

import torch

from rissole import distributed
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole.diffusion.training import ForwardNoising
from rissole.heads.rissole.batches import BlockBatch
from rissole.models.block_unet import BlockDenoiser


class BlockDiffusionLoss:
    def __init__(self, schedule: NoiseSchedule, cond_dropout: float = 0.1) -> None:
        self.noising = ForwardNoising(schedule)
        self.cond_dropout = cond_dropout

    def dropped(self, images: int, generator: torch.Generator) -> torch.Tensor:
        """(images,) bool: which images train this step with all-zero neighbours."""
        return distributed.rand(images, generator) < self.cond_dropout

    def __call__(self, model: BlockDenoiser, batch: BlockBatch, generator: torch.Generator) -> torch.Tensor:
        dev = batch.x0.device
        b = batch.x0.shape[0] // batch.images
        cfg = model.config
        xt, t, target = self.noising(batch.x0, cfg.prediction, generator, group=b)
        drop = self.dropped(batch.images, generator).repeat_interleave(b).to(dev)
        neighbours = batch.neighbours.masked_fill(drop.view(-1, 1, 1, 1, 1), 0.0) if batch.neighbours is not None else None
        pred = model(xt, t, neighbours, batch.positions.to(dev) if cfg.position else None,
                     batch.previous if cfg.previous_block else None)
        per_block = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        return per_block.view(batch.images, b).sum(1).mean()
