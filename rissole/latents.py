"""Latent files: the VQ-GAN latents of a whole data set as a memory-mapped .npy plus a manifest.

    latents.npy    float32 (N, c, h, w), standard .npy (np.load(..., mmap_mode="r") maps it)
    latents.json   {"format": "rissole-latents", "format_version", "shape", "dtype", "count",
                    "checkpoint", "checkpoint_hash", "source", "labels": "latents.labels.npy" | null}

The manifest's checkpoint_hash ties every database built from these latents to the VQ-GAN
that made them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from rissole.data.transforms import to_model_range
from rissole_runtime.errors import DataError
from rissole_runtime.fileio import atomic_path, write_json_atomic

FORMAT = "rissole-latents"
FORMAT_VERSION = 1


@dataclass
class Latents:
    """Memory-mapped latents and their manifest."""

    array: np.ndarray  # read-only memmap (N, c, h, w)
    manifest: dict[str, Any]
    path: Path

    @property
    def checkpoint_hash(self) -> str:
        return str(self.manifest["checkpoint_hash"])

    def labels(self) -> np.ndarray | None:
        name = self.manifest.get("labels")
        return np.load(self.path.parent / name) if name else None


def manifest_path(npy_path: Path) -> Path:
    return npy_path.with_suffix(".json")


@torch.no_grad()
def encode_images(
    model: torch.nn.Module,
    images: np.ndarray,
    out_path: str | os.PathLike,
    checkpoint: str,
    checkpoint_hash: str,
    source: str,
    labels: np.ndarray | None = None,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> Latents:
    """Encode uint8 images (N, C, H, W) batch by batch straight into a .npy memmap, then write the manifest."""
    out_path = Path(out_path)
    n = images.shape[0]
    probe = model.encode(to_model_range(images[:1]).to(device))
    shape = (n, *probe.shape[1:])
    with atomic_path(out_path, suffix=".npy") as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)
        for start in tqdm(range(0, n, batch_size), desc="encode", unit="batch", disable=not progress):
            x = to_model_range(images[start : start + batch_size]).to(device)
            arr[start : start + x.shape[0]] = model.encode(x).float().cpu().numpy()
        arr.flush()
        del arr
    labels_name = None
    if labels is not None:
        labels_name = out_path.stem + ".labels.npy"
        with atomic_path(out_path.parent / labels_name) as tmp, open(tmp, "wb") as f:
            np.save(f, np.asarray(labels, dtype=np.int64))  # a file object: np.save would append .npy to a path
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "shape": list(shape),
        "dtype": "float32",
        "count": n,
        "checkpoint": str(checkpoint),
        "checkpoint_hash": checkpoint_hash,
        "source": source,
        "labels": labels_name,
    }
    write_json_atomic(manifest_path(out_path), manifest)
    return open_latents(out_path)


def encode_source(ckpt: str | os.PathLike, source: str, out: str | os.PathLike, data_dir: str | None = None,
                  limit: int | None = None, batch_size: int = 256, device: str = "auto") -> "Latents":
    """Encode a named data source (rissole.data.load_source) with a VQ-GAN checkpoint into `out`: what
    `rissole encode` runs, and what first use runs to build a shipped model's database."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.device import pick_device

    dev = pick_device(device)
    model = load_vqgan(ckpt, dev)
    dd = model.config.ddconfig
    data = load_source(source, data_dir=data_dir, size=dd["resolution"], channels=dd["in_channels"], limit=limit)
    return encode_images(model, data.images, out, checkpoint=str(ckpt), checkpoint_hash=load_checkpoint(ckpt).weights_hash(),
                         source=source, labels=data.labels, batch_size=batch_size, device=dev)


def open_latents(path: str | os.PathLike) -> Latents:
    """Map a latents .npy read-only and check it against its manifest."""
    path = Path(path)
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise DataError(f"{mpath}: manifest not found beside {path}. Re-create both with `rissole encode`.")
    manifest = json.loads(mpath.read_text())
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{mpath}: expected {FORMAT} v{FORMAT_VERSION}, found {manifest.get('format')} v{manifest.get('format_version')}.")
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot map latents ({exc}); the file is truncated or corrupt. Re-run `rissole encode`.") from exc
    if list(arr.shape) != manifest["shape"] or str(arr.dtype) != manifest["dtype"]:
        raise DataError(
            f"{path}: manifest says {manifest['dtype']} {manifest['shape']}, file holds {arr.dtype} {list(arr.shape)}. "
            "Re-run `rissole encode`."
        )
    return Latents(arr, manifest, path)
