"""ScaNN: partitioning tree + anisotropic asymmetric hashing + exact reordering.

Parameters follow ScaNN's own rule of thumb for n rows (its algorithms guide): brute force
below about 20k rows; asymmetric hashing (2 dimensions per 4-bit block, anisotropic
threshold 0.2) with exact reordering up to about 100k; above that a k-means tree with about
sqrt(n) leaves in front of it. Every value can be overridden, and `leaves_to_search` /
`reorder` are search-time knobs (no rebuild).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rissole_runtime.errors import DataError
from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher, select_top_k


def _scann() -> Any:
    try:
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError as exc:  # aarch64 (Jetson) has no ScaNN wheel
        raise ImportError(
            "ScaNN is not installed (`pip install scann==1.4.2`; x86_64 Linux only). On devices without it use "
            "the precomputed neighbour tables, or the `exact` / faiss backends."
        ) from exc
    return scann_ops_pybind


class ScannSearcher(Searcher):
    backend = "scann"
    search_params = ("leaves_to_search", "reorder", "candidates", "threads")

    @classmethod
    def default_params(cls, n: int, dim: int) -> dict[str, Any]:
        if n < 20_000:
            mode = "brute"
        elif n < 100_000:
            mode = "ah"
        else:
            mode = "tree_ah"
        leaves = max(2, int(round(math.sqrt(n))))
        return {
            "mode": mode,
            "num_leaves": leaves,
            "leaves_to_search": max(1, int(round(0.05 * leaves))),
            "training_sample_size": min(n, 250_000),
            "dims_per_block": 2,
            "anisotropic_threshold": 0.2,
            "reorder": 100,
            "threads": 1,
            "rerank": False,
        }

    def _build(self, keys: KeySet) -> None:
        p = self.params
        if p["rerank"] and p["mode"] == "brute":
            raise ValueError("scann: rerank-from-memmap needs asymmetric hashing; pass mode='ah' or 'tree_ah'")
        data = keys.materialise()  # ScaNN trains on an in-RAM copy; it is dropped after the build
        b = _scann().builder(data, 10, "dot_product")
        b.set_n_training_threads(int(p["threads"]))
        if p["mode"] == "tree_ah":
            b = b.tree(
                num_leaves=int(p["num_leaves"]),
                num_leaves_to_search=int(p["leaves_to_search"]),
                training_sample_size=int(p["training_sample_size"]),
            )
        if p["mode"] == "brute":
            b = b.score_brute_force()
        else:
            b = b.score_ah(
                int(p["dims_per_block"]),
                anisotropic_quantization_threshold=float(p["anisotropic_threshold"]),
                training_sample_size=int(p["training_sample_size"]),
            )
            if not p["rerank"]:
                b = b.reorder(int(p["reorder"]))
        self.index = b.build()
        self.index.set_num_threads(int(p["threads"]))
        del data

    def _query(self, queries: np.ndarray, final: int, pre: int) -> tuple[np.ndarray, np.ndarray]:
        p = self.params
        leaves = int(p["leaves_to_search"]) if p["mode"] == "tree_ah" else None
        if queries.shape[0] == 1:
            ids, scores = self.index.search(queries[0], final, pre, -1 if leaves is None else leaves)
            ids, scores = np.asarray(ids)[None], np.asarray(scores)[None]
        elif int(p["threads"]) > 1:
            ids, scores = self.index.search_batched_parallel(queries, final, pre, leaves)
        else:
            ids, scores = self.index.search_batched(queries, final, pre, leaves)
        return np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        pre = max(k, int(self.params["reorder"])) if self.params["mode"] != "brute" else k
        return select_top_k(*self._query(queries, k, pre), k)

    def _candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        return self._query(queries, n, n)[0]

    def _save(self, path: Path) -> None:
        self.index.serialize(str(path), relative_path=True)

    def _load(self, path: Path) -> None:
        if (path / "scann_docids.pkl").exists():  # ScaNN would unpickle it: never execute code from a file
            raise DataError(f"{path}: contains scann_docids.pkl (a pickle); refusing to load. Rebuild the index.")
        self.index = _scann().load_searcher(str(path))
        self.index.set_num_threads(int(self.params["threads"]))
