"""Exact search in numpy over the memmapped keys, chunk by chunk: the reference for every backend.

Holds only one float32 per row (the inverse key norm) in RAM; each chunk of raw keys is read
from the memmap, multiplied with the queries and merged into a running top-k.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher
from rissole_runtime.retrieval.search import exact_search


class ExactSearcher(Searcher):
    backend = "exact"
    search_params = ("chunk_rows",)

    @classmethod
    def default_params(cls, n: int, dim: int) -> dict[str, Any]:
        return {"chunk_rows": max(1024, (16 << 20) // (4 * dim))}  # about 16 MB of keys per chunk

    def _build(self, keys: KeySet) -> None:
        inv = np.empty(keys.n, dtype=np.float32)
        for s, e in keys.chunks(self.params["chunk_rows"]):
            inv[s:e] = 1.0 / np.maximum(np.linalg.norm(keys.raw_rows(s, e), axis=1), 1e-12)
        self.inv_norms = inv

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        assert self.keys is not None
        keys, inv = self.keys, self.inv_norms
        chunks = ((s, keys.raw_rows(s, e), inv[s:e]) for s, e in keys.chunks(self.params["chunk_rows"]))
        return exact_search(queries, chunks, k)

    def _save(self, path: Path) -> None:
        np.save(path / "inv_norms.npy", self.inv_norms)

    def _load(self, path: Path) -> None:
        self.inv_norms = np.load(path / "inv_norms.npy")
