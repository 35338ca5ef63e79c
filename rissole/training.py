"""Pieces every training loop shares: learning-rate schedule, step-indexed data order, CSV logs."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rissole.errors import ConfigError


def learning_rate(base_lr: float, step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to zero at the last step."""
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', found {schedule!r}.")
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if schedule == "constant":
        return base_lr * warm
    progress = min(1.0, step / max(1, total_steps))
    return base_lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Indices of the batch at `step`: epoch-wise seeded permutations, last partial batch dropped.

    A function of (seed, step) only, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the training set ({n} rows).")
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path: Path, last_step: int) -> None:
    """Drop log rows written after the checkpoint being resumed (they will be written again)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["step"]) <= last_step]
    if rows and len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, path)
