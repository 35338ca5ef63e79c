"""Top-m x guidance trade-off of a head (RDM paper, Fig. 13; RDM, RARM or RISSOLE) on Fashion-MNIST 32 x 32.

For every top-m fraction m (pseudo-queries drawn from the top m of p_D, RDM paper Eq. 7) and guidance
scale s (classifier-free, against all-zero neighbour embeddings): N samples (DDIM-50 for RDM; RARM's
token loop; RISSOLE DDIM-50 on its block database) -> FID, KID and improved precision / recall (k-NN balls, k = 3, on Inception pool
features) against the first N images of the Fashion-MNIST test split. Every cell uses the same
sampling seed, so cells differ only by m and s (batch b's noise seed is seed * 100_003 + start, as in
the paper table, whose m = 1, s = 1 samples this reproduces).

Resumable per cell: runs/rdm_tradeoff/<kind>-<weights hash>-db<database hash>/m<m>_s<s>_n<N>_seed<seed>_<steps>.json
(with the samples .npy and a PNG grid of the first 64 beside it); done cells are skipped.

    python -m benchmarks.rdm_tradeoff                                   # runs/paper/rdm/final -> results/rdm_tradeoff.json
    python -m benchmarks.rdm_tradeoff --ckpt runs/paper/rarm/final      # -> results/rarm_tradeoff.json
    python -m benchmarks.rdm_tradeoff --ckpt checkpoints/rissole-fmnist-g2 --top-m 1 --guidance 1 1.5 2   # -> rissole_tradeoff.json
    python -m benchmarks.rdm_tradeoff -n 32 --top-m 0.1 --guidance 1 2 --out /tmp/t.json   # a quick try

Cost (one thread): about N x (0.06 s at s = 1, 0.1 s at s > 1) for RDM DDIM-50 sampling plus Inception
features of N samples per cell.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "rdm_tradeoff"
TOP_M = [0.01, 0.1, 1.0]
GUIDANCE = [1.0, 1.5, 2.0, 3.0]


def cell_name(m: float, s: float, n: int, seed: int, sampler: str) -> str:
    return f"m{m:g}_s{s:g}_n{n}_seed{seed}_{sampler}"


def run_tag(pipe: Any, ckpt: str) -> str:
    """Cells belong to one checkpoint's weights and one database: a retrained model starts afresh."""
    from rissole.checkpoint import load_checkpoint

    return f"{pipe.kind}-{load_checkpoint(ckpt).weights_hash()[:12]}-db{pipe.db.manifest['sha256'][:8]}"


def run_cell(pipe: Any, m: float, s: float, args: argparse.Namespace, cell_dir: Path) -> dict[str, Any]:
    import numpy as np

    from rissole_runtime.fileio import atomic_path, write_json_atomic
    from rissole_runtime.images import save_grid
    from rissole.metrics import evaluate

    name = cell_name(m, s, args.n, args.seed, args.sampler_name)
    path = cell_dir / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    from rissole.heads.pipeline import SamplingOptions

    steps = {"steps": args.steps} if "steps" in pipe.accepts else {}
    images, sample_s = pipe.sample(args.n, SamplingOptions(top_m=m, seed=args.seed, guidance=s, batch=args.batch, **steps))
    with atomic_path(cell_dir / f"{name}.samples.npy") as tmp, open(tmp, "wb") as f:
        np.save(f, images)
    save_grid(images[:64], cell_dir / f"{name}.png", nrow=8)
    t0 = time.perf_counter()
    metrics = evaluate(images, ref="fmnist:test", n=args.n, with_kid=True, with_pr=True, device="cpu", progress=False)
    eval_s = time.perf_counter() - t0
    rows = pipe.pseudo_queries(args.n, m, args.seed)
    res = {"top_m": m, "guidance": s, "n": args.n, "seed": args.seed, "sampler": args.sampler_name,
           "fid": metrics["fid"], "kid_mean": metrics["kid_mean"], "kid_std": metrics["kid_std"],
           "precision": metrics["precision"], "recall": metrics["recall"], "pr_k": metrics["pr_k"],
           "distinct_pseudo_queries": int(len(np.unique(rows))),
           "sample_seconds": sample_s, "sample_s_per_image": sample_s / args.n, "eval_seconds": eval_s,
           "inception_sha256": metrics["inception_sha256"], "ref": metrics["ref"]}
    write_json_atomic(path, res)
    return res


def markdown(cells: list[dict[str, Any]]) -> str:
    # Every cell compares its N samples with the first N test images; with N <= 1000 the KID subsets
    # are the whole sets, so there is no subset spread to show.
    lines = ["| top-m | guidance | FID | KID x 1e3 | precision | recall | distinct queries | s/image |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in cells:
        lines.append(f"| {c['top_m']:g} | {c['guidance']:g} | {c['fid']:.2f} | {c['kid_mean'] * 1e3:.2f} "
                     f"| {c['precision']:.3f} | {c['recall']:.3f} | "
                     f"{c['distinct_pseudo_queries']} | {c['sample_s_per_image']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "runs/paper/rdm/final"), help="RDM, RARM or RISSOLE checkpoint")
    ap.add_argument("--database", default=None, help="database to sample with (default: the checkpoint's)")
    ap.add_argument("-n", type=int, default=2000, help="samples per cell (FID / KID / precision / recall)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed (the same for every cell)")
    ap.add_argument("--top-m", type=float, nargs="+", default=TOP_M, help="top-m fractions of p_D")
    ap.add_argument("--guidance", type=float, nargs="+", default=GUIDANCE, help="classifier-free guidance scales")
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps (RDM; RARM samples its token loop)")
    ap.add_argument("--batch", type=int, default=250, help="images per generate call")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--runs", default=str(RUNS), help="per-cell results, samples and grids")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/<kind>_tradeoff.json)")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._machine import machine_info
    from rissole_runtime.fileio import write_json_atomic
    from rissole.heads.registry import load_pipeline

    if not (Path(args.ckpt) / "config.yaml").is_file():
        raise SystemExit(f"{args.ckpt}: no checkpoint there (train it first, e.g. "
                         "`python -m benchmarks.paper_table train --rows rdm rarm`)")
    pipe = load_pipeline(args.ckpt, database=args.database, device="cpu")
    args.sampler_name = f"ddim{args.steps}" if "steps" in pipe.accepts else "tokens"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{pipe.kind}_tradeoff.json")
    cell_dir = Path(args.runs) / run_tag(pipe, args.ckpt)
    cell_dir.mkdir(parents=True, exist_ok=True)
    print(f"{pipe.kind} {args.ckpt}, database {pipe.db.path} ({pipe.db.rows} rows); cells in {cell_dir}", flush=True)
    cells = []
    for m in args.top_m:
        for s in args.guidance:
            t0 = time.perf_counter()
            c = run_cell(pipe, m, s, args, cell_dir)
            cells.append(c)
            print(f"m {m:g} s {s:g}: FID {c['fid']:.2f}  KID {c['kid_mean']:.4f}  precision {c['precision']:.3f}  "
                  f"recall {c['recall']:.3f}  ({time.perf_counter() - t0:.0f} s this call)", flush=True)
    cells.sort(key=lambda c: (c["top_m"], c["guidance"]))  # run in the order given, reported in order
    table = markdown(cells)
    result = {"benchmark": "rdm_tradeoff", "machine": machine_info(), "checkpoint": args.ckpt, "kind": pipe.kind,
              "database": str(pipe.db.path), "database_rows": pipe.db.rows, "k": pipe.k, "n": args.n,
              "seed": args.seed, "sampler": args.sampler_name, "ref": "fmnist:test (first N)",
              "metrics": "FID, KID (100 subsets of min(N, 1000)), improved precision/recall with k = 3 "
                         "on Inception pool features", "cells_dir": os.path.relpath(cell_dir, ROOT),
              "cells": cells, "table": table}
    write_json_atomic(out, result)
    print(table)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
