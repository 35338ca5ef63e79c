"""Cutting a latent into g x g blocks and stitching it back (numpy arrays and torch tensors alike).

Block i of a grid g is the tile at row i // g, column i % g (raster order), so block 0 is the
top-left tile. Every head, the database and the runtime use these two functions and no other
ordering.
"""

from __future__ import annotations

from typing import TypeVar

from einops import rearrange

Array = TypeVar("Array")


def check_grid(height: int, width: int, grid: int) -> None:
    if grid < 1 or height % grid or width % grid:
        raise ValueError(f"a {height} x {width} latent cannot be cut into a {grid} x {grid} grid of equal blocks")


def split_blocks(z: Array, grid: int) -> Array:
    """(n, c, h, w) -> (n, b, c, h/g, w/g) with b = g*g."""
    check_grid(z.shape[-2], z.shape[-1], grid)
    return rearrange(z, "n c (g1 h) (g2 w) -> n (g1 g2) c h w", g1=grid, g2=grid)


def merge_blocks(blocks: Array, grid: int) -> Array:
    """(n, b, c, h/g, w/g) -> (n, c, h, w); the inverse of split_blocks."""
    if blocks.shape[1] != grid * grid:
        raise ValueError(f"expected {grid * grid} blocks for grid {grid}, found {blocks.shape[1]}")
    return rearrange(blocks, "n (g1 g2) c h w -> n c (g1 h) (g2 w)", g1=grid, g2=grid)
