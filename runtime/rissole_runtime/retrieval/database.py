"""The block database: every latent of a data set cut into g x g blocks, memory-mapped.

On disk a database is a directory:

    manifest.json   format, version, grid, latent/block shapes, dtype, rows, file size,
                    sha256 of blocks.npy, the VQ-GAN checkpoint hash, the source latents manifest
    blocks.npy      (b, N, d_block) float32 or float16, standard .npy
    labels.npy      optional (N,) int64 class labels carried over from the latents
    indexes/        searchers saved by `rissole db neighbours` (one folder each)
    neighbours/     neighbour tables (see rissole.retrieval.neighbours)

The (b, N, d) layout keeps the rows of one block position contiguous: the block-0 keys are
one slab, and "every block of every image" is a plain reshape. Opening maps blocks.npy
read-only and reads nothing but its header, so a database larger than RAM opens on an 8 GB
device; the full checksum is only recomputed by `verify`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from rissole_runtime.errors import DataError
from rissole_runtime.fileio import sha256_file

FORMAT = "rissole-block-db"
FORMAT_VERSION = 1
BLOCKS_FILE = "blocks.npy"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.npy"
DTYPES = ("float32", "float16")


@dataclass
class BlockDatabase:
    """A read-only memory-mapped block database and its manifest."""

    path: Path
    manifest: dict[str, Any]
    array: np.ndarray  # read-only memmap (b, N, d)

    @property
    def grid(self) -> int:
        return int(self.manifest["grid"])

    @property
    def num_blocks(self) -> int:
        return int(self.manifest["num_blocks"])

    @property
    def rows(self) -> int:
        return int(self.manifest["rows"])

    @property
    def block_shape(self) -> tuple[int, int, int]:
        c, h, w = self.manifest["block_shape"]
        return int(c), int(h), int(w)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c, h, w = self.manifest["latent_shape"]
        return int(c), int(h), int(w)

    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def checkpoint_hash(self) -> str:
        return str(self.manifest["checkpoint_hash"])

    def __len__(self) -> int:
        return self.rows

    def dtype_name(self) -> str:
        return str(self.manifest["dtype"])

    def blocks(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """float32 (len(ids), b, c, h/g, w/g): all blocks of the given rows, read from the memmap."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(f"row ids must lie in [0, {self.rows}), found {ids.min()}..{ids.max()}")
        rows = np.take(self.array, ids.ravel(), axis=1).astype(np.float32, copy=False)  # (b, n, d)
        c, h, w = self.block_shape
        out = rows.transpose(1, 0, 2)  # (n, b, d)
        return np.ascontiguousarray(out).reshape(*ids.shape, self.num_blocks, c, h, w)

    def vectors(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """float32 ids.shape + (d,): rows of a one-block database as flat vectors (an embedding database),
        read from the memmap. Numpy only, so the edge runtime gathers RDM conditioning this way too."""
        ids = np.asarray(ids, dtype=np.int64)
        if self.num_blocks != 1:
            raise DataError(f"{self.path}: vectors() reads one-block (embedding) databases, this one has "
                            f"{self.num_blocks} blocks per row.")
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(f"{self.path}: row ids must lie in [0, {self.rows}), found {ids.min()}..{ids.max()}")
        return np.take(self.array[0], ids.ravel(), axis=0).astype(np.float32).reshape(*ids.shape, self.dim)

    def labels(self) -> np.ndarray | None:
        name = self.manifest.get("labels")
        return np.load(self.path / name) if name else None

    def check_vqgan(self, checkpoint_hash: str, what: str = "the model") -> None:
        """Refuse a database built from another VQ-GAN than the one `what` works in."""
        if checkpoint_hash != self.checkpoint_hash:
            raise DataError(
                f"{self.path}: this database was built from VQ-GAN {self.checkpoint_hash[:12]}, but {what} uses "
                f"{checkpoint_hash[:12]}. Rebuild it with `rissole db build` from latents of that VQ-GAN."
            )

    def verify(self, progress: bool = True) -> None:
        """Recompute the full SHA-256 of blocks.npy and compare it with the manifest."""
        found = sha256_file(self.path / BLOCKS_FILE, progress=progress)
        if found != self.manifest["sha256"]:
            raise DataError(
                f"{self.path / BLOCKS_FILE}: checksum mismatch (manifest {self.manifest['sha256'][:16]}, "
                f"file {found[:16]}); the file is corrupt. Rebuild with `rissole db build`."
            )


def gather_neighbours(db: BlockDatabase, neighbour_ids: np.ndarray, k: int) -> np.ndarray:
    """float32 (n, b, k, c, s, s): for each sample, block i of each of its first k neighbours, at position i.

    Lives here (numpy only) so the PyTorch sampler and the edge runtime gather in one way."""
    ids = np.asarray(neighbour_ids)[:, :k]
    blocks = db.blocks(ids)  # (n, k, b, c, s, s)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3, 4, 5))


def open_database(path: str | os.PathLike) -> BlockDatabase:
    """Map a database read-only after checking its manifest against the file size (reads no rows)."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise DataError(f"{path}: not a block database (no {MANIFEST_FILE}). Build one with `rissole db build`.")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{mpath}: corrupt manifest ({exc}). Rebuild with `rissole db build`.") from exc
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{mpath}: expected {FORMAT} v{FORMAT_VERSION}, found {manifest.get('format')} v{manifest.get('format_version')}."
        )
    bpath = path / BLOCKS_FILE
    if not bpath.is_file():
        raise DataError(f"{bpath}: missing. Rebuild the database with `rissole db build`.")
    size = bpath.stat().st_size
    if size != manifest["file_bytes"]:
        raise DataError(
            f"{bpath}: {size} bytes on disk, the manifest expects {manifest['file_bytes']}; the file is truncated "
            "or does not belong to this manifest. Rebuild with `rissole db build`."
        )
    try:
        array = np.load(bpath, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{bpath}: cannot map ({exc}). Rebuild with `rissole db build`.") from exc
    expect = (manifest["num_blocks"], manifest["rows"], manifest["dim"])
    if tuple(array.shape) != expect or str(array.dtype) != manifest["dtype"]:
        raise DataError(
            f"{bpath}: manifest says {manifest['dtype']} {list(expect)}, file holds {array.dtype} {list(array.shape)}. "
            "Rebuild with `rissole db build`."
        )
    return BlockDatabase(path, manifest, array)
