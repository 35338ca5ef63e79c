"""Kernel Inception Distance (Bińkowski et al., 2018): unbiased MMD^2, cubic polynomial kernel, over random subsets.

Unlike FID it is unbiased in N, so it can compare models evaluated on small sample counts.
"""

from __future__ import annotations

import numpy as np

from rissole_runtime.errors import DataError

# Below this many rows in total the three full kernel matrices are computed once and subsets index
# them (at most 3 x 6000^2 float64 = 0.9 GB); above, each subset computes its own kernels.
_FULL_KERNEL_MAX_ROWS = 6000


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x . y / dim + 1)^3 in float64."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray) -> float:
    m = kxx.shape[0]
    off = m * (m - 1)
    return float((kxx.sum() - np.trace(kxx)) / off + (kyy.sum() - np.trace(kyy)) / off - 2.0 * kxy.mean())


def kid(
    features1: np.ndarray,
    features2: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over `subsets` random subsets of min(subset_size, N1, N2) rows each.

    When both sets have at most subset_size rows every subset is the whole of both, so the value is
    computed once and its std is 0 by construction (not an uncertainty).

    Unbiased means it can come out slightly negative: a set against itself gives about
    -2 (mean k(x, x) - mean k(x, y)) / m, since the within-set terms leave out the diagonal.
    """
    x = np.asarray(features1, dtype=np.float64)
    y = np.asarray(features2, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise DataError(f"KID needs feature sets (N1, D) and (N2, D), found {x.shape} and {y.shape}.")
    m = min(subset_size, len(x), len(y))
    if m < 2:
        raise DataError(f"KID needs at least 2 feature vectors per set, found {len(x)} and {len(y)}.")
    if subsets < 1:
        raise DataError(f"KID needs at least 1 subset, found {subsets}.")
    if m == len(x) == len(y):
        return _mmd2_unbiased(polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)), 0.0
    rng = np.random.default_rng(seed)
    full = len(x) + len(y) <= _FULL_KERNEL_MAX_ROWS
    if full:
        kxx_all, kyy_all, kxy_all = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    values = np.empty(subsets)
    for s in range(subsets):
        i = rng.choice(len(x), m, replace=False)
        j = rng.choice(len(y), m, replace=False)
        if full:
            values[s] = _mmd2_unbiased(kxx_all[np.ix_(i, i)], kyy_all[np.ix_(j, j)], kxy_all[np.ix_(i, j)])
        else:
            xs, ys = x[i], y[j]
            values[s] = _mmd2_unbiased(polynomial_kernel(xs, xs), polynomial_kernel(ys, ys), polynomial_kernel(xs, ys))
    return float(values.mean()), float(values.std())
