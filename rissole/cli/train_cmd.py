"""`rissole train`: train a RISSOLE block denoiser, one of its ablations, or the LDM baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """ablations are flags of one config, e.g.:
  --set model.retrieval=false                 RISSOLE-RAG (no neighbours)
  --set model.position=true                   RISSOLE+Pos
  --set model.previous_block=true             RISSOLE+P (sequential sampling)
  --set model.grid=1 model.retrieval=false    the plain LDM baseline (whole latent, no retrieval)
  --set model.k=20                            more neighbours (the table must hold them)
  --set model.key=latent data.db=DB           whole-latent keys (DB needs a table made with --keys latent)
  --set model.grid=4 data.db=DB               a 4x4 grid (DB built with --grid 4)"""


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser(
        "train",
        help="train a RISSOLE block denoiser (or an ablation, or the LDM baseline) from a YAML config",
        description="Train a RISSOLE block denoiser from a YAML config (kind: rissole; sections model, data, "
        "diffusion, train). Writes OUT/checkpoint (resumable), OUT/final (what sampling loads) and OUT/log.csv.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/rissole/fmnist_g2_k10.yaml")
    t.add_argument("--out", required=True, help="run directory: checkpoint/, final/, log.csv")
    t.add_argument("--resume", action="store_true", help="continue OUT/checkpoint bit for bit (same config)")
    t.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config entries (value parsed as YAML), e.g. train.steps=200 model.retrieval=false")
    t.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="end this invocation after N steps, with a checkpoint (continue with --resume)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar (log.csv still gets every step)")
    t.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from rissole.config import apply_overrides, load_config
    from rissole.heads.train import train_rissole

    cfg = apply_overrides(load_config(args.config), args.set)
    trainer = train_rissole(cfg, args.out, resume=args.resume, stop_after=args.stop_after,
                            progress=not args.no_progress)
    done = trainer.step == trainer.tc["steps"]
    where = Path(args.out) / ("final" if done else "checkpoint")
    print(f"step {trainer.step}/{trainer.tc['steps']}: wrote {where}")
    return 0
