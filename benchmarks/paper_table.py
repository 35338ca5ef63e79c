"""RISSOLE's Table 1 re-measured on Fashion-MNIST 32 x 32: the ablations, the LDM baseline, grids and k.

Every row is the same config (configs/rissole/fmnist_g2.yaml) with the same optimizer steps,
batch size and learning rate; rows differ only by the flags in ROWS. Three stages, each
resumable, so the table can be built over several sessions:

    python -m benchmarks.paper_table train [--rows ...]   # runs/paper/<row>/ (resumes a partial run)
    python -m benchmarks.paper_table eval  [--rows ...]   # N samples per seed: FID, KID, seams, copies, timing
    python -m benchmarks.paper_table report               # benchmarks/results/paper_table.json + README table

Training runs on one thread each (OMP_NUM_THREADS=1), so two queues (`--rows` split by hand) use
both cores; wall time is summed over invocations. Sampling time per image is measured on one
thread with DDIM-50 (the FID samples) and DDPM-1000 (a smaller batch, same network).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rissole.fileio import atomic_path, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "paper"
RESULTS = ROOT / "benchmarks" / "results" / "paper_table.json"
BASE_CONFIG = ROOT / "configs" / "rissole" / "fmnist_g2.yaml"
# what every row shares: a smaller UNet and a shorter schedule than the shipped model, so a row
# trains in about 20 minutes on one CPU thread
COMMON = ["model.model_channels=48", "train.steps=6000", "train.lr=5e-4", "train.ckpt_every=500"]
G2_LATENT_DB = "data.db=runs/db/fmnist-train-g2-latent"  # same latents, neighbour tables made with --keys latent
G4_DB = "data.db=runs/db/fmnist-train-g4"
ROWS: dict[str, tuple[str, list[str]]] = {
    "ldm": ("LDM (g=1, no retrieval)", ["model.grid=1", "model.retrieval=false"]),
    "rissole": ("RISSOLE (key block 0, k=10)", []),
    "rissole-rag": ("RISSOLE-RAG", ["model.retrieval=false"]),
    "rissole+p": ("RISSOLE+P", ["model.previous_block=true"]),
    "rissole+pos": ("RISSOLE+Pos", ["model.position=true"]),
    "rissole-key-latent": ("RISSOLE (key full latent)", ["model.key=latent", G2_LATENT_DB]),
    "rissole-g4": ("RISSOLE g=4", ["model.grid=4", G4_DB]),
    "rissole-k1": ("RISSOLE k=1", ["model.k=1"]),
    "rissole-k5": ("RISSOLE k=5", ["model.k=5"]),
    "rissole-k20": ("RISSOLE k=20", ["model.k=20"]),
    "rissole-half": ("RISSOLE, half the LDM's parameters", ["model.model_channels=32"]),
}


def run_dir(row: str) -> Path:
    return RUNS / row


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def train(rows: list[str]) -> None:
    """Train each row not yet finished; a row with a checkpoint resumes; wall time accumulates."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for row in rows:
        out = run_dir(row)
        if (out / "final" / "config.yaml").is_file():
            print(f"{row}: finished, skipped")
            continue
        argv = [sys.executable, "-m", "rissole", "train", "--config", str(BASE_CONFIG), "--out", str(out),
                "--set", *COMMON, *ROWS[row][1]]
        if (out / "checkpoint").is_dir():
            argv.append("--resume")
        out.mkdir(parents=True, exist_ok=True)
        print(f"{row}: {' '.join(argv[1:])}", flush=True)
        t0 = time.time()
        with open(out / "train.log", "a") as log:
            code = subprocess.call(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wall = read_json(out / "wall.json", {"seconds": 0.0, "invocations": 0})
        wall = {"seconds": wall["seconds"] + time.time() - t0, "invocations": wall["invocations"] + 1}
        write_json_atomic(out / "wall.json", wall)
        if code != 0:
            raise SystemExit(f"{row}: training failed (exit {code}); see {out / 'train.log'}")


def sample(pipe: Any, n: int, seed: int, sampler: Any, batch: int) -> tuple[Any, float]:
    """n uint8 images from pseudo-queries (seeded), in batches; seconds of generation (no decoding excluded)."""
    import numpy as np

    rows = pipe.pseudo_queries(n, 1.0, seed)
    retrieval = pipe.model.config.retrieval
    out, seconds = [], 0.0
    for s in range(0, n, batch):
        ids = pipe.table_neighbours(rows[s : s + batch]) if retrieval else None
        t0 = time.perf_counter()
        images, _ = pipe.generate(ids, sampler, n=min(batch, n - s), seed=seed * 100_003 + s)
        seconds += time.perf_counter() - t0
        out.append(images)
    return np.concatenate(out), seconds


def evaluate_row(row: str, seeds: list[int], n: int, ddpm_n: int, ddpm_fid: bool) -> None:
    """Per seed: N DDIM-50 samples -> FID, KID, seam score, copy rate, seconds per image; DDPM timing once."""
    import numpy as np
    import torch

    from rissole.data import load_source
    from rissole.diffusion.schedule import DDIMSampler, DDPMSampler
    from rissole.heads.block_pipeline import RissolePipeline
    from rissole.metrics import evaluate
    from rissole.metrics.copies import cached_nearest_distinct_pair, copy_rate
    from rissole.metrics.seams import seam_score

    torch.set_num_threads(1)
    ckpt = run_dir(row) / "final"
    if not (ckpt / "config.yaml").is_file():
        print(f"{row}: not trained yet, skipped")
        return
    pipe = RissolePipeline.load(ckpt, device="cpu")
    grid = pipe.model.config.grid
    real = load_source("fmnist:test", limit=n).images
    train_images = load_source("fmnist:train")
    bar = cached_nearest_distinct_pair(train_images.images, train_images.content_hash())
    samplers = [("ddim50", DDIMSampler(pipe.schedule, 50), seeds)]
    if ddpm_fid:
        samplers.append(("ddpm1000", DDPMSampler(pipe.schedule), seeds[:1]))
    for name, sampler, which in samplers:
        for seed in which:
            path = run_dir(row) / f"eval_{name}_seed{seed}.json"
            if path.is_file():
                continue
            images, seconds = sample(pipe, n, seed, sampler, batch=250)
            with atomic_path(run_dir(row) / f"samples_{name}_seed{seed}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, images)
            metrics = evaluate(images, ref="fmnist:test", n=n, with_kid=True)
            grey = images if images.shape[1] == 1 else images.mean(1, keepdims=True).round().astype(np.uint8)
            res = {"row": row, "sampler": name, "seed": seed, "n": n, "fid": metrics["fid"],
                   "kid_mean": metrics["kid_mean"], "kid_std": metrics["kid_std"],
                   "seams": seam_score(grey, real, max(grid, 2)),  # g=1: at the g=2 boundaries, a control
                   "copies": copy_rate(grey, train_images.images, bar),
                   "seconds_per_image": seconds / n}
            write_json_atomic(path, res)
            print(f"{row} {name} seed {seed}: FID {res['fid']:.2f}, {seconds / n * 1e3:.1f} ms/image", flush=True)
    timing = run_dir(row) / "eval_ddpm_timing.json"
    if not timing.is_file():
        _, seconds = sample(pipe, ddpm_n, 0, DDPMSampler(pipe.schedule), batch=ddpm_n)
        write_json_atomic(timing, {"n": ddpm_n, "seconds_per_image": seconds / ddpm_n})


def report(n: int) -> dict[str, Any]:
    """Gather every row's results into one JSON and a markdown table (rows not yet run are listed as such)."""
    from benchmarks._machine import machine_info
    from rissole.checkpoint import load_checkpoint
    from rissole.heads.block_train import build_model, parameter_counts

    rows = []
    for row, (label, flags) in ROWS.items():
        d = run_dir(row)
        entry: dict[str, Any] = {"row": row, "label": label, "flags": flags}
        if (d / "final" / "config.yaml").is_file():
            cfg = load_checkpoint(d / "final").config
            entry["params"] = parameter_counts(build_model(cfg["model"]))["total"]
            entry["train_seconds"] = read_json(d / "wall.json", {}).get("seconds")
            entry["steps"], entry["batch_size"] = cfg["train"]["steps"], cfg["train"]["batch_size"]
        entry["ddim50"] = [read_json(p) for p in sorted(d.glob("eval_ddim50_seed*.json"))]
        entry["ddpm1000"] = [read_json(p) for p in sorted(d.glob("eval_ddpm1000_seed*.json"))]
        entry["ddpm_timing"] = read_json(d / "eval_ddpm_timing.json")
        rows.append(entry)
    result = {"benchmark": "paper_table", "machine": machine_info(), "n": n, "common": COMMON,
              "base_config": str(BASE_CONFIG.relative_to(ROOT)), "rows": rows}
    write_json_atomic(RESULTS, result)
    table = markdown(rows)
    print(table)
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- paper_table:start -->", "<!-- paper_table:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        write_text_atomic(readme, head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
        print(f"updated the table in {readme}")
    return result


def markdown(rows: list[dict[str, Any]]) -> str:
    def fmt(values: list[float], digits: int) -> str:
        return " / ".join(f"{v:.{digits}f}" for v in values) if values else "-"

    lines = ["| model | params | FID (seeds) | KID x1e3 | seam score | copy rate | train min | ms/image DDIM-50 | ms/image DDPM-1000 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r["ddim50"]
        seams = [e["seams"]["score"] for e in ev if e.get("seams")]
        lines.append("| " + " | ".join([
            r["label"],
            f"{r['params'] / 1e6:.2f}M" if "params" in r else "not trained",
            fmt([e["fid"] for e in ev], 2),
            fmt([e["kid_mean"] * 1e3 for e in ev], 2),
            fmt(seams, 3) if seams else "-",
            fmt([e["copies"]["copy_rate"] for e in ev], 4),
            f"{r['train_seconds'] / 60:.0f}" if r.get("train_seconds") else "-",
            fmt([ev[0]["seconds_per_image"] * 1e3], 1) if ev else "-",
            fmt([r["ddpm_timing"]["seconds_per_image"] * 1e3], 0) if r.get("ddpm_timing") else "-",
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("train", "eval", "report"))
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help=f"rows to run (default all): {', '.join(ROWS)}")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1], help="sampling seeds")
    ap.add_argument("-n", type=int, default=2000, help="samples per seed for FID / KID / seams / copies")
    ap.add_argument("--ddpm-n", type=int, default=16, help="images for the DDPM-1000 timing")
    ap.add_argument("--ddpm-fid", action="store_true", help="also FID with DDPM-1000 (first seed; ~20x the DDIM time)")
    args = ap.parse_args()
    unknown = set(args.rows) - set(ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ROWS)}")
    if args.stage == "train":
        train(args.rows)
    elif args.stage == "eval":
        for row in args.rows:
            evaluate_row(row, args.seeds, args.n, args.ddpm_n, args.ddpm_fid)
    else:
        report(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
