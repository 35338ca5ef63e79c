"""The block database: every latent of a data set cut into g x g blocks, memory-mapped.

On disk a database is a directory:

    manifest.json   format, version, grid, latent/block shapes, dtype, rows, file size,
                    sha256 of blocks.npy, the VQ-GAN checkpoint hash, the source latents manifest
    blocks.npy      (b, N, d_block) float32 or float16, standard .npy
    labels.npy      optional (N,) int64 class labels carried over from the latents
    indexes/        searchers saved by `rissole db neighbours` (one folder each)
    neighbours/     neighbour tables (see rissole_runtime.retrieval.tables)

The (b, N, d) layout keeps the rows of one block position contiguous: the block-0 keys are
one slab, and "every block of every image" is a plain reshape. Opening maps blocks.npy
read-only and reads nothing but its header, so a database larger than RAM opens on an 8 GB
device; the full checksum is only recomputed by `verify`.

Opened with positional_reads=True (the edge runtime does), rows are gathered (`blocks`, `vectors`)
by positional reads (os.preadv) of exactly the bytes of the rows asked for, not through the map:
a fault on a mapped file that is already in the page cache maps the neighbouring cached pages
into the process too (fault-around), so gathering a few hundred rows from a warm cache added
hundreds of MB to the resident set; a read leaves them in the cache, outside the process. The map
is faster per row (no system call per row), so training and the desktop keep it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from rissole_runtime.errors import DataError
from rissole_runtime.fileio import sha256_file
from rissole_runtime.validate import INT, LIST, STR, Field, check_finite, check_schema, contained_path, read_json

FORMAT = "rissole-block-db"
FORMAT_VERSION = 1
BLOCKS_FILE = "blocks.npy"
MANIFEST_FILE = "manifest.json"
LABELS_FILE = "labels.npy"
DTYPES = ("float32", "float16")
_SHAPE = Field(LIST, length=3, items=INT, min=1)
MANIFEST_SCHEMA = {
    "grid": Field(INT, min=1), "num_blocks": Field(INT, min=1), "latent_shape": _SHAPE, "block_shape": _SHAPE,
    "dim": Field(INT, min=1), "rows": Field(INT, min=1), "dtype": Field(STR), "file_bytes": Field(INT, min=0),
    "sha256": Field(STR), "checkpoint_hash": Field(STR), "labels": Field(STR, required=False, nullable=True),
}
FIX = "Rebuild it with `rissole db build`."
_HEX64 = frozenset("0123456789abcdef")


def check_manifest(mpath: Path, m: dict[str, Any]) -> None:
    """Keys and types (MANIFEST_SCHEMA), then internal consistency: the grid tiles the latent into num_blocks
    blocks of block_shape, dim is a block's size, the dtype is one rissole writes, both hashes are SHA-256."""
    check_schema(m, MANIFEST_SCHEMA, mpath, fix=FIX)
    g, (c, h, w), (bc, bh, bw) = m["grid"], m["latent_shape"], m["block_shape"]
    problems = []
    if m["num_blocks"] != g * g:
        problems.append(f"num_blocks is {m['num_blocks']}, expected grid * grid = {g * g}")
    if [bc, bh * g, bw * g] != [c, h, w]:
        problems.append(f"block_shape {[bc, bh, bw]} x grid {g} does not tile latent_shape {[c, h, w]}")
    if m["dim"] != bc * bh * bw:
        problems.append(f"dim is {m['dim']}, expected c*h*w of block_shape = {bc * bh * bw}")
    if m["dtype"] not in DTYPES:
        problems.append(f"dtype is {m['dtype']!r}, expected one of {list(DTYPES)}")
    for key in ("sha256", "checkpoint_hash"):
        if len(m[key]) != 64 or not set(m[key]) <= _HEX64:
            problems.append(f"{key} is {m[key][:20]!r}, expected 64 lowercase hex digits (a SHA-256)")
    if problems:
        raise DataError(f"{mpath}: inconsistent manifest: {'; '.join(problems)}. {FIX}")


@dataclass
class BlockDatabase:
    """A read-only memory-mapped block database and its manifest."""

    path: Path
    manifest: dict[str, Any]
    array: np.ndarray  # read-only memmap (b, N, d): for slabs (keys, training chunks); rows are read with pread
    positional_reads: bool = False  # gather rows with os.preadv instead of through the map (flat RSS)
    _fd: int | None = field(default=None, repr=False, compare=False)

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

    def read_rows(self, ids: np.ndarray, positions: Iterable[int] | None = None) -> np.ndarray:
        """(len(positions), len(ids), d) in the file's dtype: the rows `ids` (flat int64) of the given block
        positions (default all), each one positional read of its d values; nothing stays mapped."""
        b, n, d = self.array.shape
        positions = range(b) if positions is None else list(positions)
        out = np.empty((len(positions), len(ids), d), dtype=self.array.dtype)
        if self._fd is None:
            self._fd = os.open(self.path / BLOCKS_FILE, os.O_RDONLY)
        row_bytes = d * self.array.dtype.itemsize
        base = int(self.array.offset)
        for i, blk in enumerate(positions):
            for j, r in enumerate(ids.tolist()):
                got = os.preadv(self._fd, [memoryview(out[i, j]).cast("B")], base + (blk * n + r) * row_bytes)
                if got != row_bytes:
                    raise DataError(f"{self.path / BLOCKS_FILE}: short read of row {r} ({got} of {row_bytes} bytes); "
                                    "the file changed since it was opened. Re-open or rebuild the database.")
        return out

    def blocks(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """float32 (len(ids), b, c, h/g, w/g): all blocks of the given rows (through the map, or by
        positional reads when the database was opened with positional_reads)."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.rows):
            raise IndexError(f"row ids must lie in [0, {self.rows}), found {ids.min()}..{ids.max()}")
        flat = ids.ravel()
        rows = self.read_rows(flat) if self.positional_reads else np.take(self.array, flat, axis=1)
        rows = rows.astype(np.float32, copy=False)  # (b, n, d)
        c, h, w = self.block_shape
        out = rows.transpose(1, 0, 2)  # (n, b, d): d is (c h w) in C order
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
        flat = ids.ravel()
        rows = self.read_rows(flat, [0])[0] if self.positional_reads else np.take(self.array[0], flat, axis=0)
        return rows.astype(np.float32).reshape(*ids.shape, self.dim)

    def vector_chunks(self, chunk_rows: int = 16384) -> Iterator[tuple[int, np.ndarray, None]]:
        """(start, float32 (m, d) rows, None) of a one-block database in row order, for exact search
        (rissole_runtime.retrieval.search.exact_search): one read per chunk, by a positional read of the
        contiguous slab when the database was opened with positional_reads, else from the map."""
        if self.num_blocks != 1:
            raise DataError(f"{self.path}: only one-block (embedding) databases are searched whole, this one has "
                            f"{self.num_blocks} blocks per row.")
        for start in range(0, self.rows, chunk_rows):
            stop = min(start + chunk_rows, self.rows)
            if self.positional_reads:
                rows = self._read_slab(start, stop)
            else:
                rows = np.asarray(self.array[0, start:stop])
            yield start, rows.astype(np.float32, copy=False), None

    def _read_slab(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop of block 0 by one positional read (nothing stays mapped)."""
        d = self.array.shape[2]
        out = np.empty((stop - start, d), dtype=self.array.dtype)
        if self._fd is None:
            self._fd = os.open(self.path / BLOCKS_FILE, os.O_RDONLY)
        want = out.nbytes
        got = os.preadv(self._fd, [memoryview(out).cast("B")], int(self.array.offset) + start * d * out.itemsize)
        if got != want:
            raise DataError(f"{self.path / BLOCKS_FILE}: short read of rows {start}..{stop} ({got} of {want} bytes); "
                            "the file changed since it was opened. Re-open or rebuild the database.")
        return out

    def labels(self) -> np.ndarray | None:
        name = self.manifest.get("labels")
        if not name:
            return None
        labels = np.load(contained_path(self.path, name, f"{self.path / MANIFEST_FILE} (labels)"))
        if labels.shape != (self.rows,) or labels.dtype.kind not in "iu":
            raise DataError(f"{self.path / name}: labels {labels.dtype} {list(labels.shape)}, expected integers "
                            f"[{self.rows}] (one per row). {FIX}")
        return labels

    def check_vqgan(self, checkpoint_hash: str, what: str = "the model") -> None:
        """Refuse a database built from another VQ-GAN than the one `what` works in."""
        if checkpoint_hash != self.checkpoint_hash:
            raise DataError(
                f"{self.path}: this database was built from VQ-GAN {self.checkpoint_hash[:12]}, but {what} uses "
                f"{checkpoint_hash[:12]}. Rebuild it with `rissole db build` from latents of that VQ-GAN."
            )

    def verify(self, progress: bool = True, chunk_rows: int = 8192) -> None:
        """Recompute the full SHA-256 of blocks.npy and compare it with the manifest, then refuse non-finite blocks
        (a database written by another tool, or before `db build` refused them)."""
        found = sha256_file(self.path / BLOCKS_FILE, progress=progress)
        if found != self.manifest["sha256"]:
            raise DataError(
                f"{self.path / BLOCKS_FILE}: checksum mismatch (manifest {self.manifest['sha256'][:16]}, "
                f"file {found[:16]}); the file is corrupt. Rebuild with `rissole db build`."
            )
        for start in range(0, self.rows, chunk_rows):
            check_finite(self.array[:, start: start + chunk_rows], f"{self.path / BLOCKS_FILE} rows {start}..")


def gather_neighbours(db: BlockDatabase, neighbour_ids: np.ndarray, k: int) -> np.ndarray:
    """float32 (n, b, k, c, s, s): for each sample, block i of each of its first k neighbours, at position i.

    Lives here (numpy only) so the PyTorch sampler and the edge runtime gather in one way."""
    ids = np.asarray(neighbour_ids)[:, :k]
    blocks = db.blocks(ids)  # (n, k, b, c, s, s)
    return np.ascontiguousarray(blocks.transpose(0, 2, 1, 3, 4, 5))


def open_database(path: str | os.PathLike, positional_reads: bool = False) -> BlockDatabase:
    """Map a database read-only after checking its manifest against the file size (reads no rows);
    positional_reads: gather rows with os.preadv, not through the map (the edge runtime's flat memory)."""
    path = Path(path)
    mpath = path / MANIFEST_FILE
    if not mpath.is_file():
        raise DataError(f"{path}: not a block database (no {MANIFEST_FILE}). Build one with `rissole db build`.")
    manifest = read_json(mpath, "Rebuild with `rissole db build`.")
    check_schema(manifest, {}, mpath, fix=FIX)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{mpath}: expected {FORMAT} v{FORMAT_VERSION}, found {manifest.get('format')} v{manifest.get('format_version')}."
        )
    check_manifest(mpath, manifest)
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
    return BlockDatabase(path, manifest, array, positional_reads)
