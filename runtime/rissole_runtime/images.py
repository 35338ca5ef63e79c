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


def labelled_rows(rows: np.ndarray, labels: list[str], scale: int = 2, label_width: int = 220) -> np.ndarray:
    """uint8 (r, m, C, H, W) image rows -> one RGB (H', W', 3) mosaic, each row's text (e.g. its prompt) on
    its left, wrapped to the label column; images upscaled by `scale` (nearest)."""
    import textwrap

    from PIL import ImageDraw, ImageFont

    r, m, c, h, w = rows.shape
    grid = make_grid(rows.reshape(r * m, c, h, w), nrow=m)
    if c == 1:
        grid = np.repeat(grid, 3, axis=-1)
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)
    out = Image.new("RGB", (img.width + label_width, img.height), "white")
    out.paste(img, (label_width, 0))
    draw, font = ImageDraw.Draw(out), ImageFont.load_default()
    row_h = (h + 2) * scale
    for i, text in enumerate(labels[:r]):
        lines = textwrap.wrap(text, width=max(8, label_width // 7))[: max(1, row_h // 12)]
        draw.multiline_text((4, 2 * scale + i * row_h), "\n".join(lines), fill="black", font=font, spacing=1)
    return np.asarray(out)
