"""Exact nearest-neighbour search in numpy, and the kNN-Diffusion neighbour ids: one definition for the
desktop (rissole.retrieval.searchers.exact, rissole.heads.neighbour_pipeline) and the edge runtime.

    ids, scores = exact_search(queries, chunks, k)   # chunks: (start, (m, d) keys, (m,) scale or None)

Ranking is by dot product, times each key's scale where given (the desktop's inverse key norms; the
runtime's keys are unit vectors), ties broken by the smaller id, so every path returns the same rows
for the same query.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def select_top_k(ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k of each row by (score descending, id ascending); -1 ids never win over real ones."""
    scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
    if ids.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        ids, scores = np.take_along_axis(ids, part, 1), np.take_along_axis(scores, part, 1)
    order = np.lexsort((ids, -scores), axis=-1)
    ids, scores = np.take_along_axis(ids, order, 1), np.take_along_axis(scores, order, 1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids.astype(np.int64), scores


def exact_search(queries: np.ndarray, chunks: Iterable[tuple[int, np.ndarray, np.ndarray | None]],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """(nq, k) int64 ids and float32 scores of the k best keys by (scaled) dot product, merged chunk by
    chunk (only one chunk of keys is in memory at a time)."""
    nq = queries.shape[0]
    best_ids = np.full((nq, 0), -1, dtype=np.int64)
    best_scores = np.empty((nq, 0), dtype=np.float32)
    for start, keys, scale in chunks:
        scores = queries @ np.asarray(keys, dtype=np.float32).T
        if scale is not None:
            scores = scores * scale
        ids = np.broadcast_to(np.arange(start, start + len(keys), dtype=np.int64), scores.shape)
        if len(keys) > k:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            ids, scores = np.take_along_axis(ids, part, 1), np.take_along_axis(scores, part, 1)
        best_ids, best_scores = select_top_k(np.concatenate([best_ids, ids], 1),
                                             np.concatenate([best_scores, scores], 1), k)
    return select_top_k(best_ids, best_scores, k)


def drop_self(ids: np.ndarray, scores: np.ndarray, self_ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From k+1 results per row, remove the query's own id (or the worst result if it is absent)."""
    drop = ids == self_ids[:, None]
    first = np.argmax(drop, axis=1)
    found = drop.any(axis=1)
    col = np.where(found, first, ids.shape[1] - 1)
    keep = np.ones_like(ids, dtype=bool)
    keep[np.arange(len(ids)), col] = False
    return ids[keep].reshape(len(ids), -1)[:, :k], scores[keep].reshape(len(ids), -1)[:, :k]


def own_neighbour_ids(rows: np.ndarray, table_ids: np.ndarray, k: int) -> np.ndarray:
    """kNN-Diffusion's condition for database rows (Sheynin et al., Sec. 3): (n, 1 + k) ids, the row itself,
    then its k nearest other rows, from the `database` table (which lists the row among its own results);
    table_ids are the rows' first k + 1 columns."""
    rows = np.asarray(rows, dtype=np.int64)
    if k == 0:
        return rows[:, None]
    table_ids = np.asarray(table_ids, dtype=np.int64)
    ids, _ = drop_self(table_ids, np.zeros(table_ids.shape, np.float32), rows, k)  # the scores are not needed
    return np.concatenate([rows[:, None], ids], axis=1)
