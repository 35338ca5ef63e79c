"""Nearest-neighbour backends behind one interface (see base.py), and loading a saved index."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher, check_meta, read_searcher_meta, rescore, select_top_k
from rissole.retrieval.searchers.exact import ExactSearcher
from rissole.retrieval.searchers.faiss_backend import FaissHNSWSearcher, FaissIVFPQSearcher
from rissole.retrieval.searchers.scann_backend import ScannSearcher

BACKENDS: dict[str, type[Searcher]] = {
    cls.backend: cls for cls in (ExactSearcher, ScannSearcher, FaissHNSWSearcher, FaissIVFPQSearcher)
}


def make_searcher(backend: str, **params: Any) -> Searcher:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend](**params)


def load_searcher(path: str | os.PathLike, keys: KeySet) -> Searcher:
    """Load an index saved by Searcher.save, refusing one built for another database or key mode."""
    path = Path(path)
    meta = read_searcher_meta(path)
    check_meta(path, meta, keys)
    s = make_searcher(meta["backend"], **meta["params"])
    s.keys = keys
    s._load(path)
    return s


__all__ = ["BACKENDS", "Searcher", "load_searcher", "make_searcher", "rescore", "select_top_k"]
