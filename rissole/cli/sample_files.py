"""What `rissole sample` writes for every head: the grid, the raw uint8 array, and the retrieval grid."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from rissole_runtime.fileio import atomic_path
from rissole_runtime.images import save_grid


def write_sample_files(args: argparse.Namespace, pipe: Any, out: np.ndarray, ids: np.ndarray | None,
                       rows: np.ndarray | None, query_images: np.ndarray | None) -> None:
    """args.out: the samples as a square PNG grid; args.npy: the same uint8 (n, C, H, W) array;
    args.show_retrieval: one line per sample (up to 8) of query | its k retrieved rows | the sample.
    The query is the pseudo-query row (`rows`) or the user's image (`query_images`, cycled)."""
    save_grid(out, args.out, nrow=int(np.ceil(np.sqrt(len(out)))))
    if args.npy:
        with atomic_path(args.npy) as tmp, open(tmp, "wb") as f:
            np.save(f, out)
    if args.show_retrieval and ids is not None:
        shown = min(len(out), 8)
        nbrs = pipe.rows_as_images(ids[:shown])  # (r, k, C, H, W)
        if rows is not None:
            query = pipe.rows_as_images(rows[:shown])
        else:
            query = query_images[np.arange(shown) % len(query_images)]
        blank = np.full_like(query, 255)
        grid = np.concatenate([query[:, None], blank[:, None], nbrs, blank[:, None], out[:shown, None]], axis=1)
        save_grid(grid.reshape(-1, *grid.shape[2:]), args.show_retrieval, nrow=grid.shape[1])
