"""What `rissole sample` writes for every head: the grid, the raw uint8 array, and the retrieval grid; and the
one batched loop both sample paths generate through, so memory is bounded by a batch whatever -n is."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from rissole_runtime.batches import BATCH, GRID_MAX, generate_in_batches, npy_store
from rissole_runtime.fileio import NPY, write_json_atomic
from rissole_runtime.images import labelled_rows, save_grid, save_png

__all__ = ["BATCH", "GRID_MAX", "check_outputs", "npy_store", "sample_to_files", "write_sample_files"]


def sample_to_files(n: int, seed: int, npy: str | None, generate: Callable[[slice, int], np.ndarray]) -> np.ndarray:
    """generate_in_batches with the --npy file streamed; returns the samples kept for the grid."""
    with npy_store(npy, n) as store:
        return generate_in_batches(n, seed, generate, store)


def check_outputs(args: argparse.Namespace) -> None:
    """Refuse, before anything runs, outputs that would replace something other than a PNG / a .npy array."""
    from rissole_runtime.fileio import PNG, check_replace

    for path, kind in ((args.out, PNG), (args.npy, NPY), (args.show_retrieval, PNG)):
        if path:
            check_replace(path, kind)


def samples_manifest_path(npy: str | os.PathLike) -> Path:
    return Path(npy).with_suffix(".json")


def write_samples_manifest(npy: str | os.PathLike, pipe: Any, n: int, resolution: int) -> None:
    """Beside a --npy of samples: the model that drew them and its held-out data, so `rissole eval fid SAMPLES`
    compares with the model's own data by default (not Fashion-MNIST's)."""
    write_json_atomic(samples_manifest_path(npy), {
        "format": "rissole-samples", "n": int(n), "checkpoint": str(pipe.path), "resolution": int(resolution),
        "reference": pipe.reference_source()})


def write_sample_files(args: argparse.Namespace, pipe: Any, out: np.ndarray, cond: Any,
                       query_images: np.ndarray | None) -> None:
    """args.out: the samples (the first GRID_MAX) as a square PNG grid; args.show_retrieval: one line per sample
    (up to 8) of query | its k retrieved rows | the sample. (args.npy was streamed by sample_to_files.)
    The query is the pseudo-query row (cond.rows), the user's image (`query_images`, cycled) or the prompt's
    text (cond.texts, written beside the row; a slot holding the text embedding itself is left blank)."""
    save_grid(out, args.out, nrow=int(np.ceil(np.sqrt(len(out)))))
    if args.npy:
        write_samples_manifest(args.npy, pipe, args.n, out.shape[-1])
    if len(out) < args.n:
        print(f"{args.out} shows the first {len(out)} of {args.n} samples" + (f"; {args.npy} holds all" if args.npy else
                                                                             "; pass --npy to keep all"))
    if args.show_retrieval and cond.ids is not None:
        shown = min(len(out), 8)
        ids = cond.ids[:shown]
        nbrs = pipe.rows_as_images(np.where(ids < 0, 0, ids))  # (r, k, C, H, W)
        nbrs[ids < 0] = 255
        blank = np.full_like(out[:shown, None], 255)
        if cond.texts is not None:
            grid = np.concatenate([nbrs, blank, out[:shown, None]], axis=1)
            save_png(labelled_rows(grid, cond.texts[:shown]), args.show_retrieval)
            return
        query = pipe.rows_as_images(cond.rows[:shown]) if cond.rows is not None else \
            query_images[np.arange(shown) % len(query_images)]
        grid = np.concatenate([query[:, None], blank, nbrs, blank, out[:shown, None]], axis=1)
        save_grid(grid.reshape(-1, *grid.shape[2:]), args.show_retrieval, nrow=grid.shape[1])
