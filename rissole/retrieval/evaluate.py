"""Recall of an index against exact search: the one definition the CLI, tests and benchmarks use."""

from __future__ import annotations

import numpy as np

from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher
from rissole.retrieval.searchers.exact import ExactSearcher


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean fraction of each query's true k nearest rows that the approximate top-k contains."""
    a, e = np.asarray(approx_ids)[:, :k], np.asarray(exact_ids)[:, :k]
    hits = sum(len(np.intersect1d(ra[ra >= 0], re)) for ra, re in zip(a, e))
    return hits / float(e.size)


def sample_queries(keys: KeySet, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n distinct random rows of the database (ids, normalised keys) to use as queries."""
    ids = np.sort(np.random.default_rng(seed).choice(keys.n, size=min(n, keys.n), replace=False))
    return ids, keys.gather(ids)


def spot_check(searcher: Searcher, n: int = 200, k: int = 10, seed: int = 0) -> float:
    """recall@k of `searcher` on n random database rows used as queries."""
    assert searcher.keys is not None
    _, q = sample_queries(searcher.keys, n, seed)
    exact = ExactSearcher().build(searcher.keys)
    return recall_at_k(searcher.search(q, k)[0], exact.search(q, k)[0], k)
