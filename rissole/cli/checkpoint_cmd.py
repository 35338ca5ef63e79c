"""`rissole checkpoint slim`: the inference weights of a run, small enough to ship."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("checkpoint", help="inspect or slim checkpoints")
    csub = p.add_subparsers(dest="checkpoint_command", metavar="ACTION", required=True)
    s = csub.add_parser("slim", help="keep only the inference (EMA) weights as model.safetensors, optionally in float16")
    s.add_argument("src", help="checkpoint directory, e.g. runs/rissole-fmnist-g2/final")
    s.add_argument("--out", required=True, help="new checkpoint directory")
    s.add_argument("--force", action="store_true", help="replace a rissole checkpoint already at --out (nothing else "
                                                        "is ever replaced)")
    s.add_argument("--half", action="store_true", help="store floating-point weights as float16 (loaded back as float32)")
    s.set_defaults(func=_slim)


def _slim(args: argparse.Namespace) -> int:
    from rissole.checkpoint import load_checkpoint, save_checkpoint
    from rissole.training import run_config

    from rissole.fileio import CHECKPOINT, check_replace

    check_replace(args.out, CHECKPOINT, args.force)  # before loading: fail fast, nothing done
    ckpt = load_checkpoint(args.src)
    name = ckpt.inference_weights_name()
    weights = {k: (v.half() if args.half and v.is_floating_point() else v) for k, v in ckpt.weights[name].items()}
    config = run_config(ckpt.config)
    config["slimmed_from"] = {"path": str(args.src), "weights": name, "dtype": "float16" if args.half else "as trained"}
    out = save_checkpoint(args.out, ckpt.kind, ckpt.step, config, {"model": weights}, replace=args.force)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out}: {name} weights of {args.src}, {size / 2**20:.1f} MiB")
    return 0
