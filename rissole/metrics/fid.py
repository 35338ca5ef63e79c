"""Fréchet Inception Distance (Heusel et al., 2017) from features or from (mu, sigma), in float64 numpy."""

from __future__ import annotations

import numpy as np

from rissole_runtime.errors import DataError


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) in float64; sigma is the unbiased covariance (divides by N - 1), as in TF-FID."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise DataError(f"FID needs at least 2 feature vectors (N, D), found shape {f.shape}.")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_factor(sigma: np.ndarray) -> np.ndarray:
    """L with L @ L.T == sigma, from the symmetric eigendecomposition (negative round-off eigenvalues -> 0)."""
    s = (sigma + sigma.T) / 2
    w, v = np.linalg.eigh(s)
    return v * np.sqrt(np.clip(w, 0.0, None))


def _trace_sqrt_from_factors(l1: np.ndarray, l2: np.ndarray) -> float:
    """tr(sqrtm(L1 L1^T L2 L2^T)) = sum of the singular values of L1^T L2.

    The nonzero eigenvalues of sigma1 sigma2 are the squared singular values of L1^T L2. Unlike
    sqrtm of the non-symmetric product (scipy), this never takes the square root of a round-off
    eigenvalue in the null space, which matters because with N <= 2048 images the covariances are
    rank-deficient: FID of a set against itself comes out ~1e-13 here, ~1e-4 with scipy.linalg.sqrtm.
    """
    return float(np.linalg.svd(l1.T @ l2, compute_uv=False).sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrtm(sigma1 @ sigma2)) for symmetric PSD sigmas (two D x D eigendecompositions and one SVD)."""
    return _trace_sqrt_from_factors(_psd_factor(sigma1), _psd_factor(sigma2))


def _fid_terms(mu1: np.ndarray, tr1: float, mu2: np.ndarray, tr2: float, trace_sqrt: float) -> float:
    diff = mu1 - mu2
    return max(float(diff @ diff + tr1 + tr2 - 2.0 * trace_sqrt), 0.0)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(sigma1 + sigma2 - 2 sqrtm(sigma1 sigma2)); tiny negative round-off clamped to 0."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise DataError(
            f"FID statistics do not match: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}."
        )
    return _fid_terms(mu1, np.trace(sigma1), mu2, np.trace(sigma2), trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """FID between two feature sets (N1, D) and (N2, D). Always report N: FID is biased upwards at small N.

    When N <= D the centred features themselves factor the covariance (sigma = A A^T / (N - 1)),
    so the SVD is N1 x N2 instead of D x D: milliseconds for a few hundred images.
    """
    f1, f2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    mu1, sigma1 = feature_stats(f1)
    mu2, sigma2 = feature_stats(f2)
    if f1.shape[1] != f2.shape[1]:
        raise DataError(f"FID feature sets differ in dimension: {f1.shape} vs {f2.shape}.")
    if max(len(f1), len(f2)) > f1.shape[1]:
        return frechet_distance(mu1, sigma1, mu2, sigma2)
    l1 = (f1 - mu1).T / np.sqrt(len(f1) - 1)
    l2 = (f2 - mu2).T / np.sqrt(len(f2) - 1)
    return _fid_terms(mu1, np.trace(sigma1), mu2, np.trace(sigma2), _trace_sqrt_from_factors(l1, l2))


def _centred_factor(features: np.ndarray, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mu, L) with L @ L.T the unbiased covariance of `features`, each row counted `counts` times
    (a bootstrap draw): the centred rows scaled by sqrt(count / (N - 1)), D x M for M distinct rows."""
    c = np.ones(len(features)) if counts is None else counts.astype(np.float64)
    n = c.sum()
    mu = (c[:, None] * features).sum(axis=0) / n
    return mu, ((features - mu) * np.sqrt(c / (n - 1))[:, None]).T


def fid_bootstrap(features: np.ndarray, ref_features: np.ndarray, resamples: int = 50,
                  seed: int = 0) -> dict[str, float]:
    """The sampling spread of FID from the finite sample set: FID of `resamples` bootstrap draws (N of the N
    sample features with replacement) against the fixed reference features. Their standard deviation is
    the standard error of the FID estimate for this model at this N (the spread a new sample set of the
    same model would show; a second seed measures it directly). The draws' mean is biased upwards
    (duplicates shrink the effective N), so compare the point FID, not that mean.

    Each draw is the same FID as fid_from_features on the drawn rows, computed from its ~63% distinct
    rows weighted by their counts (a smaller SVD: about 2.5x faster at N = 2,000), with the reference's
    factor computed once."""
    f = np.asarray(features, np.float64)
    ref = np.asarray(ref_features, np.float64)
    if f.ndim != 2 or ref.ndim != 2 or f.shape[1] != ref.shape[1] or len(f) < 2 or len(ref) < 2:
        raise DataError(f"FID bootstrap needs two feature sets (N, D) of one D, found {f.shape} and {ref.shape}.")
    mu2, l2 = _centred_factor(ref)
    if l2.shape[1] > l2.shape[0]:  # more reference rows than dimensions: the D x D factor is smaller
        l2 = _psd_factor(l2 @ l2.T)
    tr2 = float((l2 * l2).sum())
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        rows, counts = np.unique(rng.integers(0, len(f), len(f)), return_counts=True)
        mu1, l1 = _centred_factor(f[rows], counts)
        values.append(_fid_terms(mu1, float((l1 * l1).sum()), mu2, tr2, _trace_sqrt_from_factors(l1, l2)))
    values = np.array(values)
    return {"fid_bootstrap_std": float(values.std(ddof=1)), "fid_bootstrap_mean": float(values.mean()),
            "fid_bootstrap_resamples": int(resamples), "fid_bootstrap_seed": int(seed)}
