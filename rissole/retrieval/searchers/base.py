"""One interface for every nearest-neighbour backend, and exact rescoring from the memmap.

    s = make_searcher("scann", **overrides); s.build(KeySet(db, "block0"))
    ids, scores = s.search(queries, k)   # int64 (nq, k) best first, float32 dot products; -1 = none
    s.save(dir); s = load_searcher(dir, keys)

Queries are normalised here, keys by the KeySet, so every backend ranks by cosine similarity.
With `rerank=True` an approximate backend keeps only its compressed codes in RAM, returns
`candidates` rows per query, and those rows are rescored exactly against the memmapped keys:
the full-precision vectors never need to be resident.
"""

from __future__ import annotations

import json
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rissole_runtime.errors import DataError
from rissole_runtime.fileio import INDEX, atomic_dir
from rissole.retrieval.keys import KeySet, normalise
from rissole_runtime.retrieval.search import select_top_k  # noqa: F401 - re-exported (one definition, shared with the runtime)

SEARCHER_FILE = "searcher.json"


def rescore(keys: KeySet, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact dot products of normalised queries with candidate rows read from the memmap; best k."""
    valid = candidates >= 0
    rows = keys.gather(np.where(valid, candidates, 0))  # (nq, R, d)
    scores = np.einsum("qd,qrd->qr", queries, rows)
    return select_top_k(np.where(valid, candidates, -1), scores, k)


class Searcher(ABC):
    """A nearest-neighbour index over a KeySet (dot product of unit vectors)."""

    backend: ClassVar[str]
    #: parameters that only change how a built index is searched (no rebuild needed)
    search_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.keys: KeySet | None = None

    @classmethod
    def default_params(cls, n: int, dim: int) -> dict[str, Any]:
        """Parameters chosen from the number of rows and the dimension; user overrides win."""
        return {}

    @property
    def rerank(self) -> bool:
        return bool(self.params.get("rerank", False))

    def build(self, keys: KeySet) -> "Searcher":
        self.params = {**self.default_params(keys.n, keys.dim), **self.params}
        self.keys = keys
        self._build(keys)
        return self

    def set_search_params(self, **params: Any) -> None:
        unknown = set(params) - set(self.search_params)
        if unknown:
            raise ValueError(f"{self.backend}: {sorted(unknown)} are not search-time parameters; those are {self.search_params}")
        self.params.update(params)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.keys is None:
            raise RuntimeError(f"{self.backend} searcher used before build() or load()")
        q = np.atleast_2d(normalise(queries))
        if q.shape[1] != self.keys.dim:
            raise ValueError(f"queries have dimension {q.shape[1]}, the index {self.keys.dim} (key mode {self.keys.mode})")
        if self.rerank:
            cand = self._candidates(q, max(k, int(self.params.get("candidates", 10 * k))))
            return rescore(self.keys, q, cand, k)
        return self._search(q, k)

    def _candidates(self, queries: np.ndarray, n: int) -> np.ndarray:
        raise ValueError(f"{self.backend} does not support rerank-from-memmap")

    @abstractmethod
    def _build(self, keys: KeySet) -> None: ...

    @abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _save(self, path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path) -> None: ...

    def index_bytes(self, path: str | os.PathLike | None = None) -> int:
        """Bytes of the saved index (the folder `path`, or a temporary save)."""
        if path is not None:
            return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            self.save(Path(tmp) / "index")
            return self.index_bytes(Path(tmp) / "index")

    def save(self, path: str | os.PathLike) -> None:
        """Write the index folder atomically, with the database checksum it belongs to."""
        assert self.keys is not None
        with atomic_dir(path, INDEX, owned=True) as tmp:  # `db neighbours` rebuilds its own indexes
            self._save(tmp)
            meta = {
                "backend": self.backend,
                "params": self.params,
                "key_mode": self.keys.mode,
                "rows": self.keys.n,
                "dim": self.keys.dim,
                "db_sha256": self.keys.db.manifest["sha256"],
            }
            (tmp / SEARCHER_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def read_searcher_meta(path: str | os.PathLike) -> dict[str, Any]:
    f = Path(path) / SEARCHER_FILE
    if not f.is_file():
        raise DataError(f"{path}: not a saved index (no {SEARCHER_FILE}). Build one with `rissole db neighbours`.")
    return json.loads(f.read_text())


def check_meta(path: Path, meta: dict[str, Any], keys: KeySet) -> None:
    """Refuse an index saved for another database, key mode or size."""
    found = (meta["key_mode"], meta["rows"], meta["dim"], meta["db_sha256"])
    expect = (keys.mode, keys.n, keys.dim, keys.db.manifest["sha256"])
    if found != expect:
        raise DataError(
            f"{path}: index built for key mode {found[0]}, {found[1]} rows x {found[2]}, database {found[3][:12]}; "
            f"this database gives {expect[0]}, {expect[1]} x {expect[2]}, {expect[3][:12]}. Rebuild it with `rissole db neighbours`."
        )


def remove_index(path: str | os.PathLike) -> None:
    shutil.rmtree(path, ignore_errors=True)
