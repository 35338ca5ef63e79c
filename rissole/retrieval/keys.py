"""Retrieval keys: which vector of a latent is searched, L2-normalised for dot-product search.

Modes
    block0      the top-left block (the RISSOLE paper's default): d = c*h*w / b
    latent      the whole latent, its blocks concatenated (appendix variant): d = c*h*w

(benchmarks/retrieval.py adds a third, every block as its own row, to show how search grows with n.)

Keys are read from the memmapped database on demand, chunk by chunk or by id; nothing here
holds the key matrix in RAM unless a caller asks for it (`materialise`).
"""

from __future__ import annotations

import numpy as np
from einops import rearrange

from rissole_runtime.retrieval.blocks import split_blocks
from rissole.retrieval.database import BlockDatabase

KEY_MODES = ("block0", "latent")


def normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm, float32 (an all-zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def latent_keys(z: np.ndarray, grid: int, mode: str) -> np.ndarray:
    """Normalised keys of latents (n, c, h, w) that are not in the database (e.g. held-out queries)."""
    blocks = split_blocks(np.asarray(z, dtype=np.float32), grid)  # (n, b, c, h, w)
    if mode == "block0":
        return normalise(blocks[:, 0].reshape(len(z), -1))
    if mode == "latent":
        return normalise(blocks.reshape(len(z), -1))
    raise ValueError(f"key mode must be one of {KEY_MODES}, found {mode!r}")


class KeySet:
    """The keys of one database in one mode, read lazily from its memmap."""

    def __init__(self, db: BlockDatabase, mode: str = "block0") -> None:
        if mode not in KEY_MODES:
            raise ValueError(f"key mode must be one of {KEY_MODES}, found {mode!r}")
        self.db = db
        self.mode = mode
        b, n, d = db.array.shape
        self.n = n
        self.dim = d * b if mode == "latent" else d

    def __len__(self) -> int:
        return self.n

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        """Un-normalised float32 keys of rows [start, stop)."""
        a = self.db.array
        if self.mode == "block0":
            return np.asarray(a[0, start:stop], dtype=np.float32)
        return np.ascontiguousarray(np.asarray(a[:, start:stop], dtype=np.float32).transpose(1, 0, 2)).reshape(
            stop - start, self.dim
        )

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Normalised float32 keys of rows [start, stop)."""
        return normalise(self.raw_rows(start, stop))

    def gather(self, ids: np.ndarray) -> np.ndarray:
        """Normalised keys of arbitrary rows, shape ids.shape + (dim,), read from the memmap."""
        ids = np.asarray(ids, dtype=np.int64)
        flat = ids.ravel()
        a = self.db.array
        if self.mode == "block0":
            out = np.take(a[0], flat, axis=0)
        else:
            out = rearrange(np.take(a, flat, axis=1), "b n d -> n (b d)")
        return normalise(out).reshape(*ids.shape, self.dim)

    def chunks(self, chunk_rows: int):
        """(start, stop) pairs covering all rows."""
        for start in range(0, self.n, chunk_rows):
            yield start, min(start + chunk_rows, self.n)

    def materialise(self, chunk_rows: int = 65536) -> np.ndarray:
        """All normalised keys as one in-RAM float32 array (what an in-RAM index needs to build)."""
        out = np.empty((self.n, self.dim), dtype=np.float32)
        for s, e in self.chunks(chunk_rows):
            out[s:e] = self.rows(s, e)
        return out
