"""FID vs parameters per head: RISSOLE, the LDM baseline (g = 1, no retrieval) and RDM at four budgets
spanning 8x (the RDM paper's Fig. 1 and the RISSOLE paper's compactness claim in one picture).

Every row is fitted to its budget by `rissole budget` (rissole.budget.fit_budget: the widest
model_channels within the budget of used parameters) and trained with the paper table's protocol
(benchmarks.paper_table.TRAIN: same steps, batch and learning rate, Fashion-MNIST 32 x 32, the
shipped VQ-GAN), then scored like the table's rows: N = 2,000 DDIM-50 samples per seed against the
first 2,000 test images, FID and KID, two seeds. Resumable stages, one thread per process:

    python -m benchmarks.param_budget train --rows rissole-0.25M ldm-0.25M ...   # runs/param_budget/<row>/
    python -m benchmarks.param_budget eval  --rows ...
    python -m benchmarks.param_budget report     # benchmarks/results/param_budget.{json,md,png}

Run rows two at a time (two queues, one per core): on the 2-core reference machine a row trained in
6-41 minutes on one thread and each FID seed took about 16 minutes, so the 12 rows took about 4.5 hours
of wall time (the report prints the measured sum). runs/ does not
travel between machines, so the report keeps the rows recorded in results/param_budget.json (when their
fitted config is unchanged), and a row whose fitted config is exactly a paper-table row's (same model,
data, schedule and training; only train.max_params differs) takes that row's recorded seeds instead of
being trained twice.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks import paper_table

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "param_budget"
RESULTS = ROOT / "benchmarks" / "results" / "param_budget.json"
BUDGETS = {"0.25M": 250_000, "0.5M": 500_000, "1M": 1_000_000, "2M": 2_000_000}
HEADS = {  # head: (label, base config, overrides)
    "rissole": ("RISSOLE (g = 2, k = 10)", paper_table.BASE_CONFIG, []),
    "ldm": ("LDM (g = 1, no retrieval)", paper_table.BASE_CONFIG, ["model.grid=1", "model.retrieval=false"]),
    "rdm": ("RDM (k = 4, VQ-latent neighbours)", paper_table.RDM_CONFIG, []),
}
ROWS = [f"{h}-{b}" for h in HEADS for b in BUDGETS]
SEEDS = (0, 1)


def parts(row: str) -> tuple[str, str]:
    head, _, budget = row.rpartition("-")
    if head not in HEADS or budget not in BUDGETS:
        raise SystemExit(f"unknown row {row!r}; rows are {', '.join(ROWS)}")
    return head, budget


def resolved(row: str) -> Path:
    """The row's fitted config (rissole.budget.fit_budget + train.max_params), written before its training starts.
    Refitted while the row has no run, so a changed base config (e.g. a new first stage) reaches it; a row
    whose run exists keeps the config it was trained with, and a base that has changed since is refused."""
    import yaml

    from rissole.budget import fit_budget, resolved_config
    from rissole.config import apply_overrides, load_config
    from rissole_runtime.fileio import write_text_atomic

    head, budget = parts(row)
    path = RUNS / row / "config.yaml"
    _, base, overrides = HEADS[head]
    cfg = apply_overrides(load_config(base), [*paper_table.TRAIN, *overrides])
    fitted = resolved_config(cfg, fit_budget(cfg, BUDGETS[budget]), BUDGETS[budget])
    if path.is_file() and yaml.safe_load(path.read_text()) == fitted:
        return path
    if (RUNS / row / "run").exists():
        raise SystemExit(f"{path}: the row was trained from a config that {base} no longer gives (e.g. another "
                         f"first stage); move {RUNS / row} away to retrain it, or restore the base config.")
    write_text_atomic(path, yaml.safe_dump(fitted, sort_keys=False))
    return path


def comparable(config: dict[str, Any]) -> dict[str, Any]:
    """What decides a trained model: the config without the budget check (train.max_params) and the kind tag."""
    import copy

    out = copy.deepcopy(config)
    out.pop("kind", None)
    out.get("train", {}).pop("max_params", None)
    return out


def fitted(row: str) -> dict[str, Any]:
    """The row's fitted config (see resolved)."""
    import yaml

    return yaml.safe_load(resolved(row).read_text())


def paper_table_twin(config: dict[str, Any]) -> str | None:
    """The paper-table row trained from exactly this fitted config, if one is (its seeds are this row's)."""
    mine = comparable(config)
    for other in paper_table.ALL_ROWS:
        if comparable(paper_table.row_config(other)) == mine:
            return other
    return None


def train(rows: list[str]) -> None:
    for row in rows:
        twin = paper_table_twin(fitted(row))
        if twin is not None and not (RUNS / row / "run").exists():
            print(f"{row}: the same config as paper-table row {twin!r}; its recorded seeds are used, not trained again")
            continue
        paper_table.train_one(row, RUNS / row / "run", ["--config", str(resolved(row))], RUNS / row)


def evaluate(rows: list[str], n: int) -> None:
    import numpy as np
    import torch

    from rissole.heads.pipeline import SamplingOptions
    from rissole.heads.registry import load_pipeline
    from rissole.metrics import evaluate as fid
    from rissole.paths import ensure_database_for

    torch.set_num_threads(1)
    for row in rows:
        ckpt = RUNS / row / "run" / "final"
        if not (ckpt / "config.yaml").is_file():
            print(f"{row}: not trained yet, skipped")
            continue
        if parts(row)[0] == "rdm":
            ensure_database_for(paper_table.ROOT / "checkpoints" / "rdm-fmnist-vq")  # the RDM database
        pipe = load_pipeline(ckpt, device="cpu")
        for seed in SEEDS:
            path = RUNS / row / f"eval_n{n}_seed{seed}.json"
            if path.is_file():
                continue
            t0 = time.time()
            images, seconds = paper_table.sample(pipe, n, seed, SamplingOptions(steps=50), batch=250)
            m = fid(images, ref="fmnist:test", n=n, with_kid=True, progress=False, bootstrap=50)
            res = {"row": row, "seed": seed, "n": n, "fid": m["fid"], "kid_mean": m["kid_mean"], "kid_std": m["kid_std"],
                   "fid_bootstrap_std": m["fid_bootstrap_std"], "sampling_s": seconds,
                   "eval_wall_s": time.time() - t0}  # sampling + Inception features + FID/KID/bootstrap
            paper_table.write_json_atomic(path, res)
            np.save(RUNS / row / f"samples_n{n}_seed{seed}.npy", images)
            print(f"{row} seed {seed}: FID {res['fid']:.2f}", flush=True)


def row_entry(row: str, n: int, recorded: dict[str, dict[str, Any]], table: dict[str, dict[str, Any]],
              here: dict[str, Any]) -> dict[str, Any]:
    """One row's figures: from its run directory on this machine; else as recorded in RESULTS (a session whose
    runs/ is gone), when its fitted config is unchanged; else a paper-table twin's recorded seeds (`table`: the
    paper table's rows by name); else not run."""
    from rissole.budget import count

    head, budget = parts(row)
    config = fitted(row)
    entry: dict[str, Any] = {"row": row, "head": head, "label": HEADS[head][0], "budget": BUDGETS[budget],
                             "parameters": count(config)["total"], "config": comparable(config)}
    evals = [e for e in (paper_table.read_json(RUNS / row / f"eval_n{n}_seed{s}.json") for s in SEEDS) if e]
    if evals:
        wall = paper_table.read_json(RUNS / row / "wall.json")
        entry.update(source="trained here", evals=evals, machine=here,
                     train_wall_s=wall["seconds"] if wall else None)
    elif row in recorded and recorded[row].get("source") == "trained here" \
            and recorded[row]["config"] == entry["config"]:
        return recorded[row]  # (a twin's record is not kept: its seeds are re-read from the paper table below)
    elif (twin := paper_table_twin(config)) is not None:
        twin_row = table.get(twin, {})
        evals = [e for e in twin_row.get("ddim50", []) if e["seed"] in SEEDS and e["n"] == n]
        entry.update(source=f"paper-table row {twin}", evals=evals, machine=twin_row.get("machine"),
                     train_wall_s=twin_row.get("train_seconds"))
    else:
        entry.update(source="not run", evals=[])
    entry["fid"] = paper_table.fid_summary(entry["evals"])
    if entry["evals"]:
        entry["kid_mean"] = sum(e["kid_mean"] for e in entry["evals"]) / len(entry["evals"])
    return entry


def sweep_wall(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The sweep's measured wall time: training of every distinct model (twins counted once) and evaluation of
    every seed whose evaluation was timed (eval_wall_s; older seeds recorded only their sampling time)."""
    trained = {r["source"] if r["source"].startswith("paper-table") else r["row"]: r["train_wall_s"]
               for r in rows if r.get("train_wall_s")}
    evals = [e for r in rows for e in r["evals"]]
    timed = [e["eval_wall_s"] for e in evals if "eval_wall_s" in e]
    return {"train_s": sum(trained.values()), "trained_rows": len(trained), "eval_s": sum(timed),
            "timed_evals": len(timed), "untimed_evals": len(evals) - len(timed),
            "eval_s_per_seed": sum(timed) / len(timed) if timed else float("nan")}


def report(n: int) -> dict[str, Any]:
    from benchmarks._machine import machine_info
    from benchmarks._plot import Panel, save_panels
    from rissole_runtime.fileio import write_text_atomic

    old = paper_table.read_json(RESULTS, {"rows": []})
    recorded = {r["row"]: r for r in old["rows"]} if old.get("n", n) == n else {}
    table = {r["row"]: r for r in paper_table.read_json(paper_table.RESULTS, {"rows": []})["rows"]}
    here = machine_info()
    rows = [row_entry(row, n, recorded, table, here) for row in ROWS]
    series: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        if r["fid"]:
            series.setdefault(r["label"], []).append((r["parameters"], r["fid"]["mean"]))
    res = {"benchmark": "param_budget", "machine": here, "n": n, "rows": rows, "wall": sweep_wall(rows),
           "protocol": {"train": paper_table.TRAIN, "sampler": "ddim 50", "reference": f"first {n} fmnist:test",
                        "seeds": list(SEEDS)},
           "command": "python -m benchmarks.param_budget train/eval/report"}
    md = ["| head | budget | used parameters | FID (N = 2,000): mean ± seed SD | seeds | bootstrap SE | KID x1e3 | "
          "train wall | source |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        f = r["fid"]
        if f is None:
            md.append(f"| {r['label']} | {r['budget']:,} | {r['parameters']:,} | not run | 0 | - | - | - | - |")
            continue
        sd = f"{f['seed_sd']:.2f}" if f["seeds"] > 1 else "-"
        wall = f"{r['train_wall_s'] / 60:.0f} min" if r.get("train_wall_s") else "-"
        md.append(f"| {r['label']} | {r['budget']:,} | {r['parameters']:,} | {f['mean']:.2f} ± {sd} | {f['seeds']} | "
                  f"{f['bootstrap_se']:.2f} | {r['kid_mean'] * 1e3:.2f} | {wall} | {r['source']} |")
    w = res["wall"]
    md.append(f"\nSweep wall time, one thread per process: training {w['train_s'] / 3600:.1f} h over {w['trained_rows']} "
              f"trained models; evaluation (sampling + Inception + FID/KID) {w['eval_s'] / 3600:.1f} h over "
              f"{w['timed_evals']} timed seeds ({w['eval_s_per_seed'] / 60:.0f} min per seed; seeds scored before "
              f"evaluation was timed: {w['untimed_evals']}).")
    if series:
        save_panels([Panel("FID (N = 2,000, mean of seeds) vs used parameters", "parameters (log)", "FID",
                           series, xlog=True, join="all")], RESULTS.with_suffix(".png"))
    paper_table.write_json_atomic(RESULTS, res)
    write_text_atomic(RESULTS.with_suffix(".md"), "\n".join(md) + "\n")
    print("\n".join(md))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage", choices=("train", "eval", "report", "configs"))
    ap.add_argument("--rows", nargs="*", default=ROWS, help=f"rows (default all): {' '.join(ROWS)}")
    ap.add_argument("-n", type=int, default=2000, help="FID samples per seed")
    args = ap.parse_args()
    if args.stage == "configs":  # fit every row's config and print its parameters (seconds)
        from rissole.budget import count
        from rissole.config import load_config

        for row in args.rows:
            print(f"{row}: {count(load_config(resolved(row)))['total']:,} used parameters")
    elif args.stage == "train":
        train(args.rows)
    elif args.stage == "eval":
        evaluate(args.rows, args.n)
    else:
        report(args.n)


if __name__ == "__main__":
    main()
