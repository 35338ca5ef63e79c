"""faiss (optional dependency, `pip install rissole[faiss]`): HNSW, and IVF with 4-bit fast-scan PQ.

    faiss-hnsw   IndexHNSWFlat, inner product; `ef_search` is the search-time knob.
    faiss-ivfpq  IVF (about 4 sqrt(n) lists) + PQ with 2 dimensions per 4-bit code (fast scan),
                 followed by an exact refine over k_factor * k candidates (default 32) (in-RAM flat copy), or,
                 with rerank=True, by rescoring candidates from the memmap instead (codes only in RAM).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from rissole.retrieval.keys import KeySet
from rissole.retrieval.searchers.base import Searcher, select_top_k

INDEX_FILE = "index.faiss"


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as exc:
        raise ImportError("faiss is not installed: `pip install faiss-cpu==1.15.1` (or `pip install -e .[faiss]`).") from exc
    return faiss


class _FaissSearcher(Searcher):
    def _set_threads(self) -> None:
        _faiss().omp_set_num_threads(int(self.params["threads"]))

    def _raw_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self._apply_search_params()
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return ids.astype(np.int64), scores.astype(np.float32)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return select_top_k(*self._raw_search(queries, k), k)

    def _candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        return self._raw_search(queries, n)[0]

    def _apply_search_params(self) -> None:
        pass

    def _save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path / INDEX_FILE))

    def _load(self, path: Path) -> None:
        self.index = _faiss().read_index(str(path / INDEX_FILE))
        self._set_threads()


class FaissHNSWSearcher(_FaissSearcher):
    backend = "faiss-hnsw"
    search_params = ("ef_search", "threads")

    @classmethod
    def default_params(cls, n: int, dim: int) -> dict[str, Any]:
        return {"m": 32, "ef_construction": 80, "ef_search": 64, "threads": 1, "rerank": False}

    def _build(self, keys: KeySet) -> None:
        if self.params["rerank"]:
            raise ValueError("faiss-hnsw keeps full vectors in its graph; rerank-from-memmap applies to faiss-ivfpq and scann")
        faiss = _faiss()
        self._set_threads()
        self.index = faiss.IndexHNSWFlat(keys.dim, int(self.params["m"]), faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = int(self.params["ef_construction"])
        for s, e in keys.chunks(65536):
            self.index.add(keys.rows(s, e))

    def _apply_search_params(self) -> None:
        self.index.hnsw.efSearch = int(self.params["ef_search"])


class FaissIVFPQSearcher(_FaissSearcher):
    backend = "faiss-ivfpq"
    search_params = ("nprobe", "k_factor", "candidates", "threads")

    @classmethod
    def default_params(cls, n: int, dim: int) -> dict[str, Any]:
        return {
            "nlist": max(1, int(round(4 * math.sqrt(n)))),
            "pq_m": max(1, dim // 2),
            "nprobe": 16,
            "k_factor": 32,  # near-tied keys (blank corners) need a deep refine, see benchmarks/results/retrieval.json
            "training_sample_size": min(n, 100_000),
            "threads": 1,
            "rerank": False,
        }

    def _build(self, keys: KeySet) -> None:
        faiss = _faiss()
        self._set_threads()
        p = self.params
        spec = f"IVF{int(p['nlist'])},PQ{int(p['pq_m'])}x4fs" + ("" if p["rerank"] else ",RFlat")
        self.index = faiss.index_factory(keys.dim, spec, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(keys.n, size=int(p["training_sample_size"]), replace=False))
        self.index.train(keys.gather(sample))
        for s, e in keys.chunks(65536):
            self.index.add(keys.rows(s, e))

    def _apply_search_params(self) -> None:
        faiss = _faiss()
        faiss.extract_index_ivf(self.index).nprobe = int(self.params["nprobe"])
        if not self.params["rerank"]:
            faiss.downcast_index(self.index).k_factor = float(self.params["k_factor"])
