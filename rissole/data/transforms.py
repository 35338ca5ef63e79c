"""Conversions between stored uint8 images and the networks' [-1, 1] range."""

from __future__ import annotations

import numpy as np
import torch


def to_model_range(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [-1, 1]."""
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    return x.float().div(127.5).sub(1.0)


def from_model_range(x: torch.Tensor) -> np.ndarray:
    """float in [-1, 1] (N, C, H, W) -> uint8, rounded and clipped."""
    return ((x.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()


def pad_to(images: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad (N, C, H, W) images symmetrically to size x size (28 -> 32 for Fashion-MNIST)."""
    n, c, h, w = images.shape
    if h > size or w > size:
        raise ValueError(f"cannot pad {h}x{w} images to {size}x{size}")
    top, left = (size - h) // 2, (size - w) // 2
    out = np.zeros((n, c, size, size), dtype=images.dtype)
    out[:, :, top : top + h, left : left + w] = images
    return out
