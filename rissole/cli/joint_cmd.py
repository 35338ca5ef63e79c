"""`rissole joint train`: the image tower of the joint text-image space (locked-text tuning onto MiniLM)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("joint", help="the joint text-image space: train the image tower onto frozen all-MiniLM-L6-v2")
    jsub = p.add_subparsers(dest="joint_command", metavar="ACTION", required=True)
    t = jsub.add_parser("train", help="locked-text tuning (symmetric InfoNCE, learnable temperature) on captioned "
                                      "stickers and Fashion-MNIST with held-out classes")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/joint/minilm_stickers.yaml")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv, text_cache.npy")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit (same config)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config entries, e.g. train.steps=200 data.stickers=DIR")
    t.add_argument("--stop-after", type=int, default=None, help="end this invocation after N steps (checkpointed)")
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from rissole.config import apply_overrides, load_config
    from rissole.embeddings.joint_train import KIND, train_joint
    from rissole.errors import ConfigError

    cfg = apply_overrides(load_config(args.config), args.set)
    kind = cfg.pop("kind", KIND)
    if kind != KIND:
        raise ConfigError(f"{args.config}: kind {kind!r}; `rissole joint train` trains kind {KIND!r} "
                          "(generator heads train with `rissole train`).")
    trainer = train_joint(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    where = Path(args.out) / ("final" if trainer.step == trainer.tc["steps"] else "checkpoint")
    print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0
