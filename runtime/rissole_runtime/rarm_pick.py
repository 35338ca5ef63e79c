"""Drawing RARM's next code from log-probabilities, in numpy: the one definition shared by PyTorch
sampling (rissole.heads.rarm.sampling) and the torch-free edge runtime (rissole_runtime.token_sampler).

The random numbers come in as uniforms (one per row), so both can draw the same tokens: PyTorch from
its seeded generator, the runtime from numpy (or, in the parity tests, from the same torch stream).
"""

from __future__ import annotations

import numpy as np


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (n, V) logits, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def pick_from_uniform(logp: np.ndarray, u: np.ndarray, top_k: int = 0, temperature: float = 1.0) -> np.ndarray:
    """One index per row of log-probabilities (n, V) by inverse CDF at u (n,) in [0, 1): temperature first,
    then only the top_k largest kept (0 = all). Returns int64 (n,)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, found {temperature}")
    logits = np.asarray(logp, dtype=np.float64) / temperature
    n, vocab = logits.shape
    if 0 < top_k < vocab:
        kth = np.partition(logits, vocab - top_k, axis=-1)[:, vocab - top_k : vocab - top_k + 1]
        logits = np.where(logits < kth, -np.inf, logits)
    probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
    cdf = np.cumsum(probs, axis=-1)
    target = np.asarray(u, dtype=np.float64).reshape(n, 1) * cdf[:, -1:]
    return np.minimum((cdf < target).sum(axis=-1), vocab - 1).astype(np.int64)
