"""Where the shipped checkpoints live (in the repository checkout; override with RISSOLE_CHECKPOINTS)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("RISSOLE_CHECKPOINTS", REPO_ROOT / "checkpoints"))
SHIPPED_VQGAN = CHECKPOINTS / "vqgan-fmnist-f4"
SHIPPED_RISSOLE = CHECKPOINTS / "rissole-fmnist-g2"
SHIPPED_DB = Path(os.environ.get("RISSOLE_DB", REPO_ROOT / "runs" / "db" / "fmnist-train-g2"))
SHIPPED_LATENTS = REPO_ROOT / "runs" / "latents" / "fmnist-train.npy"


def ensure_shipped_database() -> Path:
    """Build the shipped model's database on first use: encode the 60k training images with the
    shipped VQ-GAN, cut them into 2 x 2 blocks, and write the k = 20 neighbour tables (a few minutes
    on a CPU; nothing is downloaded). Later calls find it and return at once."""
    from rissole.cli.main import main as rissole

    if (SHIPPED_DB / "neighbours" / "database.json").is_file():
        return SHIPPED_DB
    print(f"first run: building the database the shipped model samples from, in {SHIPPED_DB}")
    steps = []
    if not SHIPPED_LATENTS.with_suffix(".json").is_file():
        steps.append(["encode", "--source", "fmnist:train", "--out", str(SHIPPED_LATENTS)])
    if not (SHIPPED_DB / "manifest.json").is_file():
        steps.append(["db", "build", str(SHIPPED_LATENTS), "--out", str(SHIPPED_DB), "--grid", "2"])
    steps.append(["db", "neighbours", str(SHIPPED_DB), "-k", "20"])
    for argv in steps:
        if rissole(argv) != 0:
            raise RuntimeError(f"building the shipped database failed at `rissole {' '.join(argv)}`")
    return SHIPPED_DB
