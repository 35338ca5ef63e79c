"""`rissole encode`: all images of a source -> a memmapped latents .npy + manifest."""

from __future__ import annotations

import argparse

from rissole.paths import SHIPPED_VQGAN
from rissole_runtime import argtypes as at


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a data set into VQ-GAN latents (memmapped .npy + manifest JSON)")
    p.add_argument("--ckpt", default=str(SHIPPED_VQGAN), help="VQ-GAN checkpoint directory (default: the shipped one)")
    p.add_argument("--source", default=None,
                   help="images: fmnist:train|test, folder:PATH[:split] (16-bit scaled, transparency composited onto "
                        "white), npy:PATH (default: the data.source the VQ-GAN was trained on, as its config.yaml "
                        "records)")
    p.add_argument("--out", required=True, help="output .npy; the manifest is written beside it as .json")
    p.add_argument("--force", action="store_true", help="replace a latents file already at --out (nothing else is "
                                                        "ever replaced)")
    p.add_argument("--batch-size", type=at.positive_int, default=256, help="images per encoder call")
    p.add_argument("--limit", type=at.positive_int, default=None, help="encode only the first N images")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_encode)


def trained_source(ckpt: str) -> str:
    """The data.source a checkpoint's config records (a model carries its data spec)."""
    from rissole.checkpoint import load_checkpoint
    from rissole.errors import DataError

    source = (load_checkpoint(ckpt).config.get("data") or {}).get("source")
    if not source:
        raise DataError(f"{ckpt}/config.yaml records no data.source; pass --source (e.g. folder:PATH:train).")
    return str(source)


def _encode(args: argparse.Namespace) -> int:
    import time

    from rissole import distributed
    from rissole.latents import encode_source
    from rissole_runtime.fileio import LATENTS, check_replace

    distributed.init(args.device)  # under torchrun: each rank encodes its share of the rows into the one file
    check_replace(args.out, LATENTS, args.force)  # before the encoder runs; checked again under the output lock
    if args.source is None:
        args.source = trained_source(args.ckpt)
    t0 = time.perf_counter()
    lat = encode_source(args.ckpt, args.source, args.out, data_dir=args.data_dir, limit=args.limit,
                        batch_size=args.batch_size, device=args.device, force=args.force)
    dt = time.perf_counter() - t0
    if distributed.world().main:
        print(f"wrote {lat.path} {tuple(lat.array.shape)} float32 ({len(lat.array) / dt:.0f} images/s) and "
              f"{lat.path.with_suffix('.json')}")
    return 0
