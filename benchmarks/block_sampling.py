"""Sampling speed of the RISSOLE block denoiser: all blocks in one call vs block after block, DDIM vs DDPM.

Same network, same neighbours, same noise, measured side by side in one process:
  - one image at a time (the device case) and 64 images at a time,
  - order "parallel" (b blocks folded into the batch, one call per step) vs "block_by_block"
    (one call per block position per step, what the authors' public code does),
  - DDIM-50 vs DDPM-1000 (network calls per image and seconds per image),
  - the bare network at batch n*b vs n: b * t(n) / t(n*b) is the most that folding blocks into
    the batch can gain (close to b where a larger batch is nearly free, as on a GPU; on CPU
    threads convolution time grows with the batch, so the ceiling is lower),
  - all of it at each thread count of --threads (default 1 and 2): one block cannot keep two
    threads busy, b blocks in one call can, which is the GPU case in miniature.
Run it on an otherwise idle machine (the load average at the start is recorded).

    python -m benchmarks.block_sampling            # writes benchmarks/results/block_sampling.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(ROOT / "checkpoints/rissole-fmnist-g2"), help="RISSOLE checkpoint")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, each measured")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (median reported)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/block_sampling.json"), help="results JSON")
    args = ap.parse_args()
    from benchmarks._machine import machine_info
    from rissole_runtime.diffusion.schedule import DDIMSampler
    from rissole_runtime.fileio import write_json_atomic
    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole.paths import ensure_shipped_database
    from rissole.retrieval.database import gather_neighbours

    ensure_shipped_database()
    pipe = RissolePipeline.load(args.ckpt)
    model, b = pipe.model, pipe.model.config.num_blocks
    scale = np.float32(pipe.config["scale_factor"])
    rows = pipe.pseudo_queries(64, seed=0)
    nb_all = torch.from_numpy(gather_neighbours(pipe.db, pipe.neighbour_ids(rows), pipe.k) * scale)
    ddim = DDIMSampler(pipe.schedule, 50)
    result: dict[str, object] = {"benchmark": "block_sampling", "machine": machine_info(), "checkpoint": args.ckpt,
                                 "blocks": b, "threads": args.threads,
                                 "load_average_at_start": os.getloadavg()}  # > 0 means other processes competed
    for threads in args.threads:
        torch.set_num_threads(threads)
        result[f"threads{threads}"] = measure(model, b, nb_all, ddim, pipe.schedule, args.repeats)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")
    return 0


def measure(model: torch.nn.Module, b: int, nb_all: torch.Tensor, ddim: Any, schedule: Any, repeats: int) -> dict[str, object]:
    """Parallel vs block-by-block at 1 and 64 images, the bare-network ceiling, DDPM-1000 vs DDIM-50."""
    from rissole_runtime.diffusion.schedule import DDPMSampler
    from rissole.heads.rissole.sampling import sample_blocks

    result: dict[str, object] = {"torch_threads": torch.get_num_threads()}
    for n in (1, 64):
        nb = nb_all[:n]
        run = lambda order, sampler=ddim: sample_blocks(model, sampler, nb, n, torch.Generator().manual_seed(0),  # noqa: E731
                                                        order=order)
        par = timed(lambda: run("parallel"), repeats)
        seq = timed(lambda: run("block_by_block"), repeats)
        same = float((run("parallel") - run("block_by_block")).abs().max())
        c, sz = model.config.latent_channels, model.config.block_size
        def net(m: int) -> None:  # noqa: E306 - one denoiser call on m blocks
            with torch.no_grad():
                model(torch.randn(m, c, sz, sz), torch.zeros(m, dtype=torch.long), nb.flatten(0, 1)[:m].repeat(-(-m // (n * b)), 1, 1, 1, 1)[:m])
        t_n, t_nb = timed(lambda: [net(n) for _ in range(20)], repeats), timed(lambda: [net(n * b) for _ in range(20)], repeats)
        result[f"n{n}"] = {
            "ddim50_parallel_s_per_image": par / n,
            "ddim50_block_by_block_s_per_image": seq / n,
            "speedup_parallel": seq / par,
            "speedup_over_b": seq / par / b,
            "max_abs_latent_difference": same,
            "network_ms_batch_n": t_n / 20 * 1e3,
            "network_ms_batch_n_times_b": t_nb / 20 * 1e3,
            "ceiling_b_t_n_over_t_nb": b * t_n / t_nb,
        }
        print(torch.get_num_threads(), n, result[f"n{n}"], flush=True)
    ddpm_n = 8
    nb = nb_all[:ddpm_n]
    ddpm = timed(lambda: sample_blocks(model, DDPMSampler(schedule), nb, ddpm_n, torch.Generator().manual_seed(0)), 1)
    ddim_t = timed(lambda: sample_blocks(model, ddim, nb, ddpm_n, torch.Generator().manual_seed(0)), repeats)
    result["ddpm1000_vs_ddim50"] = {"images": ddpm_n, "ddpm1000_s_per_image": ddpm / ddpm_n,
                                    "ddim50_s_per_image": ddim_t / ddpm_n, "network_calls_ratio": 1000 / 50,
                                    "time_ratio": ddpm / ddim_t}
    print(result["ddpm1000_vs_ddim50"], flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
