"""How well does a RISSOLE checkpoint recover x0 from x_t, per timestep? (eps- vs v-prediction)

For 64 database rows (their blocks and their training-table neighbours), noise each block to
x_t at fixed t, run the denoiser, and report the mean squared error of the implied eps and x0,
next to the error of simply averaging the k neighbours' blocks.

    python -m benchmarks.denoiser_error --ckpt runs/a/checkpoint runs/b/checkpoint
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
TIMESTEPS = (999, 900, 800, 600, 400, 200, 50)


@torch.no_grad()
def errors(ckpt: str, rows: np.ndarray) -> dict[str, object]:
    from rissole.checkpoint import load_checkpoint
    from rissole.heads.rissole.batches import BlockBatcher
    from rissole.heads.rissole.pipeline import RissolePipeline
    from rissole.retrieval.neighbours import open_table

    pipe = RissolePipeline.load(ckpt)
    m = pipe.model
    batch = BlockBatcher(pipe.db, open_table(pipe.db, "train"), m.config.grid, m.config.k, pipe.config["scale_factor"]).batch(rows)
    ab = pipe.schedule.alphas_cumprod
    out: dict[str, object] = {"checkpoint": ckpt, "step": load_checkpoint(ckpt).step, "prediction": m.config.prediction,
                              "neighbour_mean_x0_mse": float(((batch.neighbours.mean(1) - batch.x0) ** 2).mean())}
    for t in TIMESTEPS:
        a, s = float(np.sqrt(ab[t])), float(np.sqrt(1 - ab[t]))
        eps = torch.randn(batch.x0.shape, generator=torch.Generator().manual_seed(t))
        xt = a * batch.x0 + s * eps
        pred = m(xt, torch.full((len(xt),), t), batch.neighbours)
        eps_hat = pred if m.config.prediction == "eps" else s * xt + a * pred
        x0_hat = (xt - s * eps_hat) / a
        out[f"t{t}"] = {"eps_mse": float(((eps_hat - eps) ** 2).mean()), "x0_mse": float(((x0_hat - batch.x0) ** 2).mean())}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", nargs="+", required=True, help="RISSOLE checkpoint directories to compare")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/denoiser_error.json"), help="results JSON")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from benchmarks._machine import machine_info
    from rissole_runtime.fileio import write_json_atomic

    rows = np.arange(5000, 5064)
    result = {"benchmark": "denoiser_error", "machine": machine_info(), "rows": rows.tolist(),
              "runs": [errors(c, rows) for c in args.ckpt]}
    for r in result["runs"]:
        print(r["checkpoint"], r["prediction"], "step", r["step"],
              {t: round(r[f"t{t}"]["x0_mse"], 3) for t in TIMESTEPS}, "neighbour mean", round(r["neighbour_mean_x0_mse"], 3))
    write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
