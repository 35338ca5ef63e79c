"""A folder of PNG/JPEG images (searched recursively) as a dataset, so users bring their own data.

Captions follow the Hugging Face image-folder convention: a `metadata.jsonl` beside the images, one
JSON object per line with `file_name` (relative to that metadata file) and any further fields
(`text`, `group`, ...). A folder with `train/` and `val/` sub-folders is split by them
(`folder:PATH:train`); otherwise the split is a seeded hash of each file's path.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from rissole_runtime.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
BACKGROUND = 255  # transparent pixels are composited onto white, as a viewer shows a sticker or an icon
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # Pillow's limit (about 89M pixels); a larger image is refused, not decoded


def to_8bit(im: Image.Image, channels: int) -> Image.Image:
    """A decoded image as 8-bit grey ("L") or RGB, without silent data loss:
    16/32-bit grey (PNG "I;16", "I") is scaled from its full range to 0..255 (Pillow's convert would clip it,
    saturating a 16-bit gradient to white); any transparency (RGBA, LA, PA, P or L/RGB with a transparent
    colour) is composited onto a white background (convert would drop alpha and keep the hidden colour)."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else float(2**32 - 1)
        im = Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(arr * 255.0 if arr.max(initial=0) <= 1.0 else arr), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        back = Image.new("RGBA", rgba.size, (BACKGROUND, BACKGROUND, BACKGROUND, 255))
        im = Image.alpha_composite(back, rgba)
    return im.convert("L" if channels == 1 else "RGB")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file; one above MAX_PIXELS (a decompression bomb, or simply too large) is refused by its
    header, before anything is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{path}: refused, too many pixels ({exc}); expected an image of at most {MAX_PIXELS:,} "
                        "pixels. Resize it first.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc}). Remove or replace the file.") from exc
    return im
METADATA = "metadata.jsonl"
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


def read_metadata(path: Path) -> dict[Path, dict]:
    """file path -> its record, from one metadata.jsonl; a malformed line is an error naming FILE:LINE."""
    out: dict[Path, dict] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: expected one JSON object per line, found invalid JSON ({exc.msg} "
                                f"at column {exc.colno}). Fix or remove that line.") from exc
            if not isinstance(rec, dict) or not isinstance(rec.get("file_name"), str):
                found = f"keys {sorted(rec)}" if isinstance(rec, dict) else type(rec).__name__
                raise DataError(f"{path}:{lineno}: expected an object with a string 'file_name', found {found}. "
                                "Fix or remove that line.")
            file = (path.parent / rec["file_name"]).resolve()
            if file in out:
                raise DataError(f"{path}:{lineno}: {rec['file_name']!r} is listed twice. Remove one of the lines.")
            out[file] = rec
    return out


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
        if split not in ("all", "train", "val", "test"):
            raise DataError(f"split must be 'all', 'train', 'val' or 'test', found {split!r}.")
        split_dir = next((self.root / d for d in SPLIT_DIRS.get(split, ()) if (self.root / d).is_dir()), None)
        if split == "test" and split_dir is None:
            raise DataError(f"{self.root}: split 'test' needs a test/ sub-folder (train and val also split by a seeded hash).")
        base = split_dir or self.root
        files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if split != "all" and split_dir is None:
            want_val = split == "val"
            files = [p for p in files if _in_val(p.relative_to(self.root).as_posix(), val_fraction, seed) == want_val]
        if not files:
            raise DataError(
                f"{self.root}: no images found for split {split!r} (looked recursively for {', '.join(IMAGE_SUFFIXES)})."
            )
        self.files = files
        self.records: list[dict] | None = None  # metadata.jsonl records, one per file, where present
        metadata: dict[Path, dict] = {}
        for m in sorted(base.rglob(METADATA)):
            metadata.update(read_metadata(m))
        if metadata:
            self.records = [metadata.get(p.resolve(), {}) for p in files]
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
        self.classes, self.labels, self.records = [], None, None
        return self

    @property
    def captions(self) -> list[str] | None:
        """Each image's `text` from metadata.jsonl ('' where its line has none); None without metadata."""
        return None if self.records is None else [str(r.get("text", "")) for r in self.records]

    @property
    def images(self) -> np.ndarray:
        return self.to_array()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> np.ndarray:
        """Image i as uint8 (C, size, size)."""
        path = self.files[i]
        with open_image(path) as im:
            im = to_8bit(im, self.channels)
            w, h = im.size
            scale = self.size / min(w, h)
            nw, nh = max(self.size, round(w * scale)), max(self.size, round(h * scale))
            im = im.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - self.size) // 2, (nh - self.size) // 2
            im = im.crop((left, top, left + self.size, top + self.size))
            arr = np.asarray(im, dtype=np.uint8)
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    def to_array(self) -> np.ndarray:
        """All images as one uint8 array (N, C, size, size)."""
        out = np.empty((len(self), self.channels, self.size, self.size), dtype=np.uint8)
        for i in range(len(self)):
            out[i] = self[i]
        return out
