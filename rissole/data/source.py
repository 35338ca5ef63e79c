"""Data source specs: one string names a set of images everywhere on the command line.

    fmnist:train | fmnist:test              Fashion-MNIST, padded to 32 x 32
    folder:PATH[:all|train|val]             an image folder (resized, centre-cropped)
    npy:PATH                                a uint8 array (N, C, H, W) or (N, H, W) in a .npy file
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rissole.data.fashion_mnist import load_fashion_mnist
from rissole.data.folder import ImageFolder
from rissole_runtime.errors import DataError


@dataclass
class ImageSet:
    """Images as uint8 (N, C, H, W), optional labels, and the spec they came from."""

    images: np.ndarray
    labels: np.ndarray | None
    spec: str

    def content_hash(self) -> str:
        """SHA-256 of the pixels and shape: keys caches (e.g. FID reference statistics)."""
        h = hashlib.sha256(str(self.images.shape).encode())
        h.update(np.ascontiguousarray(self.images).data)
        return h.hexdigest()


def parse_source(spec: str) -> tuple[str, str, str]:
    """Split a spec into (kind, path, split)."""
    kind, _, rest = spec.partition(":")
    if kind == "fmnist":
        if rest not in ("train", "test"):
            raise DataError(f"source {spec!r}: Fashion-MNIST splits are 'train' and 'test' (e.g. fmnist:test).")
        return kind, "", rest
    if kind == "folder":
        path, split = rest, "all"
        head, _, tail = rest.rpartition(":")
        if head and tail in ("all", "train", "val"):
            path, split = head, tail
        return kind, path, split
    if kind == "npy":
        return kind, rest, "all"
    raise DataError(f"source {spec!r}: expected fmnist:SPLIT, folder:PATH[:SPLIT] or npy:PATH.")


def load_source(
    spec: str,
    data_dir: str | os.PathLike | None = None,
    size: int = 32,
    channels: int = 1,
    limit: int | None = None,
) -> ImageSet:
    """Load the images a spec names (the first `limit` of them, if given)."""
    kind, path, split = parse_source(spec)
    labels: np.ndarray | None
    if kind == "fmnist":
        images, labels = load_fashion_mnist(split, data_dir=data_dir, size=size)
    elif kind == "folder":
        folder = ImageFolder(path, size=size, channels=channels, split=split)
        if limit is not None:
            folder.files = folder.files[:limit]
        images, labels = folder.to_array(), None
    else:
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: .npy file not found.")
        images = np.load(p, mmap_mode="r")
        if images.ndim == 3:
            images = images[:, None]
        if images.dtype != np.uint8 or images.ndim != 4:
            raise DataError(
                f"{p}: expected uint8 images (N, C, H, W) or (N, H, W), found {images.dtype} {images.shape}."
            )
        labels = None
    if limit is not None:
        images = images[:limit]
        labels = labels[:limit] if labels is not None else None
    return ImageSet(np.ascontiguousarray(images), labels, spec)
