"""`rissole demo`: the README's main job on the shipped default: a grid of generated images."""

from __future__ import annotations

import argparse

from rissole.paths import SHIPPED_RISSOLE
from rissole_runtime import argtypes as at


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="generate a grid of images with the shipped RISSOLE model (builds its block database on first use)",
    )
    p.add_argument("--out", default="demo.png", help="output PNG grid")
    p.add_argument("-n", type=at.positive_int, default=64, help="number of images")
    p.add_argument("--steps", type=at.steps, default=None, help="DDIM steps of a diffusion model (default 50)")
    p.add_argument("--seed", type=at.seed, default=0, help="seed of the pseudo-queries and the noise")
    p.add_argument("--ckpt", default=str(SHIPPED_RISSOLE),
                   help="checkpoint directory: the shipped RISSOLE model (default), the shipped RDM "
                        "(checkpoints/rdm-fmnist-vq) or any trained run's final/")
    p.add_argument("--show-retrieval", default="demo_retrieval.png", metavar="PNG",
                   help="also write pseudo-query | neighbours | sample rows (empty string to skip)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from rissole.cli.main import main as rissole
    from rissole.paths import ensure_database_for

    ensure_database_for(args.ckpt)
    argv = ["sample", "--ckpt", args.ckpt, "-n", str(args.n), "--seed", str(args.seed), "--out", args.out]
    if args.steps is not None:
        argv += ["--steps", str(args.steps)]
    if args.show_retrieval:
        argv += ["--show-retrieval", args.show_retrieval]
    return rissole(argv)
