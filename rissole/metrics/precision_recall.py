"""Improved precision and recall (Kynkäänniemi et al., 2019) with k-NN balls in Inception feature space.

Precision: the fraction of generated samples inside the real manifold (the union of balls around
each real feature reaching its k-th nearest real neighbour). Recall: the same with the roles swapped.
FID mixes the two failure modes (poor samples, missing modes); these separate them.
"""

from __future__ import annotations

import numpy as np

from rissole_runtime.errors import DataError


def _sq_distances(a: np.ndarray, b: np.ndarray, a_sq: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    return np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)


def knn_radii_sq(features: np.ndarray, k: int = 3, chunk: int = 1024) -> np.ndarray:
    """Squared distance from each row to its k-th nearest other row (the row itself, at 0, is skipped)."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) <= k:
        raise DataError(f"precision/recall with k={k} needs more than {k} feature vectors, found {len(f)}.")
    sq = (f * f).sum(axis=1)
    out = np.empty(len(f))
    for s in range(0, len(f), chunk):
        d = _sq_distances(f[s : s + chunk], f, sq[s : s + chunk], sq)
        out[s : s + chunk] = np.partition(d, k, axis=1)[:, k]  # index 0 is the row itself
    return out


def _coverage(manifold: np.ndarray, radii_sq: np.ndarray, probes: np.ndarray, chunk: int) -> float:
    """Fraction of probes within radius of at least one manifold point."""
    m_sq = (manifold * manifold).sum(axis=1)
    p_sq = (probes * probes).sum(axis=1)
    inside = np.zeros(len(probes), dtype=bool)
    for s in range(0, len(probes), chunk):
        d = _sq_distances(probes[s : s + chunk], manifold, p_sq[s : s + chunk], m_sq)
        inside[s : s + chunk] = (d <= radii_sq[None, :]).any(axis=1)
    return float(inside.mean())


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, chunk: int = 1024
) -> tuple[float, float]:
    """(precision, recall) of generated features `fake` against reference features `real`, both (N, D)."""
    r = np.asarray(real, dtype=np.float64)
    f = np.asarray(fake, dtype=np.float64)
    if r.ndim != 2 or f.ndim != 2 or r.shape[1] != f.shape[1]:
        raise DataError(f"precision/recall needs feature sets (N1, D) and (N2, D), found {r.shape} and {f.shape}.")
    precision = _coverage(r, knn_radii_sq(r, k, chunk), f, chunk)
    recall = _coverage(f, knn_radii_sq(f, k, chunk), r, chunk)
    return precision, recall
