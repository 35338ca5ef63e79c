"""Copy check: how many samples are closer to a training image than any two training images are?

The bar is the nearest distinct pair among the training images (L2 in pixels, exact duplicates
in the data set excluded); a sample closer than that to its nearest training image is a copy.
Held-out real images score about 0; a model that memorises or pastes its neighbours scores high.

Distances are found in float32 (fast BLAS), then the few best candidates of every row are
rescored exactly in integers, so "identical" and "nearly identical" are never confused.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm


def _as_uint8_rows(images: np.ndarray) -> np.ndarray:
    x = np.asarray(images)
    if x.dtype != np.uint8:
        raise ValueError(f"copy check works on uint8 images, found {x.dtype}")
    return x.reshape(len(x), -1)


def candidates(queries: np.ndarray, base: np.ndarray, m: int, skip_self: bool = False, chunk: int = 2048,
               progress: bool = False, desc: str = "copy check") -> np.ndarray:
    """Indices (nq, m) of the m nearest base rows of every query row by float32 L2 (approximate order)."""
    q = queries.astype(np.float32)
    b_all = base.astype(np.float32)
    b_sq = (b_all**2).sum(1)
    out = np.empty((len(q), m), dtype=np.int64)
    for s in tqdm(range(0, len(q), chunk), desc=desc, unit="chunk", disable=not progress):
        qq = q[s : s + chunk]
        d2 = b_sq[None] - 2.0 * qq @ b_all.T  # + |q|^2, constant per row
        if skip_self:
            d2[np.arange(len(qq)), np.arange(s, s + len(qq))] = np.inf
        out[s : s + len(qq)] = np.argpartition(d2, m - 1, axis=1)[:, :m]
    return out


def exact_d2(queries: np.ndarray, base: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Exact squared distances (int64) of each query row to the base rows idx (nq, m)."""
    diff = queries[:, None, :].astype(np.int32) - base[idx].astype(np.int32)
    return (diff.astype(np.int64) ** 2).sum(-1)


def nearest_distinct_pair(train: np.ndarray, m: int = 16, progress: bool = True) -> float:
    """L2 distance (pixels in [0, 1]) of the closest pair of training images that are not identical."""
    t = _as_uint8_rows(train)
    idx = candidates(t, t, m, skip_self=True, progress=progress, desc="nearest training pair")
    d2 = exact_d2(t, t, idx)
    d2 = np.where(d2 == 0, np.iinfo(np.int64).max, d2)
    return float(np.sqrt(d2.min())) / 255.0


def copy_rate(samples: np.ndarray, train: np.ndarray, bar: float | None = None, m: int = 8,
              progress: bool = True) -> dict[str, float]:
    """Fraction of samples closer to their nearest training image than the nearest distinct training pair."""
    s, t = _as_uint8_rows(samples), _as_uint8_rows(train)
    if bar is None:
        bar = nearest_distinct_pair(train, progress=progress)
    idx = candidates(s, t, min(m, len(t)), progress=progress)
    nn = np.sqrt(exact_d2(s, t, idx).min(1)) / 255.0
    return {
        "copy_rate": float((nn < bar).mean()),
        "nearest_train_pair": bar,
        "median_sample_to_train": float(np.median(nn)),
        "n": int(len(s)),
        "train_images": int(len(t)),
    }


def cached_nearest_distinct_pair(train: np.ndarray, key: str, progress: bool = True) -> float:
    """nearest_distinct_pair, cached as JSON under the metrics cache keyed by the images' hash
    (60k images cost minutes; the bar of a data set never changes)."""
    import json

    from rissole_runtime.fileio import write_json_atomic
    from rissole.metrics.reference import cache_dir

    path = cache_dir().parent / "copies" / f"{key}.json"
    try:
        return float(json.loads(path.read_text())["nearest_train_pair"])
    except (OSError, ValueError, KeyError):
        bar = nearest_distinct_pair(train, progress=progress)
        write_json_atomic(path, {"nearest_train_pair": bar, "images": int(len(train))})
        return bar
