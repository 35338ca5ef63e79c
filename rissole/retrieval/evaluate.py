"""Recall of an index against exact search: the one definition the CLI, tests and benchmarks use."""

from __future__ import annotations

import numpy as np

from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher
from rissole.retrieval.searchers.exact import ExactSearcher


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int,
                approx_true_scores: np.ndarray | None = None, exact_scores: np.ndarray | None = None,
                tol: float = 1e-5) -> float:
    """Mean fraction of each query's true k nearest rows that the approximate top-k contains.

    With scores given, ties count: a returned row whose true score is within `tol` of the k-th exact
    score is as near as the row exact search happened to list (data with duplicate images has many
    rows at the same score, and a brute-force index would otherwise score below 1). `approx_true_scores`
    are the exact dot products of the approximate ids, not the index's own (quantised) scores.
    """
    a, e = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    if (approx_true_scores is None) != (exact_scores is None):
        raise ValueError("recall_at_k: give both approx_true_scores and exact_scores, or neither")
    hits = 0
    for i, (ra, re) in enumerate(zip(a, e)):
        valid = ra >= 0
        found = np.isin(ra, re) & valid
        if exact_scores is not None:
            kth = np.asarray(exact_scores)[i, :k].min()
            found |= valid & (np.asarray(approx_true_scores)[i, :k] >= kth - tol)
        hits += min(int(found.sum()), len(re))
    return hits / float(e.size)


def true_scores(keys: KeySet, queries: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Exact dot products of each query with the rows `ids` (n, k) returned for it (-inf for padding -1)."""
    ids = np.asarray(ids)
    rows = keys.gather(np.where(ids >= 0, ids, 0).ravel()).reshape(*ids.shape, -1)
    out = np.einsum("nkd,nd->nk", rows.astype(np.float64), np.asarray(queries, dtype=np.float64))
    return np.where(ids >= 0, out, -np.inf)


def sample_queries(keys: KeySet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n distinct random rows of the database (ids, normalised keys) to use as queries."""
    ids = np.sort(np.random.default_rng(seed).choice(keys.n, size=min(n, keys.n), replace=False))
    return ids, keys.gather(ids)


def spot_check(searcher: Searcher, n: int = 200, k: int = 10, seed: int = 0) -> float:
    """Tie-aware recall@k (`recall_at_k`) of `searcher` on n random database rows used as queries."""
    assert searcher.keys is not None
    _, q = sample_queries(searcher.keys, n, seed)
    exact_ids, exact_scores = ExactSearcher().build(searcher.keys).search(q, k)
    ids = searcher.search(q, k)[0]
    return recall_at_k(ids, exact_ids, k, true_scores(searcher.keys, q, ids), exact_scores)
