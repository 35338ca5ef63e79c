"""The block denoiser's training loss: eps- (or v-) prediction, one independent timestep per block sample.

Each block of each image draws its own t (the authors' code draws one t per batch: needless
variance). The squared error is averaged over a block's elements, summed over the b blocks of
an image and averaged over images. With probability cond_dropout an image's neighbours are
replaced by zeros, the conditioning classifier-free guidance contrasts with at sampling time.
"""

from __future__ import annotations

import torch

from rissole.diffusion.schedule import NoiseSchedule
from rissole.heads.block_batches import BlockBatch
from rissole.models.block_unet import BlockDenoiser


class BlockDiffusionLoss:
    def __init__(self, schedule: NoiseSchedule, cond_dropout: float = 0.1) -> None:
        a, s = schedule.noise_coefficients(range(schedule.num_timesteps))
        self.sqrt_ab = torch.as_tensor(a, dtype=torch.float32)
        self.sqrt_1m_ab = torch.as_tensor(s, dtype=torch.float32)
        self.T = schedule.num_timesteps
        self.cond_dropout = cond_dropout

    def dropped(self, images: int, generator: torch.Generator) -> torch.Tensor:
        """(images,) bool: which images train this step with all-zero neighbours."""
        return torch.rand(images, generator=generator) < self.cond_dropout

    def __call__(self, model: BlockDenoiser, batch: BlockBatch, generator: torch.Generator) -> torch.Tensor:
        dev = batch.x0.device
        n = batch.x0.shape[0]
        b = n // batch.images
        t = torch.randint(0, self.T, (n,), generator=generator)
        eps = torch.randn(batch.x0.shape, generator=generator).to(dev)
        drop = self.dropped(batch.images, generator).repeat_interleave(b).to(dev)
        a = self.sqrt_ab[t].to(dev).view(-1, 1, 1, 1)
        s = self.sqrt_1m_ab[t].to(dev).view(-1, 1, 1, 1)
        xt = a * batch.x0 + s * eps
        cfg = model.config
        neighbours = batch.neighbours.masked_fill(drop.view(-1, 1, 1, 1, 1), 0.0) if batch.neighbours is not None else None
        pred = model(xt, t.to(dev), neighbours, batch.positions.to(dev) if cfg.position else None,
                     batch.previous if cfg.previous_block else None)
        target = eps if cfg.prediction == "eps" else a * eps - s * batch.x0
        per_block = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        return per_block.view(batch.images, b).sum(1).mean()
