"""Building a block database from `rissole encode` latents (the reader, numpy only, is the runtime's:
rissole_runtime.retrieval.database, re-exported here)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from einops import rearrange
from tqdm import tqdm

from rissole_runtime.errors import DataError
from rissole_runtime.fileio import DATABASE, atomic_dir, create_memmap, sha256_file, write_json_atomic
from rissole_runtime.retrieval.blocks import check_grid
from rissole_runtime.retrieval.database import (  # noqa: F401 - re-exported: the reader lives in the runtime
    BLOCKS_FILE, DTYPES, FORMAT, FORMAT_VERSION, LABELS_FILE, MANIFEST_FILE, BlockDatabase, check_manifest,
    gather_neighbours, open_database)
from rissole_runtime.validate import check_finite


def build_database(
    latents_path: str | os.PathLike,
    out: str | os.PathLike,
    grid: int,
    dtype: str = "float32",
    chunk_rows: int = 8192,
    overwrite: bool = False,
    progress: bool = True,
) -> BlockDatabase:
    """Cut every latent of a `rissole encode` file into blocks and write the database atomically.

    Only a block database is replaced at `out`, and only with `overwrite` (--force); latents holding nan or
    inf are refused (they would sample black images)."""
    from rissole.latents import open_latents  # the runtime opens databases without this (torch) import

    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, found {dtype!r}")
    out = Path(out)
    lat = open_latents(latents_path)
    n, c, h, w = lat.array.shape
    check_grid(h, w, grid)
    b, bh, bw = grid * grid, h // grid, w // grid
    dim = c * bh * bw
    with atomic_dir(out, DATABASE, force=overwrite) as tmp:
        arr = create_memmap(tmp / BLOCKS_FILE, dtype, (b, n, dim), "the block database", out / BLOCKS_FILE)
        for start in tqdm(range(0, n, chunk_rows), desc="db build", unit="chunk", disable=not progress):
            z = np.asarray(lat.array[start : start + chunk_rows], dtype=np.float32)
            check_finite(z, f"{latents_path} rows {start}..{start + len(z) - 1} (latents)")
            if dtype == "float16" and np.abs(z).max(initial=0.0) > np.finfo(np.float16).max:
                raise DataError(f"{latents_path}: latents up to {np.abs(z).max():.3g} overflow float16 (max 65504); "
                                "build with --dtype float32.")
            arr[:, start : start + z.shape[0]] = rearrange(
                z, "n c (g1 h) (g2 w) -> (g1 g2) n (c h w)", g1=grid, g2=grid
            ).astype(dtype)
        arr.flush()
        del arr
        labels = lat.labels()
        if labels is not None:
            with open(tmp / LABELS_FILE, "wb") as f:
                np.save(f, labels)
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "grid": grid,
            "num_blocks": b,
            "latent_shape": [c, h, w],
            "block_shape": [c, bh, bw],
            "dim": dim,
            "rows": n,
            "dtype": dtype,
            "file_bytes": (tmp / BLOCKS_FILE).stat().st_size,
            "sha256": sha256_file(tmp / BLOCKS_FILE),
            "checkpoint_hash": lat.checkpoint_hash,
            "latents": str(Path(latents_path).resolve()),
            "source": lat.manifest.get("source"),
            "labels": LABELS_FILE if labels is not None else None,
        }
        write_json_atomic(tmp / MANIFEST_FILE, manifest)
    return open_database(out)
