"""Image data: Fashion-MNIST from idx files, image folders, and the source specs that name them.

All loaders return uint8 arrays of shape (N, C, H, W); `to_model_range` maps them to
the [-1, 1] floats the networks see.
"""

from rissole.data.idx import read_idx
from rissole.data.fashion_mnist import FASHION_MNIST_DIR, load_fashion_mnist
from rissole.data.folder import ImageFolder
from rissole.data.source import ImageSet, load_source, parse_source, source_channels
from rissole.data.transforms import from_model_range, to_model_range

__all__ = [
    "FASHION_MNIST_DIR",
    "ImageFolder",
    "ImageSet",
    "from_model_range",
    "load_fashion_mnist",
    "load_source",
    "parse_source",
    "read_idx",
    "to_model_range",
]
