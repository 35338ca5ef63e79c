"""Data source specs: one string names a set of images everywhere on the command line.

    fmnist:train | fmnist:test              Fashion-MNIST, padded to 32 x 32
    folder:PATH[:all|train|val|test]        an image folder (resized, centre-cropped; split by its
                                            train/ val/ test/ sub-folders where present, else a hash)
    npy:PATH                                a uint8 array (N, C, H, W) or (N, H, W) in a .npy file
    SPEC+SPEC                               several sources, concatenated in that order (e.g. stickers
                                            and Fashion-MNIST as RGB: folder:runs/stickers32:train+fmnist:train)

Grey sources asked for 3 channels are copied into R, G and B.
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
    records: list[dict] | None = None  # per image: its metadata.jsonl record (folder sources that have one)

    @property
    def captions(self) -> list[str] | None:
        return None if self.records is None else [str(r.get("text", "")) for r in self.records]

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
        if head and tail in ("all", "train", "val", "test"):
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
    if "+" in spec and not spec.startswith("npy:"):
        parts = [load_source(p, data_dir, size, channels) for p in spec.split("+")]
        images = np.concatenate([p.images for p in parts])
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])
        records = None if all(p.records is None for p in parts) else [
            r for p in parts for r in (p.records or [{} for _ in range(len(p.images))])]
        if limit is not None:
            images, labels = images[:limit], None if labels is None else labels[:limit]
            records = None if records is None else records[:limit]
        return ImageSet(np.ascontiguousarray(images), labels, spec, records)
    kind, path, split = parse_source(spec)
    labels: np.ndarray | None
    records = None
    if kind == "fmnist":
        images, labels = load_fashion_mnist(split, data_dir=data_dir, size=size)
    elif kind == "folder":
        folder = ImageFolder(path, size=size, channels=channels, split=split)
        if limit is not None:
            folder.files = folder.files[:limit]
            folder.records = None if folder.records is None else folder.records[:limit]
        images, labels, records = folder.to_array(), None, folder.records
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
    if channels == 3 and images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return ImageSet(np.ascontiguousarray(images), labels, spec, records)


def source_channels(spec: str, data_dir: str | os.PathLike | None = None, probe: int = 256) -> int:
    """The channel count of the images a spec names: 1 (grey) or 3 (colour), read from the data.

    Fashion-MNIST is grey; an .npy says so in its shape; a folder is colour when any of up to `probe`
    files spread over it has a pixel whose R, G and B differ (a grey PNG saved as RGB stays grey);
    sources joined with + are colour when any part is.
    """
    if "+" in spec and not spec.startswith("npy:"):
        return max(source_channels(p, data_dir, probe) for p in spec.split("+"))
    kind, path, split = parse_source(spec)
    if kind == "fmnist":
        return 1
    if kind == "npy":
        return int(load_source(spec, data_dir=data_dir, limit=1).images.shape[1])
    folder = ImageFolder(path, channels=3, split=split)
    for i in np.unique(np.linspace(0, len(folder) - 1, min(probe, len(folder))).round().astype(int)):
        rgb = folder[int(i)].astype(np.int16)
        if (rgb[0] != rgb[1]).any() or (rgb[1] != rgb[2]).any():
            return 3
    return 1
