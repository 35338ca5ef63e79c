"""`rissole encode`: all images of a source -> a memmapped latents .npy + manifest."""

from __future__ import annotations

import argparse

from rissole.paths import SHIPPED_VQGAN


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a data set into VQ-GAN latents (memmapped .npy + manifest JSON)")
    p.add_argument("--ckpt", default=str(SHIPPED_VQGAN), help="VQ-GAN checkpoint directory (default: the shipped one)")
    p.add_argument("--source", default="fmnist:train", help="images: fmnist:train|test, folder:PATH[:split], npy:PATH")
    p.add_argument("--out", required=True, help="output .npy; the manifest is written beside it as .json")
    p.add_argument("--batch-size", type=int, default=256, help="images per encoder call")
    p.add_argument("--limit", type=int, default=None, help="encode only the first N images")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=_encode)


def _encode(args: argparse.Namespace) -> int:
    import time

    from rissole.latents import encode_source

    t0 = time.perf_counter()
    lat = encode_source(args.ckpt, args.source, args.out, data_dir=args.data_dir, limit=args.limit,
                        batch_size=args.batch_size, device=args.device)
    dt = time.perf_counter() - t0
    print(f"wrote {lat.path} {tuple(lat.array.shape)} float32 ({len(lat.array) / dt:.0f} images/s) and {lat.path.with_suffix('.json')}")
    return 0
