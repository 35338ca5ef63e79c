"""The block denoiser's training objective (seed 003, Eq. 2, with the squared error of Alg. 1).

Every block sample draws its own timestep t ~ U{0..T-1}: blocks are independent samples of one
conditional model, and one t per batch (the authors' code) only adds variance. x_t = a_t x0 + b_t eps
with the coefficients of the shared NoiseSchedule; the network predicts eps. The squared error is
averaged over a block's elements, summed over the b blocks of an image (Eq. 2 sums over blocks)
and averaged over images.

Conditioning dropout: with probability cond_dropout a block sample's neighbours are replaced by
zeros, which is exactly the "unconditional" input classifier-free guidance contrasts with at
sampling time (RDM style; no learned null token). Drawn per block sample, like t: the network
sees one block at a time, so this is the same objective as dropping whole images, with less
variance. The previous block (+P) is never dropped. Without retrieval nothing is dropped, and
with grid 1 the objective is the plain LDM one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rissole.diffusion.schedule import NoiseSchedule
from rissole.heads.block_data import BlockBatch
from rissole.models.block_unet import BlockDenoiser


@dataclass
class NoiseDraw:
    """The random part of one loss evaluation, drawn on the CPU so it does not depend on the device."""

    t: torch.Tensor  # (n,) int64 timesteps, one per block sample
    eps: torch.Tensor  # (n, c, s, s) standard normal noise
    drop: torch.Tensor  # (n,) bool: neighbours replaced by zeros


class BlockDiffusionLoss:
    def __init__(self, schedule: NoiseSchedule, cond_dropout: float = 0.1) -> None:
        if not 0.0 <= cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), found {cond_dropout}")
        a, b = schedule.noise_coefficients(range(schedule.num_timesteps))
        self.signal = torch.as_tensor(a, dtype=torch.float32)
        self.noise = torch.as_tensor(b, dtype=torch.float32)
        self.num_timesteps = schedule.num_timesteps
        self.cond_dropout = cond_dropout

    def draw(self, batch: BlockBatch, generator: torch.Generator) -> NoiseDraw:
        n = batch.x0.shape[0]
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator)
        drop = torch.rand(n, generator=generator) < self.cond_dropout
        eps = torch.randn(tuple(batch.x0.shape), generator=generator)
        return NoiseDraw(t, eps, drop)

    def inputs(self, model: BlockDenoiser, batch: BlockBatch, draw: NoiseDraw) -> dict[str, torch.Tensor | None]:
        """Keyword arguments of the denoiser's forward for this batch and draw (noised x, dropped neighbours)."""
        cfg, dev = model.config, batch.x0.device
        t, eps = draw.t.to(dev), draw.eps.to(dev)
        x_t = self.signal.to(dev)[t].view(-1, 1, 1, 1) * batch.x0 + self.noise.to(dev)[t].view(-1, 1, 1, 1) * eps
        neighbours = None
        if cfg.retrieval:
            neighbours = batch.neighbours.masked_fill(draw.drop.to(dev).view(-1, 1, 1, 1, 1), 0.0)
        return {
            "x": x_t,
            "t": t,
            "neighbours": neighbours,
            "position": batch.positions.to(dev) if cfg.position else None,
            "previous": batch.previous if cfg.previous_block else None,
        }

    def __call__(self, model: BlockDenoiser, batch: BlockBatch, draw: NoiseDraw) -> torch.Tensor:
        pred = model(**self.inputs(model, batch, draw))
        per_block = (pred.float() - draw.eps.to(pred.device)).square().mean(dim=(1, 2, 3))
        return per_block.view(batch.images, batch.num_blocks).sum(dim=1).mean()
