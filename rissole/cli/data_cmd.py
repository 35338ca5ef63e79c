"""`rissole data`: write captioned datasets as Hugging Face image folders (images + metadata.jsonl)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="write captioned datasets (stickers, Fashion-MNIST) as image folders with metadata.jsonl")
    dsub = p.add_subparsers(dest="data_command", metavar="DATASET", required=True)
    s = dsub.add_parser("stickers", help="emoji (Noto Color Emoji) and Tux Paint stamps, flattened on white, RGB, "
                                          "with captions and groups; train/ and val/ folders")
    s.add_argument("--out", required=True, help="new (or empty) directory to write; an existing non-empty one is refused")
    s.add_argument("--size", type=int, choices=(32, 64), default=32, help="image side in pixels (aspect kept, white padding)")
    s.add_argument("--seed", type=int, default=0, help="seed of the train/val split (a hash of each image's name)")
    s.add_argument("--val-fraction", type=float, default=0.1, help="share of images in val/")
    s.add_argument("--sources", default="emoji,tuxpaint", help="comma-separated: emoji, tuxpaint")
    s.add_argument("--limit", type=int, default=None, help="only a seeded subset of this many images (quick looks, tests)")
    s.set_defaults(func=_stickers)
    f = dsub.add_parser("fmnist", help="Fashion-MNIST captioned by class name ('a photo of a {class}'); train/ and test/")
    f.add_argument("--out", required=True, help="new (or empty) directory to write; an existing non-empty one is refused")
    f.add_argument("--size", type=int, default=32, help="pad the 28 x 28 images to this size")
    f.add_argument("--grey", action="store_true", help="keep one channel (default: RGB, to mix with the stickers)")
    f.add_argument("--limit", type=int, default=None, help="only the first N images of each split")
    f.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST idx files")
    f.set_defaults(func=_fmnist)


def _report(out: str, info: dict) -> int:
    counts = ", ".join(f"{k} {v}" for k, v in info["splits"].items())
    print(f"wrote {out}: {counts} images, each split with its metadata.jsonl; read it back as folder:{out}:train")
    return 0


def _stickers(args: argparse.Namespace) -> int:
    from rissole.data.stickers import build_stickers

    sources = tuple(s.strip() for s in args.sources.split(",") if s.strip())
    info = build_stickers(args.out, size=args.size, seed=args.seed, val_fraction=args.val_fraction,
                          limit=args.limit, sources=sources)
    return _report(args.out, info)


def _fmnist(args: argparse.Namespace) -> int:
    from rissole.data.stickers import build_fmnist_folder

    info = build_fmnist_folder(args.out, size=args.size, rgb=not args.grey, limit=args.limit, data_dir=args.data_dir)
    return _report(args.out, info)
