"""The forward process at training time, shared by every diffusion head (RISSOLE blocks, RDM latents):
one timestep per sample, x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, and the regression target of the
model's parametrisation (rissole_runtime.diffusion.prediction.training_target: eps, v or x0)."""

from __future__ import annotations

import torch

from rissole import distributed
from rissole_runtime.diffusion.prediction import training_target
from rissole_runtime.diffusion.schedule import NoiseSchedule


class ForwardNoising:
    def __init__(self, schedule: NoiseSchedule) -> None:
        a, s = schedule.noise_coefficients(range(schedule.num_timesteps))
        self.sqrt_ab = torch.as_tensor(a, dtype=torch.float32)
        self.sqrt_1m_ab = torch.as_tensor(s, dtype=torch.float32)
        self.T = schedule.num_timesteps

    def __call__(self, x0: torch.Tensor, prediction: str, generator: torch.Generator, group: int = 1
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_t, t on x0's device, target) for x0 (n, c, h, w); draws t then eps from `generator` (CPU), for
        this process's part of the global batch (rissole.distributed; rows of one sample stay together)."""
        dev, n = x0.device, x0.shape[0]
        t = distributed.randint(self.T, n, generator, group)
        eps = distributed.randn(tuple(x0.shape), generator, group).to(dev)
        a = self.sqrt_ab[t].to(dev).view(-1, 1, 1, 1)
        s = self.sqrt_1m_ab[t].to(dev).view(-1, 1, 1, 1)
        return a * x0 + s * eps, t.to(dev), training_target(prediction, x0, eps, a, s)
