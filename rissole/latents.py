"""Latent files: the VQ-GAN latents of a whole data set as a memory-mapped .npy plus a manifest.

    latents.npy    float32 (N, c, h, w), standard .npy (np.load(..., mmap_mode="r") maps it)
    latents.json   {"format": "rissole-latents", "format_version", "shape", "dtype", "count",
                    "checkpoint", "checkpoint_hash", "source", "labels": "latents.labels.npy" | null}

The manifest's checkpoint_hash ties every database built from these latents to the VQ-GAN
that made them.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tqdm import tqdm

from rissole import distributed
from rissole.data.transforms import to_model_range
from rissole_runtime.errors import DataError
from rissole_runtime.fileio import LATENTS, atomic_path, check_replace, check_sidecars, create_memmap, output_lock, write_json_atomic
from rissole_runtime.validate import INT, LIST, STR, Field, check_finite, check_schema, contained_path, read_json

FORMAT = "rissole-latents"
FORMAT_VERSION = 1
MANIFEST_SCHEMA = {
    "format": Field(STR), "format_version": Field(INT), "shape": Field(LIST, items=INT, min=1),
    "dtype": Field(STR), "checkpoint_hash": Field(STR), "labels": Field(STR, required=False, nullable=True),
    "source": Field(STR, required=False, nullable=True),
}


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
        if not name:
            return None
        labels = np.load(contained_path(self.path.parent, name, f"{manifest_path(self.path)} (labels)"))
        if labels.shape != (len(self.array),) or labels.dtype.kind not in "iu":
            raise DataError(f"{self.path.parent / name}: labels {labels.dtype} {list(labels.shape)}, expected integers "
                            f"[{len(self.array)}] (one per row). Re-run `rissole encode`.")
        return labels


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
    force: bool = False,
) -> Latents:
    """Encode uint8 images (N, C, H, W) batch by batch straight into a .npy memmap, then write the manifest.

    Only a latents file is replaced at `out_path` (and its .json beside it), and only with `force`."""
    out_path = Path(out_path)
    n = images.shape[0]
    probe = model.encode(to_model_range(images[:1]).to(device))
    shape = (n, *probe.shape[1:])
    rows = distributed.shard_rows(n, batch_size)  # under torchrun each rank encodes its own rows of the one file

    @contextlib.contextmanager
    def create() -> Iterator[tuple[np.memmap, Path]]:
        with output_lock(out_path):
            check_replace(out_path, LATENTS, force)
            check_sidecars(out_path, LATENTS, [manifest_path(out_path), out_path.with_name(out_path.stem + ".labels.npy")])
            with atomic_path(out_path, suffix=".npy") as tmp:
                yield create_memmap(tmp, np.float32, shape, "the latents", out_path), tmp
            _write_manifest(out_path, shape, n, checkpoint, checkpoint_hash, source, labels)

    with distributed.sharded_output(create()) as arr:
        for start in tqdm(range(rows.start, rows.stop, batch_size), desc="encode", unit="batch",
                          disable=not (progress and distributed.world().main)):
            x = to_model_range(images[start : min(start + batch_size, rows.stop)]).to(device)
            z = model.encode(x).float().cpu().numpy()
            check_finite(z, f"the VQ-GAN's latents of images {start}..{start + len(z) - 1}")
            arr[start : start + x.shape[0]] = z
    return open_latents(out_path)


def _write_manifest(out_path: Path, shape: tuple[int, ...], n: int, checkpoint: str, checkpoint_hash: str,
                    source: str, labels: np.ndarray | None) -> Latents:
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
                  limit: int | None = None, batch_size: int = 256, device: str = "auto", force: bool = False) -> "Latents":
    """Encode a named data source (rissole.data.load_source) with a VQ-GAN checkpoint into `out`: what
    `rissole encode` runs, and what first use runs to build a shipped model's database."""
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.device import pick_device

    dev = pick_device(distributed.rank_device(device))
    model = load_vqgan(ckpt, dev)
    dd = model.config.ddconfig
    data = load_source(source, data_dir=data_dir, size=dd["resolution"], channels=dd["in_channels"], limit=limit)
    return encode_images(model, data.images, out, checkpoint=str(ckpt), checkpoint_hash=load_checkpoint(ckpt).weights_hash(),
                         source=source, labels=data.labels, batch_size=batch_size, device=dev, force=force)


def open_latents(path: str | os.PathLike) -> Latents:
    """Map a latents .npy read-only and check it against its manifest."""
    path = Path(path)
    mpath = manifest_path(path)
    if not mpath.is_file():
        raise DataError(f"{mpath}: manifest not found beside {path}. Re-create both with `rissole encode`.")
    manifest = read_json(mpath, "Re-create it with `rissole encode`.")
    check_schema(manifest, {}, mpath)
    if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"{mpath}: expected {FORMAT} v{FORMAT_VERSION}, found {manifest.get('format')} v{manifest.get('format_version')}.")
    check_schema(manifest, MANIFEST_SCHEMA, mpath, fix="Re-run `rissole encode`.")
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
