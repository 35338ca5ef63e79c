"""Inception statistics of a reference data set, computed once and cached on disk.

Reference features cost about 0.2 s per image on a CPU, and every evaluation of every model is
held against the same reference, so they are cached as .npz (mu, sigma, features for KID and
precision/recall) under $RISSOLE_CACHE/fid/ (default ~/.cache/rissole/fid/). The key is the
SHA-256 of the exact image bytes used plus the SHA-256 of the Inception file, so a changed data
file, a different N or another network never returns stale numbers. A cache file that does not
load or does not match is recomputed, never trusted.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rissole.data import ImageSet, load_source, parse_source
from rissole_runtime.errors import DataError
from rissole_runtime.fileio import atomic_path
from rissole.metrics.fid import feature_stats
from rissole.metrics.inception import FEATURE_DIM, inception_features, inception_hash

# Bump when preprocessing (resize, scaling) changes: old cache files then miss instead of lying.
CACHE_VERSION = 1


def cache_dir() -> Path:
    root = os.environ.get("RISSOLE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "rissole") / "fid"


@dataclass
class ReferenceStats:
    """Inception statistics of `n` images of `spec`; `from_cache` says whether they were read from `path`."""

    spec: str
    n: int
    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray
    key: str
    path: Path
    from_cache: bool


def subset_indices(total: int, n: int, seed: int | None, what: str = "images") -> np.ndarray:
    """Which n of `total` items an evaluation uses: the first n (seed None) or a seeded random n, sorted."""
    if n > total:
        raise DataError(f"{what}: {n} images asked (-n), only {total} found.")
    if seed is None:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def load_reference_images(
    spec: str, n: int, data_dir: str | os.PathLike | None = None, size: int = 32, seed: int | None = None
) -> ImageSet:
    """n images of a spec: the first n when `seed` is None, else a seeded random n-subset (in file order).

    The first n of a folder sorted by class are one or two classes; a random subset is what a user
    comparing with the whole set means. Folders are read as RGB (grey files give R = G = B, the same
    features).
    """
    kind, _, _ = parse_source(spec)
    channels = 3 if kind == "folder" else 1
    data = load_source(spec, data_dir=data_dir, size=size, channels=channels, limit=n if seed is None else None)
    pick = subset_indices(len(data.images), n, seed, what=f"reference {spec}")
    if seed is None:
        return data
    labels = None if data.labels is None else data.labels[pick]
    return ImageSet(np.ascontiguousarray(data.images[pick]), labels, f"{data.spec}[random {n}, seed {seed}]")


def cache_key(data: ImageSet, inception_sha256: str) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}:{data.content_hash()}:{inception_sha256}".encode()).hexdigest()


def _read_cache(path: Path, key: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(mu, sigma, features) if `path` is a complete cache file for `key`, else None (with a note why)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            ok = (
                str(z["key"]) == key
                and z["features"].shape == (n, FEATURE_DIM)
                and z["mu"].shape == (FEATURE_DIM,)
                and z["sigma"].shape == (FEATURE_DIM, FEATURE_DIM)
            )
            mu, sigma, features = z["mu"], z["sigma"], z["features"]
        if not ok or not (np.isfinite(mu).all() and np.isfinite(sigma).all() and np.isfinite(features).all()):
            raise ValueError("contents do not match the key or are not finite")
    except Exception as exc:  # any unreadable file is recomputed, whatever the reason
        print(f"rissole: FID cache {path} unusable ({type(exc).__name__}: {exc}); recomputing.", file=sys.stderr)
        return None
    return mu, sigma, features


def reference_stats(
    spec: str,
    n: int,
    data_dir: str | os.PathLike | None = None,
    size: int = 32,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    inception: str | os.PathLike | None = None,
    cache: str | os.PathLike | None = None,
    progress: bool = True,
    seed: int | None = None,
) -> ReferenceStats:
    """Statistics of n images of `spec` (the first n, or a seeded random subset: `load_reference_images`),
    from the cache when a valid entry exists (the key hashes the very pixels used)."""
    data = load_reference_images(spec, n, data_dir=data_dir, size=size, seed=seed)
    key = cache_key(data, inception_hash(inception))
    path = Path(cache) if cache is not None else cache_dir()
    path = path / f"{key}.npz"
    hit = _read_cache(path, key, n)
    if hit is not None:
        return ReferenceStats(spec, n, *hit, key=key, path=path, from_cache=True)
    features = inception_features(
        data.images, batch_size=batch_size, device=device, path=inception, progress=progress, desc=f"inception {spec}"
    )
    mu, sigma = feature_stats(features)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a path
        np.savez(f, key=np.array(key), spec=np.array(spec), n=np.array(n), mu=mu, sigma=sigma, features=features)
    return ReferenceStats(spec, n, mu, sigma, features, key=key, path=path, from_cache=False)
