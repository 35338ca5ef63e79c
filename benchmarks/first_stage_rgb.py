"""PSNR of the RGB first stage (stickers + Fashion-MNIST as RGB), per domain.

    python -m benchmarks.first_stage_rgb --ckpt runs/vqgan-stickers-fmnist-rgb/final   # -> benchmarks/results/first_stage_rgb.json

PSNR (EMA weights) over the held-out stickers (val split) and the 10,000 Fashion-MNIST test images
as RGB, the share of the codebook the two use, and reconstruction FID (Inception, rissole.metrics):
the first --fid-n Fashion-MNIST test reconstructions against the same originals' reference set
(fmnist:test, first N), and the held-out stickers' reconstructions against the held-out stickers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", required=True, help="RGB VQ-GAN checkpoint directory")
    ap.add_argument("--stickers", default=str(ROOT / "runs/stickers32"), help="sticker folder (`rissole data stickers`)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--fid-n", type=int, default=2000, help="Fashion-MNIST test images in the reconstruction FID (0: none)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks/results/first_stage_rgb.json"), help="results JSON")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks._machine import machine_info
    from rissole.autoencoder import load_vqgan
    from rissole.autoencoder.losses import psnr
    from rissole.checkpoint import load_checkpoint
    from rissole.data import from_model_range, load_source, to_model_range
    from rissole.fileio import write_json_atomic
    from rissole.metrics import evaluate

    vq = load_vqgan(args.ckpt)
    ckpt = load_checkpoint(args.ckpt)
    result = {"benchmark": "first_stage_rgb", "machine": machine_info(), "checkpoint": args.ckpt,
              "step": ckpt.step, "domains": {}}
    for name, spec in (("stickers_val", f"folder:{args.stickers}:val"), ("fmnist_test_rgb", "fmnist:test")):
        images = load_source(spec, channels=3).images
        psnrs, used, recon = [], torch.zeros(ckpt.config["model"]["n_embed"], dtype=torch.bool), []
        t0 = time.perf_counter()
        for s in range(0, len(images), 500):
            x = to_model_range(images[s : s + 500])
            xrec, _, idx = vq(x)
            psnrs.append(psnr(xrec.clamp(-1, 1), x))
            used[idx.flatten()] = True
            recon.append(from_model_range(xrec.clamp(-1, 1)))
        seconds = time.perf_counter() - t0
        recon = np.concatenate(recon)
        entry = {"images": int(len(images)), "psnr_db": float(torch.cat(psnrs).mean()),
                 "code_usage": float(used.float().mean()), "encode_decode_ms_per_image": seconds / len(images) * 1e3}
        n = min(len(images), args.fid_n) if name.startswith("fmnist") else len(images)
        if args.fid_n and n >= 2:
            entry["rfid"] = evaluate(recon[:n], ref=spec, n=n, progress=False)["fid"]
            entry["rfid_n"] = n
        result["domains"][name] = entry
    write_json_atomic(args.out, result)
    print(result["domains"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
