"""RISSOLE's Table 1 re-measured on Fashion-MNIST 32 x 32: the ablations, the LDM baseline, grids and k.

Every RISSOLE row is the same config (configs/rissole/fmnist_g2.yaml) with the same optimizer
steps, batch size and learning rate; rows differ only by the flags in ROWS. The RDM paper's heads
(RDM, RARM) train from their own configs with the same steps, batch size and learning rate on
half of the training split (the other half is their database, as in the paper). Four stages, each
resumable, so the table can be built over several sessions:

    python -m benchmarks.paper_table train [--rows ...]   # runs/paper/<row>/ (resumes a partial run)
    python -m benchmarks.paper_table eval  [--rows ...]   # N samples per seed: FID (+ bootstrap SE), KID, seams, copies
    python -m benchmarks.paper_table timing               # ms/image of every row, side by side, idle machine
    python -m benchmarks.paper_table report               # benchmarks/results/paper_table.json + README table

Training runs on one thread each (OMP_NUM_THREADS=1), so two queues (`--rows` split by hand) use
both cores; wall time is summed over invocations. Sampling time per image is measured apart from
the FID samples, for all rows in one process on one thread, DDIM-50 and DDPM-1000.

Each row is one trained model sampled with three seeds; a row's spread is the standard deviation of
its per-seed FIDs (the sample-set noise; the bootstrap standard error of each seed's FID measures the
same thing from one sample set). The paper's orderings are judged against that spread (ORDERINGS).
The table records the first stage its rows were trained on; a report on another first stage keeps
the earlier table in the JSON under `previous`.
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

from rissole_runtime.fileio import atomic_path, write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "paper"
RESULTS = ROOT / "benchmarks" / "results" / "paper_table.json"
BASE_CONFIG = ROOT / "configs" / "rissole" / "fmnist_g2.yaml"
RDM_CONFIG = ROOT / "configs" / "rdm" / "fmnist_vq.yaml"
RARM_CONFIG = ROOT / "configs" / "rarm" / "fmnist_vq.yaml"
# what every row shares: a smaller UNet and a shorter schedule than the shipped model, so a row
# trains in about 20 minutes on one CPU thread
TRAIN = ["train.steps=6000", "train.batch_size=64", "train.lr=5e-4", "train.ckpt_every=500"]
COMMON = ["model.model_channels=48", *TRAIN]
G2_LATENT_DB = "data.db=runs/db/fmnist-train-g2-latent"  # same latents, neighbour tables made with --keys latent
G4_DB = "data.db=runs/db/fmnist-train-g4"
ROWS: dict[str, tuple[str, list[str]]] = {  # row: (label, overrides of BASE_CONFIG + COMMON)
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
HEAD_ROWS: dict[str, tuple[str, Path]] = {  # row: (label, config), trained with TRAIN
    "rdm": ("RDM (k=4 VQ-latent neighbours, cross-attention)", RDM_CONFIG),
    "rarm": ("RARM (k=4 VQ-latent neighbours)", RARM_CONFIG),
}
ALL_ROWS = [*ROWS, *HEAD_ROWS]
# the paper's claims: (claim, the row that should have the lower FID, the row it is compared with)
ORDERINGS: list[tuple[str, str, str]] = [
    ("RISSOLE < RISSOLE-RAG", "rissole", "rissole-rag"),
    ("RISSOLE < RISSOLE+P", "rissole", "rissole+p"),
    ("RISSOLE < RISSOLE+Pos", "rissole", "rissole+pos"),
    ("RISSOLE < RDM (equal parameters)", "rissole", "rdm"),
    ("RISSOLE < LDM", "rissole", "ldm"),
    ("RISSOLE at half the LDM's parameters <= LDM", "rissole-half", "ldm"),
]


def row_source(row: str) -> tuple[Path, list[str]]:
    """A row's base config and its overrides."""
    if row in HEAD_ROWS:
        return HEAD_ROWS[row][1], list(TRAIN)
    return BASE_CONFIG, [*COMMON, *ROWS[row][1]]


def train_argv(row: str) -> list[str]:
    base, overrides = row_source(row)
    return ["--config", str(base), "--set", *overrides]


def row_config(row: str) -> dict[str, Any]:
    """The config `rissole train` resolves from train_argv(row)."""
    from rissole.config import apply_overrides, load_config

    base, overrides = row_source(row)
    return apply_overrides(load_config(base), overrides)


def label(row: str) -> str:
    return (ROWS.get(row) or HEAD_ROWS[row])[0]


def run_dir(row: str) -> Path:
    return RUNS / row


def read_json(path: Path, default: Any = None) -> Any:
    return json.loads(path.read_text()) if path.is_file() else default


def training_seconds(log_csv: Path) -> tuple[float, int]:
    """Training wall time summed over the invocations in a run's log.csv, and their number.

    The `seconds` column restarts at every (resumed) invocation, so each invocation contributes
    its last value. A resume truncates the log to its checkpoint, so this is the time of the steps
    the model kept; steps lost with a killed invocation are not counted. (wall.json misses an
    invocation killed before it ended, e.g. at the end of a session.)"""
    import csv

    total, last, runs = 0.0, -1.0, 0
    with open(log_csv) as f:
        for rec in csv.DictReader(f):
            sec = float(rec["seconds"])
            if sec < last:
                total, runs = total + last, runs + 1
            last = sec
    return total + max(last, 0.0), runs + 1


def train(rows: list[str]) -> None:
    """Train each row not yet finished; a row with a checkpoint resumes; wall time accumulates."""
    for row in rows:
        train_one(row, run_dir(row), train_argv(row), run_dir(row))


def train_one(name: str, out: Path, config_argv: list[str], logs: Path) -> None:
    """`rissole train --out OUT CONFIG_ARGV` on one thread unless OUT/final exists (resuming OUT/checkpoint),
    its output appended to LOGS/train.log and its wall time added to LOGS/wall.json."""
    if (out / "final" / "config.yaml").is_file():
        print(f"{name}: finished, skipped")
        return
    argv = [sys.executable, "-m", "rissole", "train", "--out", str(out), *config_argv]
    if (out / "checkpoint").is_dir():
        argv.append("--resume")
    logs.mkdir(parents=True, exist_ok=True)
    print(f"{name}: {' '.join(argv[1:])}", flush=True)
    t0 = time.time()
    with open(logs / "train.log", "a") as log:
        code = subprocess.call(argv, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log,
                               stderr=subprocess.STDOUT)
    wall = read_json(logs / "wall.json", {"seconds": 0.0, "invocations": 0})
    write_json_atomic(logs / "wall.json", {"seconds": wall["seconds"] + time.time() - t0,
                                           "invocations": wall["invocations"] + 1})
    if code != 0:
        raise SystemExit(f"{name}: training failed (exit {code}); see {logs / 'train.log'}")


def shipped_twin(row: str) -> Path | None:
    """A shipped checkpoint made from this row's model (`rissole slim` of runs/paper/ROW/final, EMA weights in
    the dtype they were trained in: the very network the row sampled with), for adding seeds to a row whose
    run directory is on another machine."""
    import yaml

    for cfg_file in sorted((ROOT / "checkpoints").glob("*/config.yaml")):
        slim = yaml.safe_load(cfg_file.read_text()).get("slimmed_from") or {}
        if slim.get("path") == f"runs/paper/{row}/final" and slim.get("weights") == "ema" \
                and slim.get("dtype") == "as trained":
            return cfg_file.parent
    return None


def checkpoint_of(row: str) -> Path | None:
    """The row's trained checkpoint: its run's final one, else its shipped twin; None before training ends."""
    final = run_dir(row) / "final"
    if (final / "config.yaml").is_file():
        return final
    return shipped_twin(row)


def load_pipeline(row: str) -> Any:
    """The row's trained pipeline (RISSOLE's, RDM's or RARM's), or None before training ends."""
    from rissole.heads.registry import load_pipeline as load
    from rissole.paths import ensure_database_for

    ckpt = checkpoint_of(row)
    if ckpt is None:
        return None
    if row in HEAD_ROWS:
        ensure_database_for(ckpt)  # RDM's and RARM's neighbour database, built here if missing
    return load(ckpt, device="cpu")


def samplers_of(pipe: Any, ddpm: bool) -> list[tuple[str, Any]]:
    """(name, SamplingOptions) pairs a row is evaluated with: DDIM-50 (and DDPM-1000); a head without diffusion
    steps (RARM): its one token loop, in the DDIM-50 column."""
    from rissole.heads.pipeline import SamplingOptions

    if "steps" not in pipe.accepts:
        return [("ddim50", SamplingOptions())]
    return [("ddim50", SamplingOptions(steps=50))] + ([("ddpm1000", SamplingOptions(sampler="ddpm"))] if ddpm else [])


def sample(pipe: Any, n: int, seed: int, options: Any, batch: int) -> tuple[Any, float]:
    """n uint8 images from pseudo-queries (seeded), in batches (noise seed seed * 100_003 + first image), and the
    seconds spent denoising and decoding them."""
    import dataclasses

    return pipe.sample(n, dataclasses.replace(options, seed=seed, batch=batch))


def evaluate_row(row: str, seeds: list[int], n: int, ddpm_fid: bool, threads: int = 1, bootstrap: int = 50) -> None:
    """Per seed: N DDIM-50 samples -> FID with its bootstrap standard error, KID, seam score, copy rate (and with
    ddpm_fid, DDPM-1000 for the first seed)."""
    import numpy as np
    import torch

    from rissole.data import load_source
    from rissole.metrics import evaluate
    from rissole.metrics.copies import cached_nearest_distinct_pair, copy_rate
    from rissole.metrics.seams import seam_score

    torch.set_num_threads(threads)
    pipe = load_pipeline(row)
    if pipe is None:
        print(f"{row}: not trained yet, skipped")
        return
    grid = 1 if row in HEAD_ROWS else pipe.model.config.grid
    real = load_source("fmnist:test", limit=n).images
    train_images = load_source("fmnist:train")
    bar = cached_nearest_distinct_pair(train_images.images, train_images.content_hash())
    for name, sampler in samplers_of(pipe, ddpm_fid):
        for seed in seeds if name == "ddim50" else seeds[:1]:
            path = run_dir(row) / f"eval_{name}_n{n}_seed{seed}.json"
            if path.is_file():
                continue
            images, _ = sample(pipe, n, seed, sampler, batch=250)
            with atomic_path(run_dir(row) / f"samples_{name}_n{n}_seed{seed}.npy") as tmp, open(tmp, "wb") as f:
                np.save(f, images)
            metrics = evaluate(images, ref="fmnist:test", n=n, with_kid=True, bootstrap=bootstrap)
            grey = images if images.shape[1] == 1 else images.mean(1, keepdims=True).round().astype(np.uint8)
            res = {"row": row, "sampler": name, "seed": seed, "n": n, "fid": metrics["fid"],
                   "kid_mean": metrics["kid_mean"], "kid_std": metrics["kid_std"],
                   **{k: v for k, v in metrics.items() if k.startswith("fid_bootstrap")},
                   "seams": seam_score(grey, real, max(grid, 2)),  # g=1: at the g=2 boundaries, a control
                   "copies": copy_rate(grey, train_images.images, bar)}
            write_json_atomic(path, res)
            print(f"{row} {name} seed {seed}: FID {res['fid']:.2f}", flush=True)


def timing(rows: list[str], n_ddim: int, n_ddpm: int) -> None:
    """Seconds per image of every trained row, DDIM-50 and DDPM-1000, one thread, side by side in
    one process (run it on an otherwise idle machine: the FID samples' times are not comparable)."""
    import torch

    torch.set_num_threads(1)
    result = read_json(RUNS / "timing.json", {})
    for row in rows:
        pipe = load_pipeline(row)
        if pipe is None:
            continue
        (_, ddim_sampler), *rest = samplers_of(pipe, ddpm=True)
        sample(pipe, 4, 0, ddim_sampler, batch=4)  # warm-up
        _, ddim = sample(pipe, n_ddim, 0, ddim_sampler, batch=n_ddim)
        result[row] = {"ddim50_s_per_image": ddim / n_ddim, "n_ddim": n_ddim}
        if rest:
            _, ddpm = sample(pipe, n_ddpm, 0, rest[0][1], batch=n_ddpm)
            result[row].update(ddpm1000_s_per_image=ddpm / n_ddpm, n_ddpm=n_ddpm)
        print(f"{row}: {result[row]}", flush=True)
        write_json_atomic(RUNS / "timing.json", result)


def first_stage() -> dict[str, str]:
    """The VQ-GAN every row's latents come from (BASE_CONFIG's data.vqgan; the heads' configs name the same one)."""
    from rissole.checkpoint import load_checkpoint
    from rissole.config import load_config

    path = load_config(BASE_CONFIG)["data"]["vqgan"]
    return {"vqgan": path, "weights_hash": load_checkpoint(ROOT / path).weights_hash()}


def previous_tables(current: dict[str, str]) -> list[dict[str, Any]]:
    """The tables already in RESULTS that were measured on another first stage, to keep beside the new one.
    A table from before the first stage was recorded is from the original one (checkpoints/vqgan-fmnist-f4)."""
    old = read_json(RESULTS)
    if old is None:
        return []
    kept = old.pop("previous", [])
    old.setdefault("first_stage", {"vqgan": "checkpoints/vqgan-fmnist-f4",
                                   "note": "first stage A (rFID 33.4 at N = 2,000), before issue 19"})
    if old["first_stage"].get("weights_hash") != current["weights_hash"]:
        kept.append(old)
    return kept


def recorded_rows(current: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The rows of the table already in RESULTS, when it was measured on the current first stage: a row whose
    run directory is not on this machine (runs/ does not travel between machines) keeps its recorded figures
    instead of being reported as not run."""
    old = read_json(RESULTS)
    if old is None or old.get("first_stage", {}).get("weights_hash") != current["weights_hash"]:
        return {}
    rows = {r["row"]: r for r in old["rows"]}
    for r in rows.values():
        if measured(r):
            r.setdefault("machine", old["machine"])
    return rows


def measured(row: dict[str, Any]) -> bool:
    """A row with a trained model or an evaluation (the others are listed as not trained)."""
    return "params" in row or bool(row.get("ddim50"))


def fid_summary(evals: list[dict[str, Any]]) -> dict[str, float] | None:
    """Mean FID over a row's seeds, the seeds' standard deviation, its standard error, and the mean bootstrap SE."""
    import numpy as np

    if not evals:
        return None
    fids = np.array([e["fid"] for e in evals])
    sd = float(fids.std(ddof=1)) if len(fids) > 1 else float("nan")
    boot = [e["fid_bootstrap_std"] for e in evals if "fid_bootstrap_std" in e]
    return {"mean": float(fids.mean()), "seeds": len(fids), "seed_sd": sd, "se": sd / np.sqrt(len(fids)),
            "bootstrap_se": float(np.mean(boot)) if boot else float("nan")}


def ordering_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of the paper's orderings: the FID difference (worse row minus the row claimed better) and its standard
    error from the per-row spreads (sqrt(se_a^2 + se_b^2), the seed SE, or the bootstrap SE where a row has one
    seed). It holds when the difference exceeds twice that, is reversed below minus twice that, else is inside."""
    import math

    by = {r["row"]: r.get("fid") for r in rows}
    out = []
    for claim, better, worse in ORDERINGS:
        a, b = by.get(better), by.get(worse)
        if not a or not b:
            out.append({"claim": claim, "better": better, "worse": worse, "verdict": "not measured"})
            continue
        se = [s["se"] if s["seeds"] > 1 else s["bootstrap_se"] for s in (a, b)]
        diff, se_diff = b["mean"] - a["mean"], math.hypot(*se)
        verdict = "holds" if diff > 2 * se_diff else "reversed" if diff < -2 * se_diff else "inside the spread"
        out.append({"claim": claim, "better": better, "worse": worse, "difference": diff, "se": se_diff,
                    "verdict": verdict})
    return out


def report(n: int) -> dict[str, Any]:
    """Gather every row's results into one JSON and a markdown table (rows not yet run are listed as such);
    each row names the machine it was measured on."""
    from benchmarks._machine import machine_info
    from rissole.checkpoint import load_checkpoint
    from rissole.heads.registry import head

    stage = first_stage()
    recorded = recorded_rows(stage)
    here = machine_info()  # a row's run directory, where its figures come from, is on this machine
    rows = []
    for row in ALL_ROWS:
        d = run_dir(row)
        if row in recorded and not (d / "final" / "config.yaml").is_file():
            # measured in an earlier session whose runs/ is gone; seeds evaluated here since (from the row's
            # shipped twin) are added
            rows.append(with_added_seeds(recorded[row], d, n, here))
            continue
        entry: dict[str, Any] = {"row": row, "label": label(row), "train_args": train_argv(row)}
        if (d / "final" / "config.yaml").is_file():
            ckpt = load_checkpoint(d / "final")
            cfg = ckpt.config
            spec = head(ckpt.kind)
            entry["params"] = spec.parameter_counts(spec.build_model(cfg["model"]))["total"]
            entry["train_seconds"], entry["train_invocations"] = training_seconds(d / "log.csv")
            entry["steps"], entry["batch_size"] = cfg["train"]["steps"], cfg["train"]["batch_size"]
        entry["ddim50"] = [read_json(p) for p in sorted(d.glob(f"eval_ddim50_n{n}_seed*.json"))]
        entry["fid"] = fid_summary(entry["ddim50"])
        entry["ddpm1000"] = [read_json(p) for p in sorted(d.glob(f"eval_ddpm1000_n{n}_seed*.json"))]
        entry["ddim_vs_ddpm"] = sampler_comparison(d)
        entry["timing"] = read_json(RUNS / "timing.json", {}).get(row)
        if measured(entry):
            entry["machine"] = here
        rows.append(entry)
    result = {"benchmark": "paper_table", "machine": here, "n": n, "common": COMMON,
              "base_config": str(BASE_CONFIG.relative_to(ROOT)), "first_stage": stage, "rows": rows,
              "orderings": ordering_verdicts(rows), "previous": previous_tables(stage)}
    write_json_atomic(RESULTS, result)
    table = markdown(rows) + "\n\n" + orderings_markdown(result["orderings"])
    print(table)
    for r in rows:
        for c in r["ddim_vs_ddpm"]:
            print(f"{r['row']}: N={c['n']} seed {c['seed']}: FID DDIM-50 {c['ddim50_fid']:.2f}, DDPM-1000 "
                  f"{c['ddpm1000_fid']:.2f} (ratio {c['ddim_over_ddpm']:.3f})")
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- paper_table:start -->", "<!-- paper_table:end -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        write_text_atomic(readme, head + start + "\n" + table + "\n" + end + rest.split(end, 1)[1])
        print(f"updated the table in {readme}")
    return result


def with_added_seeds(entry: dict[str, Any], d: Path, n: int, here: dict[str, Any]) -> dict[str, Any]:
    """A recorded row with the DDIM-50 seeds evaluated in D (by seed, not recorded yet) added, each named with
    the machine it was measured on, and its FID summary recomputed."""
    have = {e["seed"] for e in entry.get("ddim50", [])}
    added = [e for e in (read_json(p) for p in sorted(d.glob(f"eval_ddim50_n{n}_seed*.json"))) if e["seed"] not in have]
    if not added:
        return entry
    ckpt = checkpoint_of(entry["row"])
    entry = {**entry, "ddim50": sorted([*entry.get("ddim50", []),
                                        *({**e, "machine": here["cpu"],
                                           "checkpoint": str(ckpt.relative_to(ROOT)) if ckpt else None}
                                          for e in added)], key=lambda e: e["seed"])}
    entry["fid"] = fid_summary(entry["ddim50"])
    return entry


def orderings_markdown(orderings: list[dict[str, Any]]) -> str:
    lines = ["| the paper's ordering | FID difference (+: as claimed) | its SE | verdict (2 SE) |", "|---|---:|---:|---|"]
    for o in orderings:
        if "difference" in o:
            lines.append(f"| {o['claim']} | {o['difference']:+.2f} | {o['se']:.2f} | {o['verdict']} |")
        else:
            lines.append(f"| {o['claim']} | - | - | {o['verdict']} |")
    return "\n".join(lines)


def sampler_comparison(d: Path) -> list[dict[str, Any]]:
    """DDIM-50 vs DDPM-1000 FID wherever both were evaluated at the same N and seed (any N)."""
    out = []
    for p in sorted(d.glob("eval_ddpm1000_n*_seed*.json")):
        ddpm = read_json(p)
        ddim = read_json(d / f"eval_ddim50_n{ddpm['n']}_seed{ddpm['seed']}.json", None)
        if ddim is not None:
            out.append({"n": ddpm["n"], "seed": ddpm["seed"], "ddim50_fid": ddim["fid"], "ddpm1000_fid": ddpm["fid"],
                        "ddim_over_ddpm": ddim["fid"] / ddpm["fid"], "network_calls_ratio": 1000 / 50})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    import math

    def fmt(values: list[float], digits: int) -> str:
        return f"{sum(values) / len(values):.{digits}f}" if values else "-"

    def fid(r: dict[str, Any]) -> str:
        s = r.get("fid")
        if not s:
            return "-"
        spread = f" ± {s['seed_sd']:.2f}" if s["seeds"] > 1 else ""
        return f"{s['mean']:.2f}{spread} ({s['seeds']})"

    lines = ["| model | params | FID mean ± sd (seeds) | bootstrap SE | per seed | KID x1e3 | seam score | copy rate "
             "| train min | ms/image DDIM-50 | ms/image DDPM-1000 |",
             "|---|---|---|---:|---|---|---|---|---|---|---|"]
    for r in rows:
        ev = r["ddim50"]
        seams = [e["seams"]["score"] for e in ev if e.get("seams")]
        boot = (r.get("fid") or {}).get("bootstrap_se", float("nan"))
        lines.append("| " + " | ".join([
            r["label"],
            f"{r['params'] / 1e6:.2f}M" if "params" in r else "not trained",
            fid(r),
            "-" if math.isnan(boot) else f"{boot:.2f}",
            " / ".join(f"{e['fid']:.2f}" for e in ev) or "-",
            fmt([e["kid_mean"] * 1e3 for e in ev], 2),
            fmt(seams, 3) if seams else "-",
            fmt([e["copies"]["copy_rate"] for e in ev], 4),
            f"{r['train_seconds'] / 60:.0f}" if r.get("train_seconds") else "-",
            f"{r['timing']['ddim50_s_per_image'] * 1e3:.1f}" if r.get("timing") else "-",
            f"{r['timing']['ddpm1000_s_per_image'] * 1e3:.0f}" if "ddpm1000_s_per_image" in (r.get("timing") or {}) else "-",
        ]) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("train", "eval", "timing", "report"))
    ap.add_argument("--rows", nargs="*", default=ALL_ROWS, help=f"rows to run (default all): {', '.join(ALL_ROWS)}")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="sampling seeds")
    ap.add_argument("--bootstrap", type=int, default=50, help="bootstrap resamples for each seed's FID standard error")
    ap.add_argument("-n", type=int, default=2000, help="samples per seed for FID / KID / seams / copies")
    ap.add_argument("--timing-n", type=int, nargs=2, default=[64, 8], metavar=("DDIM", "DDPM"),
                    help="images timed with DDIM-50 and with DDPM-1000 (timing stage)")
    ap.add_argument("--ddpm-fid", action="store_true", help="also FID with DDPM-1000 (first seed; ~20x the DDIM time)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads for eval (changes samples only by float rounding; timing is always one thread)")
    args = ap.parse_args()
    unknown = set(args.rows) - set(ALL_ROWS)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; known: {', '.join(ALL_ROWS)}")
    if args.stage == "train":
        train(args.rows)
    elif args.stage == "eval":
        for row in args.rows:
            evaluate_row(row, args.seeds, args.n, args.ddpm_fid, args.threads, args.bootstrap)
    elif args.stage == "timing":
        timing(args.rows, *args.timing_n)
    else:
        report(args.n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
