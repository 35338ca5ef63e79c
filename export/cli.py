"""Entry point of `rissole-export`: checkpoint (RISSOLE, RDM or RARM) + database -> edge bundle [-> TensorRT engines]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rissole_runtime.errors import run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rissole-export",
        description="Export a trained RISSOLE, RDM or RARM checkpoint, its database (block database / embedding "
                    "database) and VQ decoder as a self-contained edge bundle (ONNX models, memory-mapped database, "
                    "neighbour table, proposal, manifest) for rissole-run. RISSOLE and RDM ship one denoiser; RARM "
                    "ships its context graph, its one-position step graph (the key-value cache in, the new "
                    "position's keys/values out) and the VQ codebook.")
    p.add_argument("ckpt", help="RISSOLE, RDM or RARM checkpoint directory (config.yaml + safetensors)")
    p.add_argument("--out", required=True, help="bundle directory to write (atomically)")
    p.add_argument("--db", default=None, help="RISSOLE's block database or RDM's / RARM's embedding database "
                                              "(default: the one in the checkpoint's config)")
    p.add_argument("--vqgan", default=None, help="VQ-GAN checkpoint (default: the one in the checkpoint's config)")
    p.add_argument("--fp16", action="store_true", help="store the ONNX models in fp16, normalisation layers kept fp32")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--max-samples", type=int, default=16,
                   help="samples per network call; the batch axis spans b .. max_samples * b * 2 (guidance)")
    p.add_argument("--steps", type=int, default=50, help="default DDIM steps recorded in the manifest (RISSOLE, RDM)")
    p.add_argument("--top-k", type=int, default=0, help="default top-k recorded in the manifest (RARM; 0 = all codes)")
    p.add_argument("--temperature", type=float, default=1.0, help="default temperature recorded in the manifest (RARM)")
    p.add_argument("--guidance", type=float, default=1.0, help="default guidance scale recorded in the manifest")
    p.add_argument("--top-m", type=float, default=1.0, help="default top-m recorded in the manifest")
    p.add_argument("--copy-db", action="store_true", help="copy blocks.npy even where a hard link is possible")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--engine", action="store_true",
                   help="also build TensorRT engines (on the device); prints the trtexec commands where it cannot")
    p.add_argument("--engine-precision", choices=("fp16", "fp32"), default="fp16",
                   help="engine precision; fp16 keeps the normalisation layers in fp32")
    p.add_argument("--workspace-mb", type=int, default=1024, help="TensorRT workspace limit in MiB (8 GB devices)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (default: BUNDLE/timing.cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle

    opts = ExportOptions(fp16=args.fp16, opset=args.opset, max_samples=args.max_samples, steps=args.steps,
                         guidance=args.guidance, top_m=args.top_m, top_k=args.top_k,
                         temperature=args.temperature, link=not args.copy_db, overwrite=args.force,
                         progress=not args.quiet)
    manifest = write_bundle(args.ckpt, args.out, db=args.db, vqgan=args.vqgan, opts=opts)
    for line in opts.report:
        print(line)
    model = manifest["model"]
    print(f"wrote {args.out}: {model['kind']}, grid {model['grid']}, k {model['k']}, "
          f"{manifest['database']['rows']} rows; {bundle_size(args.out) / 2**20:.1f} MiB without the database")
    if args.engine:
        from rissole_export.tensorrt_build import build_engines
        from rissole_export.trtexec import engine_plans

        plans = engine_plans(Path(args.out), manifest, args.engine_precision == "fp16", args.workspace_mb,
                             Path(args.timing_cache) if args.timing_cache else None)
        for path in build_engines(plans):
            print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("rissole-export", lambda: run(args),
                       "nothing half-written is left (the bundle is swapped in atomically).")


if __name__ == "__main__":
    sys.exit(main())
