"""Training batches for the block denoiser, read from the memmapped database and a neighbour table.

For B training rows: their b blocks (the x0 of B*b block samples), the same-position blocks of
their first k neighbours, each block's position and the previous block in raster order (+P).
Blocks of one image are folded into the batch dimension. Nothing here searches: neighbours
come from the table made by `rissole db neighbours`. A model without retrieval (-RAG, the LDM
baseline) needs no table and may use a database cut into another grid: its rows are re-cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from rissole_runtime.errors import DataError
from rissole.retrieval.database import gather_neighbours
from rissole.models.block_unet import BlockDenoiserConfig
from rissole_runtime.retrieval.blocks import merge_blocks, split_blocks
from rissole.retrieval.database import BlockDatabase
from rissole.retrieval.neighbours import NeighbourTable
from rissole.training import chunked_std


@dataclass
class BlockBatch:
    x0: torch.Tensor  # (B*b, c, s, s), scaled
    neighbours: torch.Tensor | None  # (B*b, k, c, s, s), scaled; None for a model without retrieval
    positions: torch.Tensor  # (B*b,) block index
    previous: torch.Tensor  # (B*b, c, s, s) block i-1 of the same image (zeros for block 0)
    images: int  # B


def latent_std(db: BlockDatabase, chunk: int = 8192) -> float:
    """Standard deviation of every latent value in the database."""
    return chunked_std(db.array[:, s : s + chunk] for s in range(0, db.rows, chunk))


class BlockBatcher:
    """Builds BlockBatch objects for rows of the training table (or of the database, without retrieval)."""

    def __init__(self, db: BlockDatabase, table: NeighbourTable | None, grid: int, k: int, scale: float,
                 latents: np.ndarray | None = None) -> None:
        if table is not None and k > table.k:
            raise DataError(f"the model wants k = {k} neighbours, the table {table.meta.get('name')} of {db.path} has "
                            f"{table.k}. Re-run `rissole db neighbours {db.path} -k {k}`.")
        self.own_rows = table is None or table.meta.get("queries") == "database"
        if not self.own_rows and latents is None:
            raise DataError(f"{db.path}: the training table was made for {table.meta.get('queries')}; "
                            "give those latents as data.latents in the config.")
        rows = db.rows if table is None else table.ids.shape[0]
        if latents is not None and len(latents) != rows:
            raise DataError(f"training latents have {len(latents)} rows, the table {rows}.")
        self.db, self.table, self.grid, self.k, self.scale, self.latents = db, table, grid, k, scale, latents

    def __len__(self) -> int:
        return self.db.rows if self.table is None else int(self.table.ids.shape[0])

    def own_blocks(self, ids: np.ndarray) -> np.ndarray:
        """(B, b, c, s, s) blocks of the training rows at the model's grid."""
        if not self.own_rows:
            return split_blocks(np.asarray(self.latents[ids], dtype=np.float32), self.grid)
        blocks = self.db.blocks(ids)
        return blocks if self.db.grid == self.grid else split_blocks(merge_blocks(blocks, self.db.grid), self.grid)

    def batch(self, ids: np.ndarray) -> BlockBatch:
        ids = np.asarray(ids)
        blocks = self.own_blocks(ids)
        prev = np.zeros_like(blocks)
        prev[:, 1:] = blocks[:, :-1]
        B, b = blocks.shape[:2]
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a) * np.float32(self.scale))  # noqa: E731
        nb = None
        if self.table is not None:
            nb = to(rearrange(gather_neighbours(self.db, self.table.ids[ids], self.k), "n b k c h w -> (n b) k c h w"))
        return BlockBatch(
            x0=to(rearrange(blocks, "n b c h w -> (n b) c h w")),
            neighbours=nb,
            positions=torch.arange(b).repeat(B),
            previous=to(rearrange(prev, "n b c h w -> (n b) c h w")),
            images=B,
        )


def check_pairing(db: BlockDatabase, table: NeighbourTable | None, model: BlockDenoiserConfig, vq_hash: str | None,
                  source: str | Path) -> None:
    """Refuse a database/table that does not fit the model: latent shape, grid, key mode, self-matches, VQ-GAN.

    table is None for a model without retrieval; then only the latent shape and VQ-GAN must agree.
    """
    expect = (model.latent_channels, model.latent_size, model.latent_size)
    if tuple(db.latent_shape) != expect:
        raise DataError(f"{db.path}: latents are {list(db.latent_shape)} (c, h, w), {source} expects {list(expect)} "
                        "(model.latent_channels, model.latent_size). Use a database encoded by the model's VQ-GAN.")
    if table is not None:
        if db.grid != model.grid:
            raise DataError(f"{db.path}: database grid {db.grid}, but {source} expects grid {model.grid}. "
                            f"Build a database with `rissole db build ... --grid {model.grid}`.")
        if table.meta.get("key_mode") != model.key:
            raise DataError(f"{db.path}: neighbour table made with {table.meta.get('key_mode')} keys, {source} expects "
                            f"{model.key}. Run `rissole db neighbours {db.path} --keys {model.key}`.")
        if table.meta.get("name") == "train" and table.meta.get("queries") == "database" and not table.meta.get("exclude_self"):
            raise DataError(f"{db.path}: the training table lists each row among its own neighbours, so the model "
                            "would learn to copy its input. Re-run `rissole db neighbours` (it excludes the row itself).")
    if vq_hash is not None:
        db.check_vqgan(vq_hash, str(source))
