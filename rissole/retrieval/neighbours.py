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

import os
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
from tqdm import tqdm

from rissole_runtime.fileio import atomic_path, write_json_atomic
from rissole_runtime.retrieval.database import BlockDatabase
from rissole_runtime.retrieval.tables import (  # noqa: F401 - re-exported: the reader lives in the runtime
    TABLE_DIR, NeighbourTable, list_tables, open_table, table_paths)
from rissole_runtime.retrieval.search import drop_self  # noqa: F401 - re-exported (shared with the runtime)
from rissole.retrieval.keys import KeySet, latent_keys
from rissole.retrieval.searchers import make_searcher
from rissole.retrieval.searchers.base import Searcher


class Sharding(Protocol):
    """How query rows split over processes (rissole.distributed.TableSharding under torchrun): this process
    searches `rows(n)`, `gather` joins every process's part into the whole table (on the main process;
    None elsewhere), and only the main process writes."""

    main: bool

    def rows(self, n: int, align: int) -> slice: ...

    def gather(self, ids: np.ndarray, scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray] | None: ...


def compute_table(
    searcher: Searcher,
    query_rows: Callable[[int, int], np.ndarray],
    n_queries: int,
    k: int,
    exclude_self: bool,
    batch: int = 2048,
    progress: bool = True,
    desc: str = "neighbours",
    sharding: Sharding | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """ids int32 (n, k) and scores float32 (n, k) for query rows [0, n), searched batch by batch (with
    `sharding`, this process's rows only, joined on the main process; None on the others)."""
    part = sharding.rows(n_queries, batch) if sharding else slice(0, n_queries)
    ids_out = np.empty((part.stop - part.start, k), dtype=np.int32)
    scores_out = np.empty((part.stop - part.start, k), dtype=np.float32)
    for s in tqdm(range(part.start, part.stop, batch), desc=desc, unit="batch", disable=not progress):
        e = min(s + batch, part.stop)
        q = query_rows(s, e)
        ids, scores = searcher.search(q, k + 1 if exclude_self else k)
        if exclude_self:
            ids, scores = drop_self(ids, scores, np.arange(s, e), k)
        ids_out[s - part.start : e - part.start], scores_out[s - part.start : e - part.start] = ids, scores
    return sharding.gather(ids_out, scores_out, n_queries) if sharding else (ids_out, scores_out)


def save_table(db: BlockDatabase, name: str, ids: np.ndarray, scores: np.ndarray, meta: dict[str, Any]) -> None:
    """Write ids, scores, then the JSON last: a table without its JSON is never opened."""
    pid, psc, pjs = table_paths(db, name)
    for path, arr in ((pid, ids.astype(np.int32)), (psc, scores.astype(np.float32))):
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)
    write_json_atomic(pjs, {**meta, "name": name, "shape": list(ids.shape), "db_sha256": db.manifest["sha256"]})


def remove_table(db: BlockDatabase, name: str) -> None:
    for p in table_paths(db, name):
        if os.path.exists(p):
            os.unlink(p)


def make_tables(
    db: BlockDatabase,
    keys: KeySet,
    backend: str,
    params: dict[str, Any],
    k: int,
    queries_path: str | os.PathLike | None = None,
    batch: int = 2048,
    progress: bool = True,
    sharding: Sharding | None = None,
) -> list[str]:
    """Build and save an index, then the `train` and `database` tables; returns report lines.

    With the database as its own training set one search of k+1 serves both tables: the
    `database` table keeps the first k results, the `train` table drops the row itself. With
    `sharding` (torchrun) every process builds the index and searches its share of the query rows;
    the main process alone saves the index and the joined tables.
    """
    import time

    main = sharding is None or sharding.main
    progress = progress and main
    t0 = time.perf_counter()
    searcher = make_searcher(backend, **params).build(keys)
    build_s = time.perf_counter() - t0
    index_dir = db.path / "indexes" / f"{backend}-{keys.mode}{'-rerank' if searcher.rerank else ''}"
    if main:
        searcher.save(index_dir)
    meta = {"backend": backend, "params": searcher.params, "key_mode": keys.mode, "k": k, "index": str(index_dir.name)}
    lines = [f"index {index_dir} built in {build_s:.1f} s" +
             (f" ({searcher.index_bytes(index_dir) / 2**20:.1f} MiB)" if main else "")]
    t0 = time.perf_counter()
    if queries_path is None:
        table = compute_table(searcher, keys.rows, keys.n, k + 1, False, batch, progress, "neighbours", sharding)
        if table is None:
            return lines
        raw_ids, raw_scores = table
        ids, scores = drop_self(raw_ids, raw_scores, np.arange(keys.n), k)
        save_table(db, "train", ids, scores, {**meta, "exclude_self": True, "queries": "database"})
        save_table(db, "database", raw_ids[:, :k], raw_scores[:, :k], {**meta, "exclude_self": False, "queries": "database"})
    else:
        from rissole.latents import open_latents

        lat = open_latents(queries_path)
        db.check_vqgan(lat.checkpoint_hash, f"the query latents {queries_path}")
        rows = lambda s, e: latent_keys(lat.array[s:e], db.grid, keys.mode)  # noqa: E731
        train = compute_table(searcher, rows, len(lat.array), k, False, batch, progress, "train neighbours", sharding)
        table = compute_table(searcher, keys.rows, keys.n, k, False, batch, progress, "database neighbours", sharding)
        if train is None or table is None:
            return lines
        save_table(db, "train", *train, {**meta, "exclude_self": False, "queries": str(Path(queries_path).resolve())})
        save_table(db, "database", *table, {**meta, "exclude_self": False, "queries": "database"})
    lines.append(f"tables train and database (k = {k}) written to {db.path / TABLE_DIR} in {time.perf_counter() - t0:.1f} s")
    return lines
