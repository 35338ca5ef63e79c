"""Exponential moving average of a model's floating-point parameters and buffers, with a warm-up.

Without a warm-up an EMA of decay 0.999 still holds about exp(-n / 1000) of the random
initialisation after n updates (two thirds after 450 steps), and inference, which prefers the EMA,
decodes noise. The warm-up decay_n = min(decay, (1 + n) / (10 + n)) (as in TensorFlow's
ExponentialMovingAverage with num_updates) makes the average follow the live weights early on.
"""

from __future__ import annotations

import torch
from torch import nn


def warmup_decay(decay: float, num_updates: int) -> float:
    """The decay used for update number `num_updates` (0-based): min(decay, (1 + n) / (10 + n))."""
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


class EMA:
    """Keeps `shadow = d_n * shadow + (1 - d_n) * param` for every float tensor of the state dict.

    `num_updates` counts the updates made; a trainer that resumes at step s sets it to s (one update
    per step), so a resumed run averages exactly as an uninterrupted one.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), found {decay}")
        self.decay = decay
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = warmup_decay(self.decay, self.num_updates)
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - d)
            else:
                self.shadow[k].copy_(v)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        for k in self.shadow:
            self.shadow[k].copy_(state[k])
        self.num_updates = num_updates
