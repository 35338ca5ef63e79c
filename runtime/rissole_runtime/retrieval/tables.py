"""Reading saved neighbour tables (numpy only; building them is rissole.retrieval.neighbours).

A table lives in <db>/neighbours/ as <name>.ids.npy int32 (N, k), <name>.scores.npy float32 (N, k) and
<name>.json (k, backend, key mode, query source, the database's sha256); `train` (the training rows'
neighbours, p_D comes from it) and `database` (every row's, what sampling reads) are the two names.
Opening maps the arrays read-only and refuses a table of another database or cut short."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rissole_runtime.errors import DataError
from rissole_runtime.retrieval.database import BlockDatabase
from rissole_runtime.validate import INT, LIST, STR, Field, check_schema, read_json

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
    meta = read_json(pjs, "Re-run `rissole db neighbours`.", "neighbour table")
    check_schema(meta, {"shape": Field(LIST, length=2, items=INT, min=0), "db_sha256": Field(STR)}, pjs,
                 fix="Re-run `rissole db neighbours`.")
    if meta.get("db_sha256") != db.manifest["sha256"]:
        raise DataError(f"{pjs}: made for another database ({str(meta.get('db_sha256'))[:12]}). Re-run `rissole db neighbours`.")
    try:
        ids, scores = np.load(pid, mmap_mode="r"), np.load(psc, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{pid.parent}: table {name!r} is truncated or corrupt ({exc}). Re-run `rissole db neighbours`.") from exc
    if ids.dtype.kind not in "iu" or scores.dtype.kind != "f":
        raise DataError(f"{pid}: ids {ids.dtype}, scores {scores.dtype}; expected integer ids and float scores "
                        "(float ids would be rounded silently). Re-run `rissole db neighbours`.")
    if list(ids.shape) != meta["shape"] or ids.shape != scores.shape:
        raise DataError(f"{pid}: shape {list(ids.shape)}, its JSON says {meta['shape']}. Re-run `rissole db neighbours`.")
    lo, hi = _id_range(pid, ids)
    if ids.size and (hi >= db.rows or lo < 0):
        raise DataError(f"{pid}: ids outside [0, {db.rows}). Re-run `rissole db neighbours`.")
    return NeighbourTable(ids, scores, meta)


def _id_range(path: Path, ids: np.memmap, chunk: int = 1 << 20) -> tuple[int, int]:
    """(min, max) of a mapped id table, read with plain reads in chunks rather than through the map: the
    scanned pages stay in the page cache, not in the process (the edge runtime's peak RSS does not grow
    with the rows of the table)."""
    lo, hi = 0, -1
    with open(path, "rb") as f:
        f.seek(int(ids.offset))
        left, first = ids.size, True
        while left:
            part = np.fromfile(f, dtype=ids.dtype, count=min(chunk, left))
            if not part.size:
                break
            lo, hi = (int(part.min()), int(part.max())) if first else (min(lo, int(part.min())), max(hi, int(part.max())))
            first, left = False, left - part.size
    return lo, hi


def list_tables(db: BlockDatabase) -> list[str]:
    return sorted(p.name[: -len(".json")] for p in (db.path / TABLE_DIR).glob("*.json"))
