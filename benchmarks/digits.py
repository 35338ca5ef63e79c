"""scikit-learn's bundled 8 x 8 handwritten digits in Fashion-MNIST's format: an out-of-domain image set.

The database-swap benchmark needs images of a domain the models never saw that exists offline;
`sklearn.datasets.load_digits` ships 1,797 of them inside the wheel (no download). Conversion, so
they look like `fmnist:*` images (28 x 28 content zero-padded to 32 x 32, white object on black):

    8 x 8 values 0..16  ->  uint8 round(v * 255 / 16)  ->  PIL bilinear resize to 28 x 28
    ->  zero-pad 2 pixels on every side to 32 x 32 (rissole.data.transforms.pad_to)  ->  (N, 1, 32, 32)

scikit-learn is the optional extra `bench` (`pip install -e .[bench]`), needed by benchmarks only.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from rissole.data.transforms import pad_to
from rissole_runtime.errors import DataError

CONTENT = 28  # Fashion-MNIST's image size before padding
SIZE = 32
PREPROCESSING = ("sklearn.datasets.load_digits 8 x 8 values 0..16 -> uint8 round(v * 255 / 16) -> PIL bilinear resize "
                 "to 28 x 28 -> zero-pad 2 pixels on every side to 32 x 32 (as fmnist:* pads 28 -> 32)")
MISSING = "scikit-learn is not installed; the digits data set comes with it: `pip install -e .[bench]`."


def upscale_digits(images: np.ndarray, content: int = CONTENT, size: int = SIZE) -> np.ndarray:
    """(N, 8, 8) float values 0..16 -> uint8 (N, 1, size, size): bilinear to content x content, zero-padded."""
    x = np.asarray(images, dtype=np.float64)
    if x.ndim != 3:
        raise DataError(f"digits: expected (N, h, w) images, found shape {x.shape}.")
    u8 = np.clip(np.round(x * 255.0 / 16.0), 0, 255).astype(np.uint8)
    big = np.stack([np.asarray(Image.fromarray(im, mode="L").resize((content, content), Image.Resampling.BILINEAR))
                    for im in u8]) if len(u8) else np.zeros((0, content, content), np.uint8)
    return pad_to(big[:, None], size)


def load_digits_32(content: int = CONTENT, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (1797, 1, 32, 32), labels int64 (1797,)) from sklearn.datasets.load_digits."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError(MISSING) from exc
    d = load_digits()
    return upscale_digits(d.images, content, size), np.asarray(d.target, dtype=np.int64)
