"""Image grids as PNG, for anything a person wants to look at."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from rissole_runtime.fileio import PNG, atomic_path


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 (N, C, H, W) -> one uint8 (H', W', C) mosaic, `nrow` images per row (default: square-ish)."""
    n, c, h, w = images.shape
    nrow = nrow or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i].transpose(1, 2, 0)
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike, scale: int = 1) -> Path:
    """Save an (H, W, C) uint8 array as PNG (nearest-neighbour upscaled by `scale`), atomically."""
    img = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    path = Path(path)
    with atomic_path(path, suffix=".png", kind=PNG) as tmp:  # refuses to replace anything but a PNG
        img.save(tmp, format="PNG")
    return path


def save_grid(images: np.ndarray, path: str | os.PathLike, nrow: int | None = None, scale: int = 2) -> Path:
    return save_png(make_grid(images, nrow=nrow), path, scale=scale)
