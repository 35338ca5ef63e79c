"""A folder of PNG/JPEG images (searched recursively) as a dataset, so users bring their own data."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rissole_runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _in_val(rel_path: str, val_fraction: float, seed: int) -> bool:
    """A file's split depends only on its relative path: stable when files are added or removed."""
    digest = hashlib.sha256(f"{seed}:{rel_path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


class ImageFolder:
    """Images under `root`, resized (shorter side) and centre-cropped to `size`, grey (1) or RGB (3) channels.

    With `with_labels`, the class is the name of the first sub-folder below `root`.
    `split` is "all", "train" or "val"; the split is a seeded hash of each file's relative path.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int = 32,
        channels: int = 3,
        split: str = "all",
        val_fraction: float = 0.05,
        seed: int = 0,
        with_labels: bool = False,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: image folder not found. Pass an existing directory of PNG/JPEG files.")
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grey) or 3 (RGB), found {channels}.")
        if split not in ("all", "train", "val"):
            raise DataError(f"split must be 'all', 'train' or 'val', found {split!r}.")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if split != "all":
            want_val = split == "val"
            files = [p for p in files if _in_val(p.relative_to(self.root).as_posix(), val_fraction, seed) == want_val]
        if not files:
            raise DataError(
                f"{self.root}: no images found for split {split!r} (looked recursively for {', '.join(IMAGE_SUFFIXES)})."
            )
        self.files = files
        self.size = size
        self.channels = channels
        self.classes: list[str] = []
        self.labels: np.ndarray | None = None
        if with_labels:
            parts = [p.relative_to(self.root).parts for p in files]
            if any(len(pp) < 2 for pp in parts):
                bad = next(self.root / Path(*pp) for pp in parts if len(pp) < 2)
                raise DataError(f"{bad}: with labels, every image must sit in a class sub-folder of {self.root}.")
            self.classes = sorted({pp[0] for pp in parts})
            index = {c: i for i, c in enumerate(self.classes)}
            self.labels = np.array([index[pp[0]] for pp in parts], dtype=np.int64)

    @classmethod
    def from_files(cls, files: list[str | os.PathLike], size: int = 32, channels: int = 3) -> "ImageFolder":
        """A set of named image files (e.g. a user's query images), read like a folder's."""
        missing = [str(f) for f in files if not Path(f).is_file()]
        if missing or not files:
            raise DataError(f"image files not found: {', '.join(missing) or '(none given)'}. Pass existing PNG/JPEG files.")
        self = cls.__new__(cls)
        self.root, self.files, self.size, self.channels = Path("."), [Path(f) for f in files], size, channels
        self.classes, self.labels = [], None
        return self

    @property
    def images(self) -> np.ndarray:
        return self.to_array()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        """Image i as uint8 (C, size, size)."""
        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("L" if self.channels == 1 else "RGB")
                w, h = im.size
                scale = self.size / min(w, h)
                nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
                im = im.resize((nw, nh), Image.Resampling.BICUBIC)
                left, top = (nw - self.size) // 2, (nh - self.size) // 2
                im = im.crop((left, top, left + self.size, top + self.size))
                arr = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"{path}: cannot read image ({exc}). Remove or replace the file.") from exc
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def to_array(self) -> np.ndarray:
        """All images as one uint8 array (N, C, size, size)."""
        out = np.empty((len(self), self.channels, self.size, self.size), dtype=np.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out
