"""Few-step solvers vs DDIM on the shipped RISSOLE and RDM: ODE error, FID vs network calls, latency.

    python -m benchmarks.solvers error                      # latent error vs a 1000-step reference, every
                                                            # solver x spacing x calls (cheap: picks the spacing)
    OMP_NUM_THREADS=1 python -m benchmarks.solvers fid --queue benchmarks/solvers_queue.txt
                                                            # FID at N = 2,000, one point at a time, in the
                                                            # order of the queue file (re-read after every point)
    python -m benchmarks.solvers latency --bundle B --sampler dpmpp2m --steps 15   # rissole-run, DDIM-50 vs it
    python -m benchmarks.solvers report                     # results JSON, plot, README table
    OMP_NUM_THREADS=1 python -m benchmarks.solvers int8-fid --fp32 B --int8 B8   # FID of both bundles' runtime
                                                            # samples, same rows and noise (-> int8_fid.json)

A queue line is `MODEL SAMPLER CALLS [SPACING]`, e.g. `rissole dpmpp2m 15 trailing`; MODEL is rissole
(checkpoints/rissole-fmnist-g2) or rdm (checkpoints/rdm-fmnist-vq). FID samples are drawn as the paper
table's are (benchmarks/paper_table.py: pseudo-queries from p_D with seed 0, batches of 250 with noise
seed seed * 100_003 + start) and scored against the first N test images with `rissole.metrics.evaluate`
(Inception reference statistics cached once on disk).
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

from rissole.fileio import write_json_atomic, write_text_atomic

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "solvers"
RESULTS = ROOT / "benchmarks" / "results"
MODELS = {"rissole": ROOT / "checkpoints" / "rissole-fmnist-g2", "rdm": ROOT / "checkpoints" / "rdm-fmnist-vq"}
CALLS = (5, 8, 10, 15, 20, 25)


def load(model: str) -> Any:
    from rissole.heads.registry import load_pipeline
    from rissole.paths import ensure_database_for

    ensure_database_for(MODELS[model])
    return load_pipeline(MODELS[model], device="cpu")


def options(name: str, calls: int, spacing: str | None, seed: int = 0) -> Any:
    from rissole.heads.pipeline import SamplingOptions

    return SamplingOptions(sampler=name, steps=calls, seed=seed, spacing=None if name == "ddim" else spacing)


def latents(pipe: Any, name: str, calls: int, spacing: str | None, rows: Any, seed: int = 0) -> Any:
    """Scaled latents of the pseudo-query rows from one sampler, fixed noise (NoiseSource(seed))."""
    _, lat = pipe.generate(pipe.neighbour_ids(rows), options(name, calls, spacing, seed))
    return lat.numpy() * float(pipe.config["scale_factor"])


def error(n: int, out: Path, models: list[str]) -> dict[str, Any]:
    """RMS distance (scaled latent) of each solver's sample to DDIM-1000's from the same x_T: the ODE's
    discretisation error, which decides the spacing without an FID per spacing."""
    import numpy as np
    import torch

    from benchmarks._machine import machine_info
    from rissole_runtime.diffusion.solvers import SPACINGS

    torch.set_num_threads(1)
    result: dict[str, Any] = {"benchmark": "solver_error", "models": {}}
    if out.is_file():  # other models' entries are kept
        result = json.loads(out.read_text())
    for model in models:
        pipe = load(model)
        rows = pipe.pseudo_queries(n, 1.0, 0)
        ref = latents(pipe, "ddim", 1000, None, rows)
        check = latents(pipe, "dpmpp2m", 500, "linspace", rows)
        entry: dict[str, Any] = {"reference": "ddim-1000", "n": n, "machine": machine_info(), "rms_reference": float(np.sqrt((ref**2).mean())),
                                 "dpmpp2m500_vs_reference": float(np.sqrt(((check - ref) ** 2).mean())), "points": []}
        for name in ("ddim", "dpmpp2m", "unipc"):
            for spacing in (("linspace",) if name == "ddim" else SPACINGS):
                for calls in (*CALLS, 50):
                    lat = latents(pipe, name, calls, spacing, rows)
                    rms = float(np.sqrt(((lat - ref) ** 2).mean()))
                    entry["points"].append({"sampler": name, "spacing": spacing, "calls": calls, "rms_error": rms})
                    print(f"{model} {name}-{calls} {spacing}: rms error {rms:.4f}", flush=True)
        result["models"][model] = entry
        write_json_atomic(out, result)
    return result


def point_path(model: str, name: str, calls: int, spacing: str, n: int, seed: int) -> Path:
    return RUNS / f"fid_{model}_{name}{calls}_{spacing}_n{n}_seed{seed}.json"


def read_queue(path: Path) -> list[tuple[str, str, int, str]]:
    from rissole_runtime.diffusion.solvers import DEFAULT_SPACING

    out = []
    for line in path.read_text().splitlines():
        parts = line.split("#")[0].split()
        if parts:
            model, name, calls = parts[0], parts[1], int(parts[2])
            out.append((model, name, calls, parts[3] if len(parts) > 3 else ("linspace" if name == "ddim" else DEFAULT_SPACING)))
    return out


def fid_point(model: str, name: str, calls: int, spacing: str, n: int, seed: int) -> dict[str, Any]:
    import numpy as np
    import torch

    from benchmarks import paper_table
    from benchmarks._machine import machine_info
    from rissole.metrics import evaluate

    torch.set_num_threads(1)
    pipe = load(model)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    images, seconds = paper_table.sample(pipe, n, seed, options(name, calls, spacing), batch=250)
    t1 = time.perf_counter()
    metrics = evaluate(images, ref="fmnist:test", n=n, with_kid=True, progress=False)
    res = {"model": model, "checkpoint": str(MODELS[model].relative_to(ROOT)), "sampler": name, "calls": calls,
           "spacing": spacing, "n": n, "seed": seed, "fid": metrics["fid"], "kid_mean": metrics["kid_mean"],
           "kid_std": metrics["kid_std"], "sampling_s": t1 - t0, "inception_s": time.perf_counter() - t1,
           "loadavg_start": load0, "loadavg_end": os.getloadavg(), "machine": machine_info()}
    np.save(RUNS / f"samples_{model}_{name}{calls}_{spacing}_n{n}_seed{seed}.npy", images)
    return res


def fid(queue: Path, n: int, seed: int) -> None:
    RUNS.mkdir(parents=True, exist_ok=True)
    while True:
        todo = [p for p in read_queue(queue) if not point_path(*p, n, seed).is_file()]
        if not todo:
            return
        model, name, calls, spacing = todo[0]
        print(f"{time.strftime('%H:%M:%S')} {model} {name}-{calls} {spacing}: sampling N={n}", flush=True)
        res = fid_point(model, name, calls, spacing, n, seed)
        write_json_atomic(point_path(model, name, calls, spacing, n, seed), res)
        print(f"{time.strftime('%H:%M:%S')} {model} {name}-{calls} {spacing}: FID {res['fid']:.2f} "
              f"(sampling {res['sampling_s']:.0f} s, inception {res['inception_s']:.0f} s)", flush=True)


def latency(bundle: str, sampler: str, steps: int, repeats: int, int8: str | None) -> dict[str, Any]:
    """Whole-sample time of `rissole-run` (1 and 16 images, one thread): DDIM-50 and the solver (and the
    int8 bundle's solver) interleaved in one run, so all see the same machine load; median over `repeats`.
    Timed: the sampling networks + decode as rissole-run reports them, and the process's wall time."""
    import re
    import statistics

    from benchmarks._machine import machine_info

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs: dict[str, list[float]] = {}
    wall: dict[str, list[float]] = {}
    cases = [("fp32", bundle, "ddim", 50), ("fp32", bundle, sampler, steps)]
    if int8:
        cases += [("int8", int8, "ddim", 50), ("int8", int8, sampler, steps)]
    load0 = os.getloadavg()
    for _ in range(repeats):
        for n in (1, 16):
            for prec, path, name, calls in cases:
                argv = [sys.executable, "-m", "rissole_runtime.cli", path, "-n", str(n), "--sampler", name,
                        "--steps", str(calls), "--threads", "1", "--quiet", "--out", str(RUNS / "latency.png")]
                t0 = time.perf_counter()
                out = subprocess.run(argv, check=True, env=env, capture_output=True, text=True).stdout
                key = f"{prec}_{name}{calls}_n{n}"
                wall.setdefault(key, []).append(time.perf_counter() - t0)
                m = re.search(r"sampling networks ([0-9.]+) s .*decode ([0-9.]+) s", out)
                runs.setdefault(key, []).append(float(m.group(1)) + float(m.group(2)))
    med = {k: statistics.median(v) for k, v in runs.items()}
    ratios = {f"n{n}": med[f"fp32_ddim50_n{n}"] / med[f"fp32_{sampler}{steps}_n{n}"] for n in (1, 16)}
    if int8:
        ratios.update({f"int8_vs_fp32_{sampler}{steps}_n{n}": med[f"fp32_{sampler}{steps}_n{n}"]
                       / med[f"int8_{sampler}{steps}_n{n}"] for n in (1, 16)})
    res = {"benchmark": "solver_latency", "machine": machine_info(), "bundle": bundle, "int8_bundle": int8,
           "repeats": repeats, "what": "sampling networks + decode seconds of one rissole-run process, as it "
                                       "reports them (median), one thread; wall_s: the whole process",
           "seconds": runs, "median_s": med, "wall_s": wall, "ddim50_over_solver": ratios,
           "loadavg_start": load0, "loadavg_end": os.getloadavg()}
    print(json.dumps({"median_s": med, "ratios": ratios}, indent=1))
    return res


def report() -> None:
    """benchmarks/results/solvers.json, solvers.png and the markdown table from the measured points."""
    from benchmarks._machine import machine_info
    from benchmarks._plot import Panel, save_panels

    key = lambda p: (p["model"], p["sampler"], p["calls"], p["spacing"], p["n"], p["seed"])  # noqa: E731
    old = json.loads((RESULTS / "solvers.json").read_text()).get("points", []) if (RESULTS / "solvers.json").is_file() else []
    merged = {key(p): p for p in old}  # points measured in earlier sessions (their runs/ is gone with the machine)
    merged.update({key(p): p for p in (json.loads(f.read_text()) for f in sorted(RUNS.glob("fid_*.json")))})
    points = [merged[k] for k in sorted(merged)]
    for p in points:
        p.pop("machine", None)
    res: dict[str, Any] = {"benchmark": "solvers_fid", "machine": machine_info(), "points": points,
                           "command": "OMP_NUM_THREADS=1 python -m benchmarks.solvers fid --queue benchmarks/solvers_queue.txt"}
    rows = ["| model | sampler | spacing | calls | FID (N = 2,000) | / DDIM-50 | KID x1e3 |", "|---|---|---|---:|---:|---:|---:|"]
    panels = []
    for model in MODELS:
        mine = [p for p in points if p["model"] == model]
        base = next((p["fid"] for p in mine if p["sampler"] == "ddim" and p["calls"] == 50), None)
        for p in sorted(mine, key=lambda p: (p["sampler"], p["calls"])):
            rel = f"{p['fid'] / base:.3f}" if base else "-"
            rows.append(f"| {model} | {p['sampler']} | {p['spacing']} | {p['calls']} | {p['fid']:.2f} | {rel} | "
                        f"{p['kid_mean'] * 1e3:.2f} |")
        if mine:
            series = {}
            for p in mine:
                series.setdefault(p["sampler"], []).append((p["calls"], -p["fid"]))
            panels.append(Panel(f"{model}: -FID (N = 2,000) vs network calls", "network calls", "-FID",
                                {k: sorted(v) for k, v in series.items()}, xlog=True,
                                hline=-base * 1.05 if base else None))
    res["table"] = rows
    err_path = RESULTS / "solver_error.json"
    if err_path.is_file():  # the ODE-error sweep as a table: rows sampler / spacing, columns calls
        err = json.loads(err_path.read_text())
        for model, entry in err["models"].items():
            calls = sorted({p["calls"] for p in entry["points"]})
            rows += ["", f"RMS latent error vs DDIM-1000, {model}, {entry.get('n', err.get('n'))} samples (reference RMS "
                         f"{entry['rms_reference']:.3f}; DPM-Solver++-500 vs it {entry['dpmpp2m500_vs_reference']:.4f}):",
                     "", "| sampler | spacing | " + " | ".join(f"{c} calls" for c in calls) + " |",
                     "|---|---|" + "---:|" * len(calls)]
            cells: dict[tuple[str, str], dict[int, float]] = {}
            for p in entry["points"]:
                cells.setdefault((p["sampler"], p["spacing"]), {})[p["calls"]] = p["rms_error"]
            for (name, spacing), by in cells.items():
                rows.append(f"| {name} | {spacing} | " + " | ".join(f"{by[c]:.4f}" if c in by else "-" for c in calls) + " |")
            panels.append(Panel(f"{model}: RMS latent error vs DDIM-1000 ({entry.get('n', err.get('n'))} samples)", "network calls",
                                "-RMS error", {f"{n} {s}": sorted((c, -e) for c, e in by.items())
                                               for (n, s), by in cells.items()}, xlog=True,
                                hline=-next(p["rms_error"] for p in entry["points"]
                                            if p["sampler"] == "ddim" and p["calls"] == 50)))
    if panels:
        save_panels(panels, RESULTS / "solvers.png")
    write_json_atomic(RESULTS / "solvers.json", res)
    write_text_atomic(RESULTS / "solvers.md", "\n".join(rows) + "\n")
    print("\n".join(rows))


def int8_fid(fp32: str, int8: str, sampler: str, steps: int, n: int, seed: int) -> dict[str, Any]:
    """FID and KID at N = n of `rissole-run`'s samples from the fp32 and the int8 bundle, batch by batch with
    the runtime's batch seeds (rissole_runtime.batches), so both see the same pseudo-queries and noise."""
    import numpy as np

    from benchmarks._machine import machine_info
    from rissole.metrics import evaluate
    from rissole_runtime.batches import generate_in_batches
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    res: dict[str, Any] = {"benchmark": "int8_fid", "machine": machine_info(), "sampler": sampler, "steps": steps,
                           "n": n, "seed": seed, "reference": "fmnist:test (first n)",
                           "command": f"OMP_NUM_THREADS=1 python -m benchmarks.solvers int8-fid --fp32 {fp32} --int8 {int8} "
                                      f"--sampler {sampler} --steps {steps} -n {n}"}
    images = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        edge = EdgeSampler(open_bundle(path), "cpu", threads=1)
        parts: list[np.ndarray] = []

        def store(sl: slice, x: np.ndarray) -> None:
            parts.append(x)

        t0 = time.perf_counter()
        generate_in_batches(n, seed, lambda sl, sd: edge.generate(sl.stop - sl.start, steps, sd, sampler=sampler)[0],
                            store)
        images[name] = np.concatenate(parts)
        t1 = time.perf_counter()
        m = evaluate(images[name], ref="fmnist:test", n=n, with_kid=True, progress=False)
        res[name] = {"bundle": path, "fid": m["fid"], "kid_mean": m["kid_mean"], "sampling_s": t1 - t0,
                     "inception_s": time.perf_counter() - t1}
        print(f"{name}: FID {m['fid']:.2f} ({sampler}-{steps}, N = {n})", flush=True)
    diff = np.abs(images["int8"].astype(np.int16) - images["fp32"].astype(np.int16))
    res["fid_change"] = res["int8"]["fid"] / res["fp32"]["fid"] - 1.0
    res["mean_abs_pixel_diff"], res["max_abs_pixel_diff"] = float(diff.mean()), int(diff.max())
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("error", help="latent error vs DDIM-1000 for every solver, spacing and call count")
    e.add_argument("-n", type=int, default=64, help="samples")
    e.add_argument("--out", default=str(RESULTS / "solver_error.json"))
    e.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    f = sub.add_parser("fid", help="FID points from a queue file, one at a time")
    f.add_argument("--queue", default=str(ROOT / "benchmarks" / "solvers_queue.txt"),
                   help="queue file, most decisive points first; re-read after every point, done points skipped")
    f.add_argument("-n", type=int, default=2000)
    f.add_argument("--seed", type=int, default=0)
    lt = sub.add_parser("latency", help="rissole-run DDIM-50 vs a solver, 1 and 16 images, one thread")
    lt.add_argument("--bundle", required=True)
    lt.add_argument("--sampler", default="dpmpp2m")
    lt.add_argument("--steps", type=int, default=15)
    lt.add_argument("--repeats", type=int, default=5)
    lt.add_argument("--int8", default=None, help="also the int8 bundle (rissole-export --int8)")
    lt.add_argument("--out", default=str(RESULTS / "solver_latency.json"))
    sub.add_parser("report", help="gather the FID points into results JSON, plot, table")
    q = sub.add_parser("int8-fid", help="FID of the fp32 and the int8 bundle's runtime samples, same rows and noise")
    q.add_argument("--fp32", required=True, help="fp32 bundle")
    q.add_argument("--int8", required=True, help="int8 bundle of the same checkpoint (rissole-export --int8)")
    q.add_argument("--sampler", default="dpmpp2m")
    q.add_argument("--steps", type=int, default=15)
    q.add_argument("-n", type=int, default=2000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default=str(RESULTS / "int8_fid.json"))
    args = ap.parse_args()
    if args.cmd == "error":
        error(args.n, Path(args.out), args.models)
    elif args.cmd == "fid":
        fid(Path(args.queue), args.n, args.seed)
    elif args.cmd == "int8-fid":
        write_json_atomic(Path(args.out), int8_fid(args.fp32, args.int8, args.sampler, args.steps, args.n, args.seed))
    elif args.cmd == "latency":
        RUNS.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(args.out), latency(args.bundle, args.sampler, args.steps, args.repeats, args.int8))
    else:
        report()


if __name__ == "__main__":
    main()
