"""RDM's training loss (seed 000, Eq. 3): eps- (or v-) prediction on the whole latent, one timestep per
sample; with probability cond_dropout a sample's neighbour embeddings are replaced by zeros, the
conditioning classifier-free guidance contrasts with at sampling time (App. D.2)."""

from __future__ import annotations

import torch

from rissole.diffusion.schedule import NoiseSchedule
from rissole.models.rdm_unet import RDMUNet


class RDMLoss:
    def __init__(self, schedule: NoiseSchedule, cond_dropout: float = 0.1) -> None:
        a, s = schedule.noise_coefficients(range(schedule.num_timesteps))
        self.sqrt_ab = torch.as_tensor(a, dtype=torch.float32)
        self.sqrt_1m_ab = torch.as_tensor(s, dtype=torch.float32)
        self.T = schedule.num_timesteps
        self.cond_dropout = cond_dropout

    def __call__(self, model: RDMUNet, x0: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x0 (B, c, h, w) scaled latents; neighbours (B, k, d) embeddings -> mean squared error."""
        dev, n = x0.device, x0.shape[0]
        t = torch.randint(0, self.T, (n,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator).to(dev)
        drop = (torch.rand(n, generator=generator) < self.cond_dropout).to(dev)
        a = self.sqrt_ab[t].to(dev).view(-1, 1, 1, 1)
        s = self.sqrt_1m_ab[t].to(dev).view(-1, 1, 1, 1)
        pred = model(a * x0 + s * eps, t.to(dev), neighbours.masked_fill(drop.view(-1, 1, 1), 0.0))
        target = eps if model.config.prediction == "eps" else a * eps - s * x0
        return ((pred - target) ** 2).mean()
