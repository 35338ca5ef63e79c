"""Retrieval core benchmark on real latent blocks of the shipped VQ-GAN (60k Fashion-MNIST train images).

For every backend and key mode: recall@10/@20 against exact search, batched queries/s, single-query
p50/p99 latency, build time, peak RSS during the build, resident index memory and index bytes, over
a sweep of each backend's search-time knobs. Queries are 1,000 held-out test-set latents. Each
backend runs in its own subprocess (same thread count for all) so memory figures are its own.
Also: the cost of reading the k = 10 neighbour blocks of 64 pseudo-queries from the memmap, next
to one forward of the RISSOLE block denoiser on that batch.

    python -m benchmarks.retrieval                       # writes benchmarks/results/retrieval.{json,png}
    python -m benchmarks.retrieval --modes block0 --quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from einops import rearrange

from rissole.retrieval.keys import KeySet, latent_keys, normalise
from rissole_runtime.retrieval.blocks import split_blocks

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# (name, backend, build params, list of search-param settings)
CONFIGS: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = [
    ("exact", "exact", {}, [{}]),
    ("scann (rule)", "scann", {}, [{"reorder": r} for r in (20, 40, 100, 200)]),
    ("scann tree", "scann", {"mode": "tree_ah"},
     [{"leaves_to_search": ls, "reorder": r} for ls in (4, 8, 16, 32) for r in (40, 100)]),
    ("scann tree rerank-memmap", "scann", {"mode": "tree_ah", "rerank": True},
     [{"leaves_to_search": ls, "candidates": c} for ls in (8, 16, 32) for c in (40, 100)]),
    ("faiss-hnsw", "faiss-hnsw", {}, [{"ef_search": e} for e in (16, 32, 64, 128)]),
    ("faiss-ivfpq", "faiss-ivfpq", {}, [{"nprobe": p, "k_factor": f} for p in (16, 64) for f in (8, 32, 128)]),
    ("faiss-ivfpq rerank-memmap", "faiss-ivfpq", {"rerank": True},
     [{"nprobe": p, "candidates": c} for p in (16, 64) for c in (160, 640, 2560)]),
]
SINGLE_QUERIES = 200


def mem_status() -> dict[str, int]:
    """Current and peak resident memory of this process, in bytes (Linux /proc)."""
    out = {}
    for line in open("/proc/self/status"):
        key, _, val = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def run_build(spec: dict[str, Any]) -> dict[str, Any]:
    """Build one index and save it; runs in a fresh process so the peak RSS is the build's own."""
    import gc

    from rissole.retrieval import open_database
    from rissole.retrieval.searchers import make_searcher

    keys = key_set(open_database(spec["db"]), spec["mode"])
    gc.collect()
    base = mem_status()
    reset_peak()
    t0 = time.perf_counter()
    s = make_searcher(spec["backend"], threads=spec["threads"], **spec["build"]).build(keys)
    build_s = time.perf_counter() - t0
    peak = mem_status()["VmHWM"] - base["VmRSS"]
    s.save(spec["index"])
    return {"build_s": build_s, "build_peak_rss_mib": peak / 2**20, "index_bytes": s.index_bytes(spec["index"]),
            "params": dict(s.params)}


def run_search(spec: dict[str, Any]) -> dict[str, Any]:
    """Load a saved index in a fresh process and sweep its search knobs.

    Resident memory is measured against this process before the load, so it is what a
    deployment that loads the index pays (anonymous memory; file-backed pages of the memmap
    are reported apart: the kernel can drop them).
    """
    import gc

    from rissole.retrieval import open_database
    from rissole.retrieval.evaluate import recall_at_k
    from rissole.retrieval.searchers import load_searcher

    keys = key_set(open_database(spec["db"]), spec["mode"])
    data = np.load(spec["truth"])
    queries, truth = data["queries"], data["ids"]
    gc.collect()
    base = mem_status()
    s = load_searcher(spec["index"], keys)
    s.set_search_params(**spec["sweep"][0])
    s.search(queries[:1], 10)
    m = mem_status()
    loaded = {"resident_after_load_anon_mib": (m["RssAnon"] - base["RssAnon"]) / 2**20,
              "resident_after_load_file_mib": (m["RssFile"] - base["RssFile"]) / 2**20}
    points = []
    for sp in spec["sweep"]:
        s.set_search_params(**sp)
        s.search(queries[:50], 10)  # warm-up
        t0 = time.perf_counter()
        ids, _ = s.search(queries, 10)  # scored at the k searched: a k = 20 search refines twice the candidates
        batch_s = time.perf_counter() - t0
        ids20, _ = s.search(queries, 20)
        lat = []
        for i in range(SINGLE_QUERIES):
            t0 = time.perf_counter()
            s.search(queries[i : i + 1], 10)
            lat.append(time.perf_counter() - t0)
        m = mem_status()
        points.append({
            "search_params": sp,
            "recall@10": recall_at_k(ids, truth, 10),
            "recall@20": recall_at_k(ids20, truth, 20),
            "batched_qps": len(queries) / batch_s,
            "single_p50_ms": float(np.percentile(lat, 50) * 1e3),
            "single_p99_ms": float(np.percentile(lat, 99) * 1e3),
            "resident_anon_mib": (m["RssAnon"] - base["RssAnon"]) / 2**20,
            "resident_file_mib": (m["RssFile"] - base["RssFile"]) / 2**20,
        })
    return {**loaded, "points": points}


def run_in_child(step: str, spec: dict[str, Any], env: dict[str, str], tmp: Path) -> dict[str, Any]:
    spec_file = tmp / "spec.json"
    spec_file.write_text(json.dumps(spec))
    log = tmp / "child.log"
    with open(log, "w") as f:
        rc = subprocess.call([sys.executable, "-m", "benchmarks.retrieval", "--child", f"{step}:{spec_file}"],
                             cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"{step} child for {spec['backend']} / {spec['mode']} failed")
    return json.loads(spec_file.with_suffix(".result.json").read_text())


def ensure_data(args: argparse.Namespace) -> None:
    """Encode the train/test latents with the shipped VQ-GAN and build the g=2 database if missing."""
    from rissole.cli.main import main as rissole

    for split, path in (("train", args.latents), ("test", args.queries)):
        if not Path(path).exists():
            assert rissole(["encode", "--source", f"fmnist:{split}", "--out", str(path)]) == 0
    if not (Path(args.db) / "manifest.json").exists():
        assert rissole(["db", "build", str(args.latents), "--out", str(args.db), "--grid", "2"]) == 0


def key_set(db: Any, mode: str) -> KeySet:
    """The database's keys in `mode`: the package's block0 / latent, or all_blocks (AllBlockKeys)."""
    return AllBlockKeys(db) if mode == "all_blocks" else KeySet(db, mode)


def query_keys(z: np.ndarray, grid: int, mode: str) -> np.ndarray:
    """Normalised keys of held-out latents in `mode` (all_blocks: every block of every image, block-major)."""
    if mode != "all_blocks":
        return latent_keys(z, grid, mode)
    return normalise(rearrange(split_blocks(np.asarray(z, dtype=np.float32), grid), "n b c h w -> (b n) (c h w)"))


class AllBlockKeys(KeySet):
    """Every block position of every image as its own key row (b*N rows of d_block; row r is block r // N
    of image r % N): how search grows with n, beyond what sampling needs."""

    def __init__(self, db: Any) -> None:
        self.db, self.mode = db, "all_blocks"
        b, n, d = db.array.shape
        self.n, self.dim = n * b, d

    def raw_rows(self, start: int, stop: int) -> np.ndarray:
        a = self.db.array
        return np.asarray(a.reshape(-1, a.shape[2])[start:stop], dtype=np.float32)

    def gather(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        a = self.db.array
        return normalise(np.take(a.reshape(-1, a.shape[2]), ids.ravel(), axis=0)).reshape(*ids.shape, self.dim)


def ground_truth(db_path: str, mode: str, queries_path: str, n: int, out: Path) -> dict[str, Any]:
    """Held-out query keys and their exact top-20 (the reference), saved for the children."""
    from rissole.latents import open_latents
    from rissole.retrieval import open_database
    from rissole.retrieval.searchers import make_searcher

    db = open_database(db_path)
    keys = key_set(db, mode)
    z = np.asarray(open_latents(queries_path).array[:n])
    q = query_keys(z, db.grid, mode)
    if mode == "all_blocks":  # every block position of the held-out images, n of them at random
        q = q[np.sort(np.random.default_rng(0).choice(len(q), n, replace=False))]
    ids, _ = make_searcher("exact").build(keys).search(q, 20)
    np.savez(out, queries=q, ids=ids)
    return {"rows": keys.n, "dim": keys.dim, "queries": len(q)}


def memmap_read_vs_denoiser(db_path: str, threads: int, batch: int = 64, k: int = 10, repeats: int = 20) -> dict[str, Any]:
    """Time to gather the k neighbour blocks of `batch` pseudo-queries vs one block-denoiser forward."""
    import torch

    from rissole.models.block_unet import BlockDenoiser, BlockDenoiserConfig
    from rissole.retrieval import open_database
    from rissole.retrieval.neighbours import open_table
    from rissole_runtime.retrieval.proposal import PseudoQuerySampler, proposal_from_table

    torch.set_num_threads(threads)
    db = open_database(db_path)
    table = open_table(db, "database")
    train = open_table(db, "train")
    sampler = PseudoQuerySampler(proposal_from_table(train.ids, db.rows), db.rows, m=1.0, seed=0)
    def read(database):  # the whole per-batch retrieval of unconditional sampling
        rows = sampler.sample(batch)
        return database.blocks(np.asarray(table.ids[rows, :k]))  # (batch, k, b, c, h, w)

    read(db)  # warm-up of numpy / the sampler
    warm, cold = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nb = read(db)
        warm.append(time.perf_counter() - t0)
    for _ in range(repeats):  # evict the file from the page cache and map it afresh: every row from disk
        fd = os.open(Path(db_path) / "blocks.npy", os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        fresh = open_database(db_path)
        t0 = time.perf_counter()
        read(fresh)
        cold.append(time.perf_counter() - t0)
        del fresh
    cfg = BlockDenoiserConfig(latent_channels=db.latent_shape[0], latent_size=db.latent_shape[1], grid=db.grid, k=k)
    model = BlockDenoiser(cfg).eval()
    c, h, w = db.block_shape
    n = batch * db.num_blocks
    x = torch.randn(n, c, h, w)
    cond = torch.from_numpy(np.ascontiguousarray(nb.transpose(0, 2, 1, 3, 4, 5)).reshape(n, k, c, h, w))
    t = torch.randint(0, 1000, (n,))
    fwd = []
    with torch.no_grad():
        model(x, t, cond)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, t, cond)
            fwd.append(time.perf_counter() - t0)
    return {
        "batch": batch,
        "k": k,
        "neighbour_blocks_read": list(nb.shape),
        "read_ms_median_page_cache": float(np.median(warm) * 1e3),
        "read_ms_median_after_evicting_page_cache": float(np.median(cold) * 1e3),
        "denoiser_forward_ms_median": float(np.median(fwd) * 1e3),
        "denoiser": "BlockDenoiserConfig defaults (untrained weights: the time does not depend on them)",
        "denoiser_params": sum(p.numel() for p in model.parameters()),
        "cold_read_over_forward": float(np.median(cold) / np.median(fwd)),
    }


def summarise(mode_results: dict[str, Any]) -> dict[str, Any]:
    """The operating points the issue asks about: ScaNN at recall@10 >= 0.95 vs exact; rerank RSS."""
    out: dict[str, Any] = {}
    for mode, res in mode_results.items():
        exact = res["backends"]["exact"]["points"][0]
        s: dict[str, Any] = {"exact_p50_ms": exact["single_p50_ms"], "exact_qps": exact["batched_qps"]}
        for name, r in res["backends"].items():
            ok = [p for p in r["points"] if p["recall@10"] >= 0.95]
            if not ok or name == "exact":
                continue
            fastest = min(ok, key=lambda p: p["single_p50_ms"])
            best_qps = max(ok, key=lambda p: p["batched_qps"])
            s[name] = {
                "p50_ms_at_recall95": fastest["single_p50_ms"],
                "p50_speedup_vs_exact": exact["single_p50_ms"] / fastest["single_p50_ms"],
                "at": fastest["search_params"],
                "recall@10": fastest["recall@10"],
                "qps_at_recall95": best_qps["batched_qps"],
                "qps_ratio_vs_exact": best_qps["batched_qps"] / exact["batched_qps"],
                "resident_anon_mib": fastest["resident_anon_mib"],
            }
        for ram, memmap in (("scann tree", "scann tree rerank-memmap"), ("faiss-ivfpq", "faiss-ivfpq rerank-memmap")):
            if ram in s and memmap in s:  # both reach recall@10 >= 0.95; memory of the loaded index
                a, b = res["backends"][memmap], res["backends"][ram]
                s[f"{memmap} / {ram} resident after load"] = (
                    a["resident_after_load_anon_mib"] / b["resident_after_load_anon_mib"]
                )
        out[mode] = s
    return out


def plot(mode_results: dict[str, Any], path: Path) -> None:
    from benchmarks._plot import Panel, save_panels

    panels = []
    for mode, res in mode_results.items():
        p = Panel(f"{mode}: {res['rows']} rows x {res['dim']} d", "batched queries/s (log)", "recall@10", hline=0.95)
        for name, r in res["backends"].items():
            p.series[name] = [(pt["batched_qps"], pt["recall@10"]) for pt in r["points"]]
        panels.append(p)
    save_panels(panels, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(ROOT / "runs/db/fmnist-train-g2"), help="block database (built if missing)")
    ap.add_argument("--latents", default=str(ROOT / "runs/latents/fmnist-train.npy"), help="train latents (encoded if missing)")
    ap.add_argument("--queries", default=str(ROOT / "runs/latents/fmnist-test.npy"), help="held-out latents used as queries")
    ap.add_argument("--modes", nargs="*", default=["block0", "latent", "all_blocks"], help="key modes")
    ap.add_argument("--n-queries", type=int, default=1000, help="held-out queries per mode")
    ap.add_argument("--threads", type=int, default=1, help="threads for every backend (BLAS, ScaNN, faiss)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these config names; with an existing --out, their entries there are replaced "
                         "and the rest kept (the memmap read figure too)")
    ap.add_argument("--out", default=str(RESULTS / "retrieval.json"), help="results JSON (the plot goes beside it)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        step, spec_file = args.child.split(":", 1)
        spec = json.loads(Path(spec_file).read_text())
        result = run_build(spec) if step == "build" else run_search(spec)
        Path(spec_file).with_suffix(".result.json").write_text(json.dumps(result))
        return 0

    from benchmarks._machine import machine_info
    from rissole_runtime.fileio import write_json_atomic

    ensure_data(args)
    env = {**os.environ, **{v: str(args.threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}}
    mode_results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            truth = Path(tmp) / f"truth-{mode}.npz"
            info = ground_truth(args.db, mode, args.queries, args.n_queries, truth)
            res = {**info, "backends": {}}
            for name, backend, build, sweep in CONFIGS:
                if args.only and name not in args.only:
                    continue
                spec = {"db": args.db, "mode": mode, "truth": str(truth), "backend": backend, "build": build,
                        "sweep": sweep, "threads": args.threads, "index": str(Path(tmp) / "index")}
                print(f"[{mode}] {name} ...", flush=True)
                res["backends"][name] = {}
                for step in ("build", "search"):
                    res["backends"][name].update(run_in_child(step, spec, env, Path(tmp)))
                best = max(res["backends"][name]["points"], key=lambda p: p["recall@10"])
                print(f"    build {res['backends'][name]['build_s']:.1f} s, best recall@10 {best['recall@10']:.3f}", flush=True)
            mode_results[mode] = res
            write_json_atomic(Path(args.out).with_suffix(".partial.json"), mode_results)
    out = Path(args.out)
    if args.only and out.is_file():  # re-measure some backends: keep the others' figures, say which are new
        old = json.loads(out.read_text())
        for mode, res in mode_results.items():
            old["modes"].setdefault(mode, res)["backends"].update(res["backends"])
        old.setdefault("remeasured", []).append({"backends": args.only, "modes": list(mode_results),
                                                 "machine": machine_info()})
        old["summary"] = summarise(old["modes"])
        write_json_atomic(out, old)
        plot(old["modes"], out.with_suffix(".png"))
        out.with_suffix(".partial.json").unlink(missing_ok=True)
        print(json.dumps(old["summary"], indent=1))
        print(f"updated {', '.join(args.only)} in {out} and {out.with_suffix('.png')}")
        return 0
    result = {
        "benchmark": "retrieval",
        "machine": machine_info(),
        "threads": args.threads,
        "database": args.db,
        "queries": f"{args.n_queries} held-out Fashion-MNIST test latents ({args.queries})",
        "modes": mode_results,
        "summary": summarise(mode_results),
        "memmap_read_vs_denoiser": memmap_read_vs_denoiser(args.db, args.threads) if (Path(args.db) / "neighbours" / "database.json").exists() else None,
    }
    write_json_atomic(out, result)
    plot(mode_results, out.with_suffix(".png"))
    out.with_suffix(".partial.json").unlink(missing_ok=True)
    print(json.dumps(result["summary"], indent=1))
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
