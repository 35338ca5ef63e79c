"""Sample-quality metrics on InceptionV3 features: FID, KID, improved precision/recall.

FID depends strongly on N (biased upwards for small N): always report N and compare models only at
equal N against the same reference. KID is unbiased in N; precision/recall separate sample quality
from coverage. Reference statistics are cached (see `reference`).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from rissole_runtime.errors import DataError
from rissole.metrics.fid import feature_stats, fid_bootstrap, fid_from_features, frechet_distance

# kid() and precision_recall() are not re-exported here: the names would shadow their submodules.
__all__ = ["evaluate", "feature_stats", "fid_from_features", "frechet_distance"]


def evaluate(
    samples: np.ndarray,
    ref: str = "fmnist:test",
    n: int = 2000,
    with_kid: bool = False,
    with_pr: bool = False,
    data_dir: str | os.PathLike | None = None,
    ref_size: int = 32,
    batch_size: int = 32,
    device: str = "auto",
    inception: str | os.PathLike | None = None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    progress: bool = True,
    ref_seed: int | None = None,
    bootstrap: int = 0,
) -> dict[str, Any]:
    """FID (and optionally KID, precision/recall) of the first n uint8 `samples` against n images of `ref`:
    its first n when `ref_seed` is None (the protocol of the benchmark tables), else a seeded random subset.
    bootstrap > 0: also the standard error of that FID from `bootstrap` resamples of the samples
    (rissole.metrics.fid.fid_bootstrap)."""
    from rissole.metrics.inception import inception_features, inception_hash
    from rissole.metrics.kid import kid
    from rissole.metrics.precision_recall import precision_recall
    from rissole.metrics.reference import reference_stats

    if n < 2:
        raise DataError(f"FID needs n >= 2 images, found -n {n}.")
    if len(samples) < n:
        raise DataError(f"samples: {n} images asked (-n), only {len(samples)} found.")
    stats = reference_stats(
        ref, n, data_dir=data_dir, size=ref_size, batch_size=batch_size, device=device, inception=inception, progress=progress,
        seed=ref_seed,
    )
    feats = inception_features(
        samples[:n], batch_size=batch_size, device=device, path=inception, progress=progress, desc="inception samples"
    )
    out: dict[str, Any] = {
        "n": n,
        "ref": ref,
        "ref_subset": "first" if ref_seed is None else f"random, seed {ref_seed}",
        "fid": fid_from_features(feats, stats.features),
        "inception_sha256": inception_hash(inception),
        "ref_cache": str(stats.path),
        "ref_from_cache": stats.from_cache,
    }
    if bootstrap:
        out.update(fid_bootstrap(feats, stats.features, bootstrap))
    if with_kid:
        mean, std = kid(feats, stats.features, subsets=kid_subsets, subset_size=kid_subset_size)
        out.update(kid_mean=mean, kid_std=std, kid_subsets=kid_subsets, kid_subset_size=min(kid_subset_size, n))
    if with_pr:
        precision, recall = precision_recall(stats.features, feats, k=pr_k)
        out.update(precision=precision, recall=recall, pr_k=pr_k)
    return out
