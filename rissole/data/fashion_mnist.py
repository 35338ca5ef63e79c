"""Fashion-MNIST (Xiao et al., 2017) from the idx files of the Debian package `dataset-fashion-mnist`."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rissole.data.idx import read_idx
from rissole.data.transforms import pad_to
from rissole_runtime.errors import DataError

FASHION_MNIST_DIR = Path(os.environ.get("RISSOLE_FMNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
# The dataset's own class names (Xiao et al., 2017, Table 3), as English for captions and class prompts.
CAPTION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle boot")
# Caption templates in the manner of CLIP's zero-shot prompts (Radford et al., 2021, Sec. 3.1.4).
CAPTION_TEMPLATES = (
    "a photo of a {}", "a black and white photo of a {}", "a {}", "a picture of a {}", "a grey photo of a {}",
    "a small photo of a {}", "a low resolution photo of a {}", "an image of a {}",
)
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
HOW_TO_GET = (
    "Install it with `apt-get install dataset-fashion-mnist` (files under /usr/share/datasets/fashion-mnist/), "
    "or pass --data-dir pointing at a folder with the four idx files."
)


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (data_dir / name).is_file():
            return data_dir / name
    return data_dir / (stem + ".gz")


def load_fashion_mnist(
    split: str = "train", data_dir: str | os.PathLike | None = None, size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Return (images uint8 (N, 1, size, size), labels int64 (N,)); 28x28 padded with zeros to `size`."""
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST has splits {sorted(_FILES)}, not {split!r}.")
    data_dir = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR
    img_stem, lab_stem = _FILES[split]
    images = read_idx(_find(data_dir, img_stem), hint=HOW_TO_GET)
    labels = read_idx(_find(data_dir, lab_stem), hint=HOW_TO_GET)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{_find(data_dir, img_stem)}: expected images of shape (N, 28, 28), found {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise DataError(
            f"{_find(data_dir, lab_stem)}: expected {images.shape[0]} labels, found shape {labels.shape}."
        )
    return pad_to(images[:, None], size), labels.astype(np.int64)
