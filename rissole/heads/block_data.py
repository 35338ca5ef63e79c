"""Training batches for the RISSOLE block denoiser, read from memory maps; nothing searches here.

For B training rows a batch holds, with the b blocks of every image folded into the batch:

    x0          (B*b, c, s, s)     the rows' own blocks (from the database when the neighbour table's
                                   queries are the database rows, else from the training latents file)
    neighbours  (B*b, k, c, s, s)  block i of each of the row's first k table neighbours, for block i
    positions   (B*b,)             block index i (raster order) for +Pos
    previous    (B*b, c, s, s)     block i-1 of the same image, zeros for block 0, for +P

x0 and neighbours are multiplied by one scale factor, 1 / std of the training latents (as
latent-diffusion's scale_factor), so the diffusion runs on unit-variance data. Every pairing
that would train on the wrong data is refused here with the file, the expectation, what was
found and the fix: table key vs model key, database grid and latent shape vs model, VQ-GAN
of database vs latents vs checkpoint, k vs the table's k.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from einops import rearrange

from rissole.errors import DataError
from rissole.models.block_unet import BlockDenoiserConfig
from rissole.retrieval.blocks import merge_blocks, split_blocks
from rissole.retrieval.database import BlockDatabase, open_database
from rissole.retrieval.neighbours import NeighbourTable, open_table, table_paths


@dataclass
class BlockBatch:
    """One training batch, blocks folded into the batch dimension (see the module docstring)."""

    x0: torch.Tensor
    neighbours: torch.Tensor | None  # None when the model does not use retrieval
    positions: torch.Tensor
    previous: torch.Tensor
    images: int  # B

    @property
    def num_blocks(self) -> int:
        return self.x0.shape[0] // self.images

    def to(self, device: torch.device | str) -> "BlockBatch":
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return BlockBatch(move(self.x0), move(self.neighbours), move(self.positions), move(self.previous), self.images)


# ---------------------------------------------------------------------- where x0 comes from
class DatabaseLatents:
    """Training rows = the database rows; blocks re-cut at the model's grid if the db has another."""

    def __init__(self, db: BlockDatabase) -> None:
        self.db = db
        self.path = db.path
        self.rows = db.rows
        self.checkpoint_hash = db.checkpoint_hash
        self.latent_shape = db.latent_shape

    def blocks(self, ids: np.ndarray, grid: int) -> np.ndarray:
        x = self.db.blocks(ids)
        return x if grid == self.db.grid else split_blocks(merge_blocks(x, self.db.grid), grid)

    def std(self) -> float:
        return value_std(self.db.array, axis=1)


class FileLatents:
    """Training rows = a `rissole encode` latents file (a training set disjoint from the database)."""

    def __init__(self, path: str | os.PathLike) -> None:
        from rissole.latents import open_latents

        self.latents = open_latents(path)
        self.path = Path(path)
        self.rows = int(self.latents.array.shape[0])
        self.checkpoint_hash = self.latents.checkpoint_hash
        self.latent_shape = tuple(int(v) for v in self.latents.array.shape[1:])

    def blocks(self, ids: np.ndarray, grid: int) -> np.ndarray:
        return np.ascontiguousarray(split_blocks(np.asarray(self.latents.array[ids], dtype=np.float32), grid))

    def std(self) -> float:
        return value_std(self.latents.array, axis=0)


LatentSource = DatabaseLatents | FileLatents


def value_std(array: np.ndarray, axis: int, chunk: int = 8192) -> float:
    """Standard deviation of every value of a memmap, read in chunks along `axis`, float64 sums."""
    total = sq = 0.0
    count = 0
    for start in range(0, array.shape[axis], chunk):
        where = [slice(None)] * array.ndim
        where[axis] = slice(start, start + chunk)
        x = np.asarray(array[tuple(where)], dtype=np.float64)
        total += float(x.sum())
        sq += float(np.square(x).sum())
        count += x.size
    mean = total / count
    return float(np.sqrt(max(sq / count - mean * mean, 0.0)))


# ---------------------------------------------------------------------- pairing checks
def check_database(model: BlockDenoiserConfig, db: BlockDatabase, checkpoint_hash: str | None = None,
                   what: str = "this run") -> None:
    """Refuse a database whose latents, grid (when retrieving) or VQ-GAN do not match the model."""
    expect = (model.latent_channels, model.latent_size, model.latent_size)
    if tuple(db.latent_shape) != expect:
        raise DataError(
            f"{db.path}: latents are {list(db.latent_shape)} (c, h, w), the model expects {list(expect)} "
            "(model.latent_channels, model.latent_size). Fix: set those to the database's, or use a database "
            "encoded by the VQ-GAN the model was made for."
        )
    if model.retrieval and db.grid != model.grid:
        raise DataError(
            f"{db.path}: the database is cut into a {db.grid}x{db.grid} grid, the model into {model.grid}x{model.grid}; "
            "neighbour blocks must come from the same positions. Fix: build a database with "
            f"`rissole db build --grid {model.grid}` (and its tables), or set model.grid={db.grid}."
        )
    if checkpoint_hash is not None:
        db.check_vqgan(checkpoint_hash, what)


def check_table(model: BlockDenoiserConfig, table: NeighbourTable, db: BlockDatabase, name: str) -> None:
    """Refuse a neighbour table made with another key, with too few neighbours, or that keeps the query."""
    where = table_paths(db, name)[2]
    key = table.meta.get("key_mode")
    if key != model.key:
        raise DataError(
            f"{where}: neighbours were searched with key {key!r}, the model expects key {model.key!r}. "
            f"Fix: make the table with `rissole db neighbours {db.path} --keys {model.key}`, or set model.key={key}."
        )
    if model.k > table.k:
        raise DataError(
            f"{where}: the table holds k={table.k} neighbours per row, the model wants k={model.k}. "
            f"Fix: set model.k <= {table.k}, or re-run `rissole db neighbours` with -k {model.k}."
        )
    if table.meta.get("queries") == "database" and not table.meta.get("exclude_self"):
        raise DataError(
            f"{where}: each row's neighbours include the row itself (exclude_self false), so the model would "
            "learn to copy its input. Fix: train with the 'train' table (data.table: train)."
        )


# ---------------------------------------------------------------------- batches
class BlockBatcher:
    """Builds BlockBatch objects for training row ids (0 .. len-1)."""

    def __init__(self, model: BlockDenoiserConfig, source: LatentSource, scale: float,
                 db: BlockDatabase | None = None, table: NeighbourTable | None = None) -> None:
        if model.retrieval and (db is None or table is None):
            raise DataError("a retrieval model needs a database and its neighbour table (data.db, data.table).")
        if table is not None and len(table.ids) != source.rows:
            raise DataError(
                f"the neighbour table has {len(table.ids)} query rows, the training latents {source.path} have "
                f"{source.rows}. Fix: make the table for these latents (`rissole db neighbours --queries ...`)."
            )
        self.model, self.source, self.scale = model, source, float(scale)
        self.db, self.table = db, table

    def __len__(self) -> int:
        return self.source.rows

    def neighbour_ids(self, rows: np.ndarray) -> np.ndarray:
        """int64 (B, k): the first k table neighbours of each training row."""
        return np.asarray(self.table.ids[np.asarray(rows)], dtype=np.int64)[:, : self.model.k]

    def __call__(self, rows: np.ndarray) -> BlockBatch:
        cfg = self.model
        rows = np.asarray(rows, dtype=np.int64)
        own = self.source.blocks(rows, cfg.grid) * np.float32(self.scale)  # (B, b, c, s, s)
        previous = np.zeros_like(own)
        previous[:, 1:] = own[:, :-1]
        neighbours = None
        if cfg.retrieval:
            nb = self.db.blocks(self.neighbour_ids(rows)) * np.float32(self.scale)  # (B, k, b, c, s, s)
            neighbours = torch.from_numpy(np.ascontiguousarray(rearrange(nb, "n k b c h w -> (n b) k c h w")))
        fold = lambda a: torch.from_numpy(np.ascontiguousarray(rearrange(a, "n b c h w -> (n b) c h w")))  # noqa: E731
        positions = torch.arange(cfg.num_blocks, dtype=torch.int64).repeat(len(rows))
        return BlockBatch(fold(own), neighbours, positions, fold(previous), len(rows))


def open_batcher(model: BlockDenoiserConfig, data: dict[str, Any], scale: float | None = None,
                 checkpoint_hash: str | None = None) -> tuple[BlockBatcher, dict[str, Any]]:
    """Open the run's data (data: db, table, latents) with every check; returns the batcher and the
    facts the run must record (scale factor, resolved paths, database and VQ-GAN hashes).

    scale None computes 1/std of the training latents; checkpoint_hash (of the VQ-GAN the run is tied
    to, e.g. by a checkpoint being resumed) must then match the database and latents.
    """
    db = table = None
    if data.get("db"):
        db = open_database(data["db"])
        check_database(model, db, checkpoint_hash)
    elif model.retrieval:
        raise DataError("data.db is not set: a retrieval model needs a block database (rissole db build).")
    if model.retrieval:
        table = open_table(db, data["table"])
        check_table(model, table, db, data["table"])
    separate = table is not None and table.meta.get("queries") != "database"
    if separate or (db is None):
        if not data.get("latents"):
            why = (f"the table {data['table']!r} was made for the queries {table.meta.get('queries')}"
                   if separate else "there is no database")
            raise DataError(f"data.latents is not set, but {why}. Fix: set data.latents to that latents file.")
        source: LatentSource = FileLatents(data["latents"])
    else:
        source = DatabaseLatents(db)
    expect = (model.latent_channels, model.latent_size, model.latent_size)
    if tuple(source.latent_shape) != expect:
        raise DataError(f"{source.path}: latents are {list(source.latent_shape)}, the model expects {list(expect)}.")
    if db is not None and source.checkpoint_hash != db.checkpoint_hash:
        raise DataError(
            f"{source.path}: latents of VQ-GAN {source.checkpoint_hash[:12]}, but the database {db.path} holds "
            f"latents of VQ-GAN {db.checkpoint_hash[:12]}. Fix: encode both with the same VQ-GAN (rissole encode)."
        )
    if checkpoint_hash is not None and source.checkpoint_hash != checkpoint_hash:
        raise DataError(
            f"{source.path}: latents of VQ-GAN {source.checkpoint_hash[:12]}, this run uses {checkpoint_hash[:12]}. "
            "Fix: use latents encoded by the run's VQ-GAN."
        )
    if scale is None:
        scale = 1.0 / source.std()
    facts = {
        "db": str(db.path.resolve()) if db is not None else None,
        "db_sha256": db.manifest["sha256"] if db is not None else None,
        "latents": str(Path(data["latents"]).resolve()) if data.get("latents") else None,
        "checkpoint_hash": source.checkpoint_hash,
        "scale_factor": float(scale),
    }
    return BlockBatcher(model, source, scale, db, table), facts
