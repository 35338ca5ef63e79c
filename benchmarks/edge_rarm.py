"""RARM on the edge runtime: the shipped RARM exported (fp32 and fp16), sampled by rissole-run's
TokenEdgeSampler (numpy + onnxruntime, KV cache as graph inputs/outputs) beside PyTorch's KV-cached
sampler, same threads, interleaved, medians.

    python -m benchmarks.edge_rarm --threads 1      # writes benchmarks/results/edge_rarm.json

Figures: export parity (context, step logits over every position), whole-sample seconds per image
at 1 and 16 images, how many codes the runtime draws identically to PyTorch when fed PyTorch's
uniforms (fp32, fp16), the bundle size without the database, and FID of fp32 vs fp16 runtime
samples (N = --fid-n against the test split).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from rissole.heads.pipeline import SamplingOptions

ROOT = Path(__file__).resolve().parent.parent


def code_agreement(edge: Any, pipe: Any, n: int, seed: int, guidance: float) -> float:
    """Fraction of codes the runtime draws equal to PyTorch's, same rows and the same uniforms (one chunk)."""
    import torch

    rows = edge.pseudo_queries(n, 1.0, seed)
    gen = torch.Generator().manual_seed(seed)
    codes = edge.sample_codes(edge.neighbours(rows)[:, 0],
                              lambda m: torch.rand(m, generator=gen, dtype=torch.float64).numpy(), guidance)
    _, ref = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(seed=seed, guidance=guidance))
    return float((codes == ref.numpy()).mean())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints/rarm-fmnist-vq"), help="RARM checkpoint")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch AND onnxruntime (compared at equal threads)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of whole-sample runs (median)")
    ap.add_argument("--fid-n", type=int, default=1000, help="runtime samples per bundle for the fp16-vs-fp32 FID (0: skip)")
    ap.add_argument("--work", default=None, help="scratch directory for the bundles (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/edge_rarm.json"), help="results JSON")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._machine import machine_info
    from benchmarks.edge import interleaved
    from rissole_runtime.fileio import write_json_atomic
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole.paths import ensure_database_for
    from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.token_sampler import TokenEdgeSampler

    ensure_database_for(args.ckpt)
    work = Path(args.work or tempfile.mkdtemp(prefix="edge_rarm_"))
    result: dict[str, Any] = {"benchmark": "edge_rarm", "machine": machine_info(), "checkpoint": args.ckpt,
                              "threads": args.threads}
    edges = {}
    for precision in ("fp32", "fp16"):
        opts = ExportOptions(fp16=precision == "fp16", overwrite=True, progress=False)
        m = write_bundle(args.ckpt, work / precision, opts=opts)
        result[precision] = {"context_parity_max_abs": m["context"]["parity_max_abs"],
                             "step_parity_max_abs": m["step"]["parity_max_abs"],
                             "step_parity_tolerance": m["step"]["parity_tolerance"],
                             "decoder_parity_max_abs": m["decoder"]["parity_max_abs"],
                             "bundle_mb_without_database": bundle_size(work / precision) / 2**20}
        edges[precision] = TokenEdgeSampler(open_bundle(work / precision), "cpu", args.threads)
        print(precision, result[precision], flush=True)
    pipe = NeighbourHeadPipeline.load(args.ckpt, device="cpu")

    for precision, edge in edges.items():
        result[precision]["codes_equal_to_pytorch"] = {
            f"guidance_{g:g}": code_agreement(edge, pipe, 16, seed=5, guidance=g) for g in (1.0, 2.0)}
    timing = {}
    for n in (1, 16):
        rows = pipe.pseudo_queries(n, 1.0, 7)
        ids = pipe.neighbour_ids(rows)
        t = interleaved({"pytorch": lambda: pipe.generate(ids, SamplingOptions(seed=7)),
                         "runtime_fp32": lambda: edges["fp32"].generate(n, seed=7),
                         "runtime_fp16": lambda: edges["fp16"].generate(n, seed=7)}, args.repeats)
        timing[f"n{n}"] = {**{f"{k}_s_per_image": v / n for k, v in t.items()},
                           "pytorch_over_runtime_fp32": t["pytorch"] / t["runtime_fp32"]}
        print(n, timing[f"n{n}"], flush=True)
    result["whole_sample"] = timing

    if args.fid_n > 0:
        from rissole.metrics import evaluate

        for precision, edge in edges.items():
            images, _ = edge.generate(args.fid_n, seed=0)
            m = evaluate(images, ref="fmnist:test", n=args.fid_n, with_kid=True, progress=False)
            result[precision].update(fid=m["fid"], kid=m["kid_mean"], fid_n=args.fid_n)
            print(f"{precision} runtime N={args.fid_n}: FID {m['fid']:.2f}", flush=True)
    write_json_atomic(Path(args.out), result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
