"""`rissole train` and `rissole sample`: the RISSOLE block-diffusion head."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a RISSOLE block denoiser (or an ablation / the LDM baseline) from a YAML config")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/rissole/fmnist_g2.yaml")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit (same config)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config entries, e.g. model.retrieval=false train.steps=200")
    t.add_argument("--stop-after", type=int, default=None, help="end this invocation after N steps (checkpointed)")
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from rissole.config import apply_overrides, load_config
    from rissole.heads.block_train import train_block_diffusion

    cfg = apply_overrides(load_config(args.config), args.set)
    trainer = train_block_diffusion(cfg, args.out, resume=args.resume, stop_after=args.stop_after)
    where = Path(args.out) / ("final" if trainer.step == trainer.tc["steps"] else "checkpoint")
    print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0
