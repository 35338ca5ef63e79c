"""RDM's training loss (RDM paper, Eq. 3): eps- (or v-) prediction on the whole latent, one timestep per
sample; with probability cond_dropout a sample's neighbour embeddings are replaced by zeros, the
conditioning classifier-free guidance contrasts with at sampling time (App. D.2)."""

from __future__ import annotations

import torch

from rissole import distributed
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole.diffusion.training import ForwardNoising
from rissole.models.rdm_unet import RDMUNet


class RDMLoss:
    def __init__(self, schedule: NoiseSchedule, cond_dropout: float = 0.1) -> None:
        self.noising = ForwardNoising(schedule)
        self.cond_dropout = cond_dropout

    def __call__(self, model: RDMUNet, x0: torch.Tensor, neighbours: torch.Tensor, generator: torch.Generator,
                 source: torch.Tensor | None = None) -> torch.Tensor:
        """x0 (B, c, h, w) scaled latents; neighbours (B, k, d) embeddings -> mean squared error. An edit model
        also reads `source` (B, c, h, w), the manipulated latents, which dropout never removes."""
        xt, t, target = self.noising(x0, model.config.prediction, generator)
        drop = (distributed.rand(x0.shape[0], generator) < self.cond_dropout).to(x0.device)
        pred = model(xt, t, neighbours.masked_fill(drop.view(-1, 1, 1), 0.0), source)
        return ((pred - target) ** 2).mean()
