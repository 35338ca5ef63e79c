"""`rissole joint train`: the image tower of the joint text-image space (locked-text tuning onto MiniLM)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from rissole.cli.rissole_cmd import _train, add_train_options

    p = sub.add_parser("joint", help="the joint text-image space: train the image tower onto frozen all-MiniLM-L6-v2")
    jsub = p.add_subparsers(dest="joint_command", metavar="ACTION", required=True)
    t = jsub.add_parser("train", help="locked-text tuning (symmetric InfoNCE, learnable temperature) on captioned "
                                      "stickers and Fashion-MNIST with held-out classes")
    add_train_options(t, "configs/joint/minilm_stickers.yaml", "train.steps=200 data.stickers=DIR")
    t.set_defaults(func=lambda args: _train(args, only_kind="joint"))
