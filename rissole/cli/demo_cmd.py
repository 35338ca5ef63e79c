"""`rissole demo`: the README's main job on the shipped default checkpoints."""

from __future__ import annotations

import argparse

from rissole.paths import SHIPPED_VQGAN


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the main job on the shipped default (for now: test images through the shipped VQ-GAN, as a PNG grid)",
    )
    p.add_argument("--out", default="demo.png", help="output PNG grid")
    p.add_argument("-n", type=int, default=64, help="number of images")
    p.add_argument("--vqgan", default=str(SHIPPED_VQGAN), help="VQ-GAN checkpoint directory")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST idx files")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from rissole.autoencoder.losses import psnr
    from rissole.cli.vqgan_cmd import reconstruct, side_by_side
    from rissole.data import to_model_range
    from rissole.images import save_grid

    originals, recs = reconstruct(args.vqgan, "fmnist:test", args.n, data_dir=args.data_dir)
    save_grid(side_by_side(originals, recs), args.out, nrow=16)
    db = float(psnr(to_model_range(recs), to_model_range(originals)).mean())
    print(f"wrote {args.out}: {args.n} Fashion-MNIST test images | reconstructions through {args.vqgan} ({db:.2f} dB PSNR)")
    return 0
