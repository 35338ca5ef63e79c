"""The proposal distribution over pseudo-queries (RDM paper, Eq. 5 and 7) and its sampler.

    p_D(x~) = |{x in X : x~ in xi_k(x, D)}| / (k |X|)         (Eq. 5)

i.e. how often a database row is among the k neighbours of the training rows. Top-m (Eq. 7)
keeps the ceil(m N) most likely rows and renormalises; small m trades diversity for quality.
Without a training table (no weights) the proposal is uniform.
"""

from __future__ import annotations

import math

import numpy as np


def proposal_from_table(train_ids: np.ndarray, db_rows: int) -> np.ndarray:
    """float64 (db_rows,) summing to 1, from a training neighbour table (N_train, k)."""
    ids = np.asarray(train_ids).ravel()
    if ids.size == 0:
        raise ValueError("empty neighbour table")
    counts = np.bincount(ids, minlength=db_rows).astype(np.float64)
    return counts / ids.size


def top_m(p: np.ndarray, m: float) -> np.ndarray:
    """Eq. 7: zero all but the ceil(m N) most likely rows (ties to the lower id), renormalise."""
    if not 0.0 < m <= 1.0:
        raise ValueError(f"m must lie in (0, 1], found {m}")
    n = len(p)
    keep = math.ceil(m * n)
    order = np.argsort(-p, kind="stable")[:keep]
    out = np.zeros_like(p, dtype=np.float64)
    out[order] = p[order]
    z = out.sum()
    if z <= 0:
        raise ValueError(f"top-m with m={m} keeps {keep} rows that all have probability 0")
    return out / z


class PseudoQuerySampler:
    """Seeded draws of database rows from p_D truncated to top-m (uniform when p is None)."""

    def __init__(self, p: np.ndarray | None, db_rows: int, m: float = 1.0, seed: int = 0) -> None:
        base = np.full(db_rows, 1.0 / db_rows) if p is None else np.asarray(p, dtype=np.float64)
        if len(base) != db_rows:
            raise ValueError(f"proposal has {len(base)} entries, the database {db_rows} rows")
        self._base, self.m = base, m
        # m = 1 keeps every row: no top_m (its argsort and copies of the proposal are what a 10x database on a
        # device pays in peak memory) and, without rows of probability 0, the cdf indexes the rows directly
        kept = base if m == 1.0 else top_m(base, m)
        self.support = None if np.count_nonzero(kept) == db_rows else np.flatnonzero(kept)
        self.cdf = np.cumsum(kept if self.support is None else kept[self.support])
        self.cdf /= self.cdf[-1]
        self.cdf[-1] = 1.0
        self.rng = np.random.default_rng(seed)

    @property
    def p(self) -> np.ndarray:
        """The truncated, renormalised proposal (Eq. 7), computed on demand."""
        return self._base / self._base.sum() if self.m == 1.0 else top_m(self._base, self.m)

    def sample(self, n: int) -> np.ndarray:
        """n row ids (int64), drawn with replacement."""
        u = self.rng.random(n)
        idx = np.searchsorted(self.cdf, u, side="right").clip(max=len(self.cdf) - 1)
        return idx.astype(np.int64) if self.support is None else self.support[idx]
