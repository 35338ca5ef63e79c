"""The image tower of the joint text-image space: a small CNN from 32 x 32 RGB to a unit vector.

Trained by locked-text tuning (the mirror of LiT, Zhai et al. 2022: there the image tower is locked
and the text tower tuned; here the text tower, all-MiniLM-L6-v2, is locked) with CLIP's symmetric
InfoNCE loss and learnable temperature (Radford et al., 2021, Fig. 3).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

INPUT_SIZE = 32


def _block(c_in: int, c_out: int, stride: int, groups: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(min(groups, c_out), c_out), nn.SiLU()]


class ImageTower(nn.Module):
    """(n, 3, 32, 32) in [-1, 1] -> (n, dim) unit rows; `logit_scale` is CLIP's learnable log(1 / temperature)."""

    def __init__(self, channels: tuple[int, ...] | list[int] = (32, 64, 128, 256), dim: int = 384,
                 in_channels: int = 3, groups: int = 8, init_temperature: float = 0.07) -> None:
        super().__init__()
        layers = _block(in_channels, channels[0], 1, groups)
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += _block(c_in, c_out, 2, groups) + _block(c_out, c_out, 1, groups)
        self.features = nn.Sequential(*layers)
        self.proj = nn.Linear(channels[-1], dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.proj(h), dim=-1)


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                     keys: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP, Fig. 3) over a batch of unit image / text rows.

    Rows whose `keys` are equal (the same Fashion-MNIST class, the same caption) are all positives
    of each other, with the target spread evenly over them, so repeated classes in a batch are not
    pushed apart as false negatives. The scale is clamped at 100, as CLIP does."""
    logits = logit_scale.clamp(max=math.log(100.0)).exp() * image @ text.t()
    same = (keys[:, None] == keys[None, :]).to(logits.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    loss_i = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    loss_t = -(target * F.log_softmax(logits.t(), dim=1)).sum(1).mean()
    return 0.5 * (loss_i + loss_t)


def to_tower_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 or float images (n, 1|3, H, W) in [0, 255] -> float (n, 3, 32, 32) in [-1, 1]."""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x / 127.5 - 1.0
