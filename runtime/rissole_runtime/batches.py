"""Sampling any number of images with memory bounded by one batch (numpy only): both `rissole sample` paths and
`rissole-run` generate through `generate_in_batches`."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import numpy as np

from rissole_runtime.fileio import NPY, atomic_path, create_memmap

BATCH = 256  # samples per generate call
GRID_MAX = 1024  # samples kept in memory for the PNG grid; a --npy file holds all of them


def batch_seed(seed: int, start: int, n: int, batch: int = BATCH) -> int:
    """The noise seed of the batch starting at sample `start`: `seed` itself when one batch holds all n (so small
    runs are what they always were), else `seed * 100_003 + start`, the paper-table eval's convention."""
    return seed if n <= batch else seed * 100_003 + start


def generate_in_batches(n: int, seed: int, generate: Callable[[slice, int], np.ndarray],
                        store: Callable[[slice, np.ndarray], None] | None = None, batch: int = BATCH) -> np.ndarray:
    """Call generate(samples slice, noise seed) -> uint8 (m, C, H, W) batch by batch, hand every batch to
    `store` (e.g. a memmapped .npy on disk), and keep only the first GRID_MAX samples, which are returned."""
    kept: list[np.ndarray] = []
    n_kept = 0
    for start in range(0, n, batch):
        sl = slice(start, min(start + batch, n))
        images = generate(sl, batch_seed(seed, start, n, batch))
        if store is not None:
            store(sl, images)
        if n_kept < GRID_MAX:
            kept.append(images[: GRID_MAX - n_kept])
            n_kept += len(kept[-1])
    return np.concatenate(kept)


@contextlib.contextmanager
def npy_store(path: str | None, n: int) -> Iterator[Callable[[slice, np.ndarray], None] | None]:
    """A `store` for generate_in_batches writing all n samples into the .npy `path` as they come (a memmap with its
    space reserved first, swapped in atomically when complete); None without a path."""
    if not path:
        yield None
        return
    with atomic_path(path, suffix=".npy", kind=NPY) as tmp:
        arrays: list[np.memmap] = []

        def store(sl: slice, images: np.ndarray) -> None:
            if not arrays:
                arrays.append(create_memmap(tmp, np.uint8, (n, *images.shape[1:]), "the samples (--npy)", path))
            arrays[0][sl] = images

        yield store
        if arrays:
            arrays[0].flush()
        arrays.clear()
