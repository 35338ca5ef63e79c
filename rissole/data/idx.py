"""Reader for the idx format of (Fashion-)MNIST, plain or gzip-compressed."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from rissole_runtime.errors import DataError

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike, hint: str = "") -> np.ndarray:
    """Read an idx file into an array, checking the magic number and the payload size.

    `hint` is appended to error messages (how to get the file).
    """
    path = Path(path)
    suffix = f" {hint}" if hint else ""
    if not path.is_file():
        raise DataError(f"{path}: file not found.{suffix}")
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot decompress ({exc}); the file is truncated or corrupt.{suffix}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path}: not an idx file (expected magic 0x0000TTDD, found {raw[:4].hex() or 'empty file'}).{suffix}"
        )
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: header truncated ({len(raw)} bytes, expected at least {header}).{suffix}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(
            f"{path}: size mismatch for shape {shape}: expected {expected} bytes, found {len(raw)}; "
            f"the file is truncated or corrupt.{suffix}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
