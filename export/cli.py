"""Entry point of `rissole-export`: checkpoint (RISSOLE, RDM or RARM) + database -> edge bundle [-> TensorRT engines]."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rissole_runtime import argtypes as at
from rissole_runtime.diffusion.solvers import DEVICE_SAMPLER, DEVICE_STEPS, SAMPLERS
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
    p.add_argument("--int8", action="store_true",
                   help="int8 denoiser (RISSOLE, RDM): onnxruntime static quantization calibrated on real rows of "
                        "the database at the default sampler's timesteps; the manifest records the pixel difference "
                        "of fp32 vs int8 samples")
    p.add_argument("--int8-calibration-rows", type=at.positive_int, default=256,
                   help="database rows the int8 calibration reads (a smaller database is refused)")
    p.add_argument("--opset", type=at.int_range(17), default=17, help="ONNX opset (>= 17)")
    p.add_argument("--max-samples", type=at.positive_int, default=16,
                   help="samples per network call; the batch axis spans b .. max_samples * b * 2 (guidance)")
    p.add_argument("--sampler", choices=SAMPLERS, default=DEVICE_SAMPLER,
                   help="default sampler recorded in the manifest (RISSOLE, RDM): ddim, ddpm (all T steps), dpmpp2m "
                        "(DPM-Solver++ 2M) or unipc (UniPC bh2, the default: at 10 calls it measured equal to DDIM-50 "
                        "in FID); rissole-run --sampler overrides it")
    p.add_argument("--steps", type=at.steps, default=DEVICE_STEPS, help="default network calls of that sampler "
                                                                              "recorded in the manifest (RISSOLE, RDM; "
                                                                              "ignored by ddpm)")
    p.add_argument("--top-k", type=at.non_negative_int, default=0, help="default top-k recorded in the manifest (RARM; 0 = all codes)")
    p.add_argument("--temperature", type=at.TEMPERATURE, default=1.0, help="default temperature recorded in the manifest (RARM)")
    p.add_argument("--guidance", type=at.GUIDANCE, default=1.0, help="default guidance scale recorded in the manifest")
    p.add_argument("--top-m", type=at.fraction, default=1.0, help="default top-m recorded in the manifest")
    p.add_argument("--no-text-encoder", action="store_true",
                   help="RDM / kNN-Diffusion in a text-image space: leave out text_encoder.onnx and tokenizer.json "
                        "(about 90 MB; without them the bundle samples from pseudo-queries only, no --prompt)")
    p.add_argument("--text-int8", action="store_true",
                   help="quantize the text encoder's weights to int8 (about 4x smaller; refused when a test prompt's "
                        "vector falls below cosine 0.98 of PyTorch's)")
    p.add_argument("--copy-db", action="store_true", help="copy blocks.npy even where a hard link is possible")
    p.add_argument("--force", action="store_true", help="replace an edge bundle already at --out (nothing else is ever replaced)")
    p.add_argument("--engine", action="store_true",
                   help="also build TensorRT engines (on the device); prints the trtexec commands where it cannot")
    p.add_argument("--engine-precision", choices=("fp16", "fp32"), default="fp16",
                   help="engine precision; fp16 keeps the normalisation layers in fp32")
    p.add_argument("--workspace-mb", type=at.positive_int, default=1024, help="TensorRT workspace limit in MiB (8 GB devices)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file (default: BUNDLE/timing.cache)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def run(args: argparse.Namespace) -> int:
    from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle

    opts = ExportOptions(fp16=args.fp16, int8=args.int8, int8_calibration_rows=args.int8_calibration_rows,
                         opset=args.opset, max_samples=args.max_samples, sampler=args.sampler,
                         steps=args.steps,
                         guidance=args.guidance, top_m=args.top_m, top_k=args.top_k,
                         temperature=args.temperature, link=not args.copy_db, overwrite=args.force,
                         text_encoder=not args.no_text_encoder, text_int8=args.text_int8,
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
