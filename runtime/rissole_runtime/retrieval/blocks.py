"""Cutting a latent into g x g blocks and stitching it back (numpy arrays and torch tensors alike).

Block i of a grid g is the tile at row i // g, column i % g (raster order), so block 0 is the
top-left tile. Every head, the database and the runtime use these two functions and no other
ordering.
"""

from __future__ import annotations

from typing import Any, TypeVar

Array = TypeVar("Array")


def _permute(x: Any, axes: tuple[int, ...]) -> Any:
    """Axes permuted, for a numpy array (transpose) or a torch tensor (permute)."""
    return x.permute(*axes) if hasattr(x, "permute") else x.transpose(axes)


def check_grid(height: int, width: int, grid: int) -> None:
    if grid < 1 or height % grid or width % grid:
        raise ValueError(f"a {height} x {width} latent cannot be cut into a {grid} x {grid} grid of equal blocks")


def split_blocks(z: Array, grid: int) -> Array:
    """(n, c, h, w) -> (n, b, c, h/g, w/g) with b = g*g."""
    check_grid(z.shape[-2], z.shape[-1], grid)
    n, c, h, w = z.shape
    tiles = _permute(z.reshape(n, c, grid, h // grid, grid, w // grid), (0, 2, 4, 1, 3, 5))
    return tiles.reshape(n, grid * grid, c, h // grid, w // grid)


def merge_blocks(blocks: Array, grid: int) -> Array:
    """(n, b, c, h/g, w/g) -> (n, c, h, w); the inverse of split_blocks."""
    if blocks.shape[1] != grid * grid:
        raise ValueError(f"expected {grid * grid} blocks for grid {grid}, found {blocks.shape[1]}")
    n, _, c, h, w = blocks.shape
    tiles = _permute(blocks.reshape(n, grid, grid, c, h, w), (0, 3, 1, 4, 2, 5))
    return tiles.reshape(n, c, grid * h, grid * w)
