"""`rissole budget`: fit a head config to a parameter budget and say what training it costs in memory."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="the widest model of a RISSOLE / RDM / RARM config within a parameter budget, "
                                      "its per-component counts and its fp32 training memory at a batch size")
    p.add_argument("config", help="a head config (YAML, e.g. configs/rissole/fmnist_g2.yaml)")
    p.add_argument("--params", required=True, help="budget of parameters the forward pass uses: 1M, 0.5M, 250k, 2e6")
    p.add_argument("--batch", type=int, default=None, help="training batch for the memory estimate (default: the "
                                                           "config's train.batch_size, else 64)")
    p.add_argument("--depths", default=None, metavar="D1,D2",
                   help="depths to try as well (num_res_blocks for RISSOLE / RDM, depth for RARM); default: the config's")
    p.add_argument("--gpu-memory", default=None, metavar="SIZE", help="also say whether it fits this much (e.g. 6G)")
    p.add_argument("--out", default=None, help="write the resolved config here (YAML; train.max_params set to the budget)")
    p.add_argument("--force", action="store_true", help="replace a training config (YAML with a model section) already at "
                                                        "--out (nothing else is ever replaced)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda: where the training step is measured "
                                                    "(CUDA adds the peak allocation)")
    p.set_defaults(func=_budget)


def _budget(args: argparse.Namespace) -> int:
    import yaml

    from rissole.budget import GIB, fit_budget, fits, head_of, parse_bytes, parse_count, resolved_config, training_memory
    from rissole.config import load_config
    from rissole.device import pick_device
    from rissole.models.params import format_counts
    from rissole_runtime.errors import ConfigError
    from rissole_runtime.fileio import CONFIG, atomic_path, check_replace

    if args.out:
        check_replace(args.out, CONFIG, args.force)  # before the measurement; checked again under the lock
    config = load_config(args.config)
    spec = head_of(config)  # a config of another kind is refused here, naming the heads
    budget = parse_count(args.params)
    depths = None
    if args.depths:
        try:
            depths = [int(d) for d in args.depths.split(",")]
        except ValueError:
            raise ConfigError(f"--depths {args.depths!r}: expected integers joined by commas, e.g. 1,2") from None
    fit = fit_budget(config, budget, depths)
    total = fit.counts["total"]
    print(f"{spec.kind}: {spec.width_key} {fit.model[spec.width_key]}, {spec.depth_key} {fit.model[spec.depth_key]} -> "
          f"{total:,} used parameters ({total / budget:.1%} of the {budget:,} budget)")
    print(format_counts(fit.counts))
    batch = args.batch or int((config.get("train") or {}).get("batch_size", 64))
    mem = training_memory(resolved_config(config, fit, budget), batch, str(pick_device(args.device)))
    b = mem["bytes"]
    print(f"fp32 training memory at batch {batch}:")
    for key in ("parameters", "gradients", "adam_moments", "ema", "activations", "total"):
        print(f"  {key:<12}  {b[key] / 2**20:10.1f} MiB")
    if "cuda_peak_allocated" in mem:
        print(f"  measured peak CUDA allocation of one step on {mem['cuda_device']}: "
              f"{mem['cuda_peak_allocated'] / 2**20:.1f} MiB")
    else:
        print("  (activations measured on the CPU: saved tensors of one real step; no GPU here for the CUDA peak)")
    extra = {f"--gpu-memory {args.gpu_memory}": parse_bytes(args.gpu_memory)} if args.gpu_memory else None
    for name, ok in fits(b["total"], extra).items():
        print(f"  fits {name}: {'yes' if ok else 'no'}" + ("" if ok else f" (needs {b['total'] / GIB:.2f} GiB)"))
    if args.out:
        with atomic_path(args.out, suffix=".yaml", kind=CONFIG, force=args.force) as tmp:
            tmp.write_text(yaml.safe_dump(resolved_config(config, fit, budget), sort_keys=False))
        print(f"wrote {args.out}")
    return 0
