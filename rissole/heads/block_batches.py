"""Training batches for the block denoiser, read from the memmapped database and a neighbour table.

For B training rows: their b blocks (the x0 of B*b block samples), the same-position blocks of
their first k neighbours, each block's position and the previous block in raster order (+P).
Blocks of one image are folded into the batch dimension. Nothing here searches: neighbours
come from the table made by `rissole db neighbours`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from einops import rearrange

from rissole.errors import DataError
from rissole.heads.block_sampling import gather_neighbours
from rissole.retrieval.blocks import split_blocks
from rissole.retrieval.database import BlockDatabase
from rissole.retrieval.neighbours import NeighbourTable


@dataclass
class BlockBatch:
    x0: torch.Tensor  # (B*b, c, s, s), scaled
    neighbours: torch.Tensor  # (B*b, k, c, s, s), scaled
    positions: torch.Tensor  # (B*b,) block index
    previous: torch.Tensor  # (B*b, c, s, s) block i-1 of the same image (zeros for block 0)
    images: int  # B


def latent_std(db: BlockDatabase, chunk: int = 8192) -> float:
    """Standard deviation of every latent value in the database (float64 accumulation, chunked)."""
    total = sq = 0.0
    count = 0
    for s in range(0, db.rows, chunk):
        x = np.asarray(db.array[:, s : s + chunk], dtype=np.float64)
        total += x.sum()
        sq += (x**2).sum()
        count += x.size
    mean = total / count
    return float(np.sqrt(sq / count - mean**2))


class BlockBatcher:
    """Builds BlockBatch objects for rows of the training table."""

    def __init__(self, db: BlockDatabase, table: NeighbourTable, k: int, scale: float,
                 latents: np.ndarray | None = None) -> None:
        if k > table.k:
            raise DataError(f"the model wants k = {k} neighbours, the table {table.meta.get('name')} of {db.path} has "
                            f"{table.k}. Re-run `rissole db neighbours {db.path} -k {k}`.")
        self.own_rows = table.meta.get("queries") == "database"
        if not self.own_rows and latents is None:
            raise DataError(f"{db.path}: the training table was made for {table.meta.get('queries')}; "
                            "give those latents as data.latents in the config.")
        if latents is not None and len(latents) != table.ids.shape[0]:
            raise DataError(f"training latents have {len(latents)} rows, the table {table.ids.shape[0]}.")
        self.db, self.table, self.k, self.scale, self.latents = db, table, k, scale, latents

    def __len__(self) -> int:
        return int(self.table.ids.shape[0])

    def batch(self, ids: np.ndarray) -> BlockBatch:
        ids = np.asarray(ids)
        if self.own_rows:
            blocks = self.db.blocks(ids)  # (B, b, c, s, s)
        else:
            blocks = split_blocks(np.asarray(self.latents[ids], dtype=np.float32), self.db.grid)
        nb = gather_neighbours(self.db, self.table.ids[ids], self.k)  # (B, b, k, c, s, s)
        prev = np.zeros_like(blocks)
        prev[:, 1:] = blocks[:, :-1]
        B, b = blocks.shape[:2]
        to = lambda a: torch.from_numpy(np.ascontiguousarray(a) * np.float32(self.scale))  # noqa: E731
        return BlockBatch(
            x0=to(rearrange(blocks, "n b c h w -> (n b) c h w")),
            neighbours=to(rearrange(nb, "n b k c h w -> (n b) k c h w")),
            positions=torch.arange(b).repeat(B),
            previous=to(rearrange(prev, "n b c h w -> (n b) c h w")),
            images=B,
        )


def check_pairing(db: BlockDatabase, table: NeighbourTable, grid: int, key: str, vq_hash: str | None,
                  source: str | Path) -> None:
    """Refuse a database/table that does not fit the model: grid, key mode, VQ-GAN."""
    if db.grid != grid:
        raise DataError(f"{db.path}: database grid {db.grid}, but {source} expects grid {grid}. "
                        f"Build a database with `rissole db build ... --grid {grid}`.")
    if table.meta.get("key_mode") != key:
        raise DataError(f"{db.path}: neighbour table made with {table.meta.get('key_mode')} keys, {source} expects "
                        f"{key}. Run `rissole db neighbours {db.path} --keys {key}`.")
    if vq_hash is not None:
        db.check_vqgan(vq_hash, str(source))
