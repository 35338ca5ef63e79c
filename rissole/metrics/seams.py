"""Seam score: are block boundaries visible in generated images?

For a grid of g x g blocks over an H x W image, compare the mean absolute intensity step
between neighbouring pixels ACROSS a block boundary with the same step between neighbouring
pixels INSIDE blocks. Real images have some ratio r_real too (a boundary line is not special
in a photograph, but image centres and borders differ), so the score of samples is
r_samples / r_real: 1.0 means boundaries look as they do in real data; a visible seam gives > 1.
"""

from __future__ import annotations

import numpy as np


def boundary_interior_steps(images: np.ndarray, grid: int) -> tuple[float, float]:
    """(mean |step| across block boundaries, mean |step| inside blocks) of uint8 or float images (N, C, H, W)."""
    x = np.asarray(images, dtype=np.float32)
    if x.ndim == 3:
        x = x[:, None]
    h, w = x.shape[-2:]
    if h % grid or w % grid:
        raise ValueError(f"{h} x {w} images cannot be cut into a {grid} x {grid} grid")
    dx = np.abs(np.diff(x, axis=-1))  # step between column j and j+1, j = 0..W-2
    dy = np.abs(np.diff(x, axis=-2))
    col_cut = np.zeros(w - 1, dtype=bool)
    col_cut[np.arange(1, grid) * (w // grid) - 1] = True
    row_cut = np.zeros(h - 1, dtype=bool)
    row_cut[np.arange(1, grid) * (h // grid) - 1] = True
    across = np.concatenate([dx[..., col_cut].ravel(), dy[..., row_cut, :].ravel()])
    inside = np.concatenate([dx[..., ~col_cut].ravel(), dy[..., ~row_cut, :].ravel()])
    return float(across.mean()), float(inside.mean())


def seam_ratio(images: np.ndarray, grid: int) -> float:
    across, inside = boundary_interior_steps(images, grid)
    return across / max(inside, 1e-12)


def seam_score(samples: np.ndarray, real: np.ndarray, grid: int) -> dict[str, float]:
    """{"samples_ratio": r_samples, "real_ratio": r_real, "score": r_samples / r_real}."""
    rs, rr = seam_ratio(samples, grid), seam_ratio(real, grid)
    return {"samples_ratio": rs, "real_ratio": rr, "score": rs / rr}
