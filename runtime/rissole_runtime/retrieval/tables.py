"""Neighbour tables: the k nearest database rows of every query row, computed once, saved as int32.

Training and the edge runtime read these tables; nothing searches inside a training loop.

    train     queries = the training rows. When the training set is the database itself each
              row's own id is excluded (otherwise the model learns to copy its input); with a
              separate training set (RDM's disjoint database) nothing is excluded.
    database  queries = every database row (pseudo-queries for unconditional sampling); the
              row itself is kept, as in RDM's xi_k(x~, D) for x~ in D.

On disk, in <db>/neighbours/: <name>.ids.npy int32 (N, k), <name>.scores.npy float32 (N, k),
<name>.json (k, backend and parameters, key mode, self-exclusion, query source, database sha256).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rissole_runtime.errors import DataError
from rissole_runtime.retrieval.database import BlockDatabase

TABLE_DIR = "neighbours"


@dataclass
class NeighbourTable:
    ids: np.ndarray  # int32 (N, k), read-only memmap
    scores: np.ndarray  # float32 (N, k)
    meta: dict[str, Any]

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])


def table_paths(db: BlockDatabase, name: str) -> tuple[Path, Path, Path]:
    base = db.path / TABLE_DIR / name
    return base.with_suffix(".ids.npy"), base.with_suffix(".scores.npy"), base.with_suffix(".json")


def open_table(db: BlockDatabase, name: str) -> NeighbourTable:
    """Map a saved table read-only, refusing one made for another database or cut short."""
    pid, psc, pjs = table_paths(db, name)
    if not pjs.is_file():
        raise DataError(f"{pjs}: no neighbour table {name!r} in {db.path}. Make it with `rissole db neighbours {db.path}`.")
    meta = json.loads(pjs.read_text())
    if meta.get("db_sha256") != db.manifest["sha256"]:
        raise DataError(f"{pjs}: made for another database ({str(meta.get('db_sha256'))[:12]}). Re-run `rissole db neighbours`.")
    try:
        ids, scores = np.load(pid, mmap_mode="r"), np.load(psc, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{pid.parent}: table {name!r} is truncated or corrupt ({exc}). Re-run `rissole db neighbours`.") from exc
    if list(ids.shape) != meta["shape"] or ids.shape != scores.shape:
        raise DataError(f"{pid}: shape {list(ids.shape)}, its JSON says {meta['shape']}. Re-run `rissole db neighbours`.")
    if ids.size and (int(ids.max()) >= db.rows or int(ids.min()) < 0):
        raise DataError(f"{pid}: ids outside [0, {db.rows}). Re-run `rissole db neighbours`.")
    return NeighbourTable(ids, scores, meta)


def list_tables(db: BlockDatabase) -> list[str]:
    return sorted(p.name[: -len(".json")] for p in (db.path / TABLE_DIR).glob("*.json"))
