"""Edge deployment figures: onnxruntime CPU vs PyTorch eager per denoiser step (same threads, same
run, interleaved), whole-sample latency of the torch-free runtime, its peak RSS with the database at
1x and 10x rows, the bundle size without the database, and fp16 vs fp32.

    python -m benchmarks.edge --threads 1      # writes benchmarks/results/edge.json

The shipped model (g = 2, so b = 4 blocks) samples max_samples = 16 images per call: a denoiser
step sees 64 blocks (128 with guidance). Timings alternate torch and onnxruntime call by call,
so load from other processes on the machine hits both alike; medians are reported.
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
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median seconds of each function, called in turn `repeats` times after one warm-up each."""
    for f in fns.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def ort_session(path: Path, threads: int, level: str = "all", spinning: bool = True):  # noqa: ANN201
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.graph_optimization_level = {"basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                                     "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                                     "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}[level]
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def step_latency(pipe, bundle: Path, threads: int, repeats: int) -> dict[str, object]:  # noqa: ANN001
    """One denoiser call at the sampler's batch (and at other batches), ORT vs torch eager."""
    import torch

    from rissole_export.graphs import EpsDenoiserGraph

    graph = EpsDenoiserGraph(pipe.model, pipe.schedule).eval()
    rng = np.random.default_rng(0)
    k, (c, s, _) = pipe.k, pipe.db.block_shape
    out: dict[str, object] = {}
    sess = {lvl: ort_session(bundle / "denoiser.onnx", threads, lvl) for lvl in ("basic", "extended", "all")}
    for images, guided in ((1, False), (16, False), (16, True)):
        n = images * pipe.model.config.num_blocks * (2 if guided else 1)
        feed = {"x": rng.standard_normal((n, c, s, s), dtype=np.float32), "t": rng.integers(0, 1000, n),
                "neighbours": rng.standard_normal((n, k, c, s, s), dtype=np.float32)}
        tt = {key: torch.from_numpy(v) for key, v in feed.items()}

        def run_torch() -> object:
            with torch.no_grad():
                return graph(tt["x"], tt["t"], tt["neighbours"])

        fns: dict[str, Callable[[], object]] = {"torch_eager": run_torch}
        fns.update({f"ort_{lvl}": (lambda se=se: se.run(None, feed)) for lvl, se in sess.items()})
        med = interleaved(fns, repeats)
        out[f"batch_{n}"] = {"images": images, "guidance_doubled": guided,
                             **{f"{key}_ms": v * 1e3 for key, v in med.items()},
                             "speedup_ort_all_over_torch": med["torch_eager"] / med["ort_all"]}
        print(f"step batch {n}: {out[f'batch_{n}']}", flush=True)
    return out


def op_profile(bundle: Path, threads: int, batch: int) -> dict[str, float]:
    """Share of onnxruntime's node time per op type at `batch` (why it is or is not faster)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    with tempfile.TemporaryDirectory() as d:
        opts.profile_file_prefix = str(Path(d) / "ort")
        sess = ort.InferenceSession(str(bundle / "denoiser.onnx"), opts, providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        feed = {"x": rng.standard_normal((batch, 10, 4, 4), dtype=np.float32), "t": rng.integers(0, 1000, batch),
                "neighbours": rng.standard_normal((batch, 10, 10, 4, 4), dtype=np.float32)}
        for _ in range(10):
            sess.run(None, feed)
        events = json.loads(Path(sess.end_profiling()).read_text())
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
            by_op[op] = by_op.get(op, 0.0) + e["dur"]
    total = sum(by_op.values())
    return {op: round(v / total, 4) for op, v in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]}


def whole_sample(pipe, bundle: Path, threads: int, repeats: int) -> dict[str, object]:  # noqa: ANN001
    """Seconds for n images, DDIM-50: the torch-free runtime vs the PyTorch pipeline, same noise and rows."""
    import torch

    from rissole_runtime.diffusion.schedule import DDIMSampler
    from rissole.heads.rissole.sampling import sample_blocks
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    edge = EdgeSampler(open_bundle(bundle), "cpu", threads)
    sampler = DDIMSampler(pipe.schedule, 50)
    scale = np.float32(pipe.config["scale_factor"])
    out: dict[str, object] = {}
    for n in (1, 16):
        rows = edge.pseudo_queries(n, 1.0, 0)
        x_T = edge.initial_noise(n, 0)

        def runtime() -> np.ndarray:
            return edge.decode(edge.sample_latents(edge.neighbours(rows), x_T, sampler))

        def pytorch() -> np.ndarray:
            nb = torch.from_numpy(edge.neighbours(rows))
            lat = sample_blocks(pipe.model, sampler, nb, n, torch.Generator(), x_T=torch.from_numpy(x_T)) / scale
            return pipe.decode(lat)

        med = interleaved({"runtime_ort": runtime, "pytorch": pytorch}, repeats)
        diff = int(np.abs(runtime().astype(int) - pytorch().astype(int)).max())
        out[f"n{n}"] = {"runtime_ort_s": med["runtime_ort"], "pytorch_s": med["pytorch"],
                        "runtime_ms_per_image": med["runtime_ort"] / n * 1e3,
                        "max_abs_pixel_diff_runtime_vs_pytorch": diff}
        print(f"whole sample n={n}: {out[f'n{n}']}", flush=True)
    return out


# Runs rissole-run in-process, then prints the process's own high-water mark. VmHWM belongs to the
# address space exec created, so unlike the wait4 rusage (ru_maxrss survives exec and starts at the
# forking parent's size: a 2.9 GB benchmark process read as 2.9 GB for both databases) it counts
# only the runtime.
RSS_PROBE = """import sys
from rissole_runtime.cli import main
code = main(sys.argv[1:])
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]
print('VmHWM_kB', hwm)
sys.exit(code)
"""


# The same probe with the runtime's database gathered through the memory map (what it did before its
# positional reads), for the before / after comparison.
RSS_PROBE_MAPPED = """import rissole_runtime.bundle as bundle
from rissole.retrieval.database import open_database
bundle.open_database = lambda path, positional_reads=False: open_database(path)
""" + RSS_PROBE


def peak_rss_mb(bundle: Path, n: int, threads: int, probe: str = RSS_PROBE,
                extra: tuple[str, ...] = ("--sampler", "ddim", "--steps", "50")) -> tuple[float, str]:
    """Peak resident set of a fresh `rissole-run` process (its own VmHWM, Linux), and its report line;
    `extra` are its sampling options (default DDIM-50)."""
    cmd = [sys.executable, "-c", probe, str(bundle), "-n", str(n), *extra,
           "--out", str(Path(tempfile.gettempdir()) / "edge-bench.png"), "--threads", str(threads), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"rissole-run on {bundle} failed: {proc.stderr}")
    lines = proc.stdout.strip().splitlines()
    return int(lines[-1].split()[1]) / 1024, lines[-2]


def measure_rss(b32: Path, b10: Path, threads: int) -> dict[str, object]:
    """Peak RSS of rissole-run for 16 images with the database at 1x and 10x rows."""
    rss = {}
    for name, path in (("1x", b32), ("10x", b10)):
        mb, line = peak_rss_mb(path, 16, threads)
        rows = json.loads((path / "manifest.json").read_text())["database"]["rows"]
        rss[name] = {"rows": rows, "db_mb": (path / "db" / "blocks.npy").stat().st_size / 2**20, "peak_rss_mb": mb,
                     "runtime_line": line}
        print(f"peak RSS {name}: {rss[name]}", flush=True)
    return rss


def set_cache(path: Path, warm: bool) -> str:
    """Put `path` fully in the page cache (read it once) or evict it (posix_fadvise DONTNEED after a
    sync; clean pages of a file nobody maps are dropped), and say which."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if warm:
            while os.read(fd, 1 << 24):
                pass
            return "warm: read fully first"
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return "cold: posix_fadvise(POSIX_FADV_DONTNEED)"
    finally:
        os.close(fd)


def cached_fraction(path: Path) -> float:
    """Fraction of the file's bytes in the page cache, by util-linux `fincore` (nan where it is missing)."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
                             capture_output=True, text=True, check=True).stdout.split()
        return int(out[0]) / int(out[1])
    except (OSError, subprocess.CalledProcessError, IndexError, ValueError):
        return float("nan")


def measure_rss_cold_warm(b32: Path, b10: Path, threads: int, repeats: int) -> dict[str, object]:
    """Peak RSS of rissole-run -n 16 at 1x and 10x rows, the database evicted and fully cached, with the
    runtime's positional reads and (before them) through the map; the median of `repeats` runs each."""
    import statistics

    out: dict[str, object] = {}
    for gather, probe in (("pread", RSS_PROBE), ("mapped", RSS_PROBE_MAPPED)):
        for name, path in (("1x", b32), ("10x", b10)):
            blocks = path / "db" / "blocks.npy"
            for warm in (False, True):
                mbs, how, frac = [], "", 0.0
                for _ in range(repeats):
                    how = set_cache(blocks, warm)
                    frac = cached_fraction(blocks)
                    mb, line = peak_rss_mb(path, 16, threads, probe)
                    mbs.append(mb)
                key = f"{gather}_{name}_{'warm' if warm else 'cold'}"
                out[key] = {"rows": json.loads((path / "manifest.json").read_text())["database"]["rows"],
                            "db_mb": blocks.stat().st_size / 2**20, "cache": how,
                            "cached_fraction_before_run": frac, "peak_rss_mb": statistics.median(mbs),
                            "runs_mb": mbs, "runtime_line": line}
                print(f"{key}: {out[key]['peak_rss_mb']:.1f} MB (runs {mbs}, cached {frac:.2f} before)", flush=True)
        four = [out[f"{gather}_{s}_{c}"]["peak_rss_mb"] for s in ("1x", "10x") for c in ("cold", "warm")]
        out[f"{gather}_max_over_min"] = max(four) / min(four)
    return out


def fp16_fid(e32, e16, n: int) -> dict[str, object]:  # noqa: ANN001
    """FID (and KID) against the test split of n runtime samples from each bundle, same rows and noise."""
    if n <= 0:
        return {"fid_n": 0, "fid_note": "skipped (--fid-n 0)"}
    from rissole.metrics import evaluate

    out: dict[str, object] = {"fid_n": n, "fid_ref": "fmnist:test"}
    for name, edge in (("fp32", e32), ("fp16", e16)):
        images, _ = edge.generate(n, 50, seed=0)
        m = evaluate(images, ref="fmnist:test", n=n, with_kid=True, progress=False)
        out[f"fid_{name}"], out[f"kid_{name}"] = m["fid"], m["kid_mean"]
        print(f"{name} runtime, DDIM-50, N={n}: FID {m['fid']:.2f}", flush=True)
    return out


def tenfold_database(src: Path, dest: Path) -> Path:
    """The source database with every row repeated 10 times (tables and p_D follow), for the RSS test."""
    from tqdm import tqdm

    from rissole_runtime.fileio import sha256_file, write_json_atomic
    from rissole.retrieval.database import open_database
    from rissole.retrieval.neighbours import open_table, save_table

    db = open_database(src)
    b, n, d = db.array.shape
    dest.mkdir(parents=True)
    big = np.lib.format.open_memmap(dest / "blocks.npy", mode="w+", dtype=db.array.dtype, shape=(b, 10 * n, d))
    for j in tqdm(range(10), desc="10x db", file=sys.stderr):
        big[:, j * n:(j + 1) * n] = db.array
    big.flush()
    del big
    manifest = {**db.manifest, "rows": 10 * n, "labels": None, "file_bytes": (dest / "blocks.npy").stat().st_size,
                "sha256": sha256_file(dest / "blocks.npy")}
    write_json_atomic(dest / "manifest.json", manifest)
    bigdb = open_database(dest)
    for name in ("train", "database"):
        t = open_table(db, name)
        ids = np.concatenate([np.asarray(t.ids) + j * n for j in range(10)])  # copy j's neighbours live in copy j
        meta = {k: v for k, v in t.meta.items() if k not in ("name", "shape", "db_sha256")}
        save_table(bigdb, name, ids, np.tile(np.asarray(t.scores), (10, 1)), meta)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints/rissole-fmnist-g2"), help="RISSOLE checkpoint")
    ap.add_argument("--threads", type=int, default=1, help="threads for torch AND onnxruntime (compared at equal threads)")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats per step measurement (median)")
    ap.add_argument("--sample-repeats", type=int, default=3, help="timed repeats of whole-sample runs (median)")
    ap.add_argument("--fid-n", type=int, default=2000, help="samples per bundle for the fp16-vs-fp32 FID (0: skip)")
    ap.add_argument("--work", default=None, help="scratch directory for the bundles (default: a temp dir)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/edge.json"), help="results JSON")
    ap.add_argument("--only-rss", action="store_true",
                    help="re-measure only the peak RSS, with the bundles already in --work, into the existing --out")
    ap.add_argument("--rss-cold-warm", default=None, metavar="JSON",
                    help="only the peak RSS at 1x / 10x rows, cold and warm cache, pread vs mapped gather, into JSON "
                         "(exports the two bundles into --work first when missing)")
    ap.add_argument("--rss-repeats", type=int, default=3, help="runs per --rss-cold-warm figure (median)")
    args = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from benchmarks._machine import machine_info
    from rissole_runtime.fileio import write_json_atomic
    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole.paths import ensure_shipped_database
    from rissole_export.bundle_writer import ExportOptions, bundle_size, write_bundle
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler

    db_path = ensure_shipped_database()
    work = Path(args.work or tempfile.mkdtemp(prefix="rissole-edge-"))
    b32, b16, b10 = work / "bundle-fp32", work / "bundle-fp16", work / "bundle-fp32-10x"
    if args.rss_cold_warm:
        if not (b32 / "manifest.json").is_file() or (b32 / "db" / "blocks.npy").stat().st_nlink > 1:
            # a private copy of blocks.npy: a hard link shares its pages with whoever maps the source, and
            # pages mapped by another process cannot be evicted for the cold figure
            write_bundle(args.ckpt, b32, opts=ExportOptions(overwrite=True, progress=False, link=False))
        if not (b10 / "manifest.json").is_file():
            big = work / "db10x" if (work / "db10x" / "manifest.json").is_file() else tenfold_database(db_path, work / "db10x")
            write_bundle(args.ckpt, b10, db=big, opts=ExportOptions(overwrite=True, progress=False))
        result = {"benchmark": "edge_rss_cold_warm", "machine": machine_info(), "threads": args.threads,
                  "what": "VmHWM of a fresh rissole-run -n 16 (DDIM-50) process; cold = blocks.npy evicted, warm = "
                          "read fully first; pread = the runtime's positional-read gather, mapped = the earlier "
                          "gather through the memory map (same code otherwise)",
                  **measure_rss_cold_warm(b32, b10, args.threads, args.rss_repeats)}
        write_json_atomic(args.rss_cold_warm, result)
        print(f"wrote {args.rss_cold_warm}")
        return 0
    if args.only_rss:
        result = json.loads(Path(args.out).read_text())
        result["runtime_peak_rss_16_images"] = measure_rss(b32, b10, args.threads)
        write_json_atomic(args.out, result)
        print(f"updated the peak RSS in {args.out}")
        return 0
    for path, fp16 in ((b32, False), (b16, True)):
        opts = ExportOptions(fp16=fp16, overwrite=True, progress=False)
        manifest = write_bundle(args.ckpt, path, opts=opts)
        print("\n".join(opts.report), flush=True)
    pipe = RissolePipeline.load(args.ckpt, device="cpu")
    result: dict[str, object] = {
        "benchmark": "edge", "machine": machine_info(), "checkpoint": args.ckpt, "threads": args.threads,
        "blocks": pipe.model.config.num_blocks, "max_samples": manifest["batch"]["max_samples"],
        "export_parity_max_abs": {"fp32_denoiser": json.loads((b32 / "manifest.json").read_text())["denoiser"]["parity_max_abs"],
                                  "fp32_decoder": json.loads((b32 / "manifest.json").read_text())["decoder"]["parity_max_abs"],
                                  "fp16_denoiser": manifest["denoiser"]["parity_max_abs"],
                                  "fp16_decoder": manifest["decoder"]["parity_max_abs"]},
        "bundle_mb_without_db": {"fp32": bundle_size(b32) / 2**20, "fp16": bundle_size(b16) / 2**20},
        "database_mb": (db_path / "blocks.npy").stat().st_size / 2**20,
    }
    result["denoiser_step"] = step_latency(pipe, b32, args.threads, args.repeats)
    result["ort_op_share_at_batch_64"] = op_profile(b32, args.threads, 64)
    result["whole_sample_ddim50"] = whole_sample(pipe, b32, args.threads, args.sample_repeats)

    # fp16 vs fp32: the same 16 samples (rows, noise) through both bundles
    e32, e16 = (EdgeSampler(open_bundle(p), "cpu", args.threads) for p in (b32, b16))
    i32, _ = e32.generate(16, 50, seed=0)
    i16, _ = e16.generate(16, 50, seed=0)
    result["fp16_vs_fp32"] = {"max_abs_pixel_diff_16_images": int(np.abs(i32.astype(int) - i16.astype(int)).max()),
                              "mean_abs_pixel_diff": float(np.abs(i32.astype(int) - i16.astype(int)).mean()),
                              **fp16_fid(e32, e16, args.fid_n)}
    print(f"fp16 vs fp32: {result['fp16_vs_fp32']}", flush=True)

    big = tenfold_database(db_path, work / "db10x")
    write_bundle(args.ckpt, b10, db=big, opts=ExportOptions(overwrite=True, progress=False))
    result["runtime_peak_rss_16_images"] = measure_rss(b32, b10, args.threads)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out} (scratch bundles in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
