"""Where the shipped checkpoints live (in the repository checkout; override with RISSOLE_CHECKPOINTS)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("RISSOLE_CHECKPOINTS", REPO_ROOT / "checkpoints"))
SHIPPED_VQGAN = CHECKPOINTS / "vqgan-fmnist-f4"
SHIPPED_RISSOLE = CHECKPOINTS / "rissole-fmnist-g2"
SHIPPED_RDM = CHECKPOINTS / "rdm-fmnist-vq"
SHIPPED_RARM = CHECKPOINTS / "rarm-fmnist-vq"  # the same embedding database as SHIPPED_RDM
SHIPPED_DB = Path(os.environ.get("RISSOLE_DB", REPO_ROOT / "runs" / "db" / "fmnist-train-g2"))
SHIPPED_RDM_DB = REPO_ROOT / "runs" / "db" / "rdm-fmnist-b-vq"  # the shipped RDM config's data.db
SHIPPED_LATENTS = REPO_ROOT / "runs" / "latents" / "fmnist-train.npy"
EMBEDDINGS = REPO_ROOT / "runs" / "emb"


def _latents_step() -> list[list[str]]:
    if SHIPPED_LATENTS.with_suffix(".json").is_file():
        return []
    return [["encode", "--source", "fmnist:train", "--out", str(SHIPPED_LATENTS)]]


def _run_steps(steps: list[list[str]], where: Path) -> Path:
    from rissole.cli.main import main as rissole

    print(f"first run: building the database the shipped model samples from, in {where}")
    for argv in steps:
        if rissole(argv) != 0:
            raise RuntimeError(f"building {where} failed at `rissole {' '.join(argv)}`")
    return where


def ensure_shipped_database() -> Path:
    """Build the shipped RISSOLE model's database on first use: encode the 60k training images with
    the shipped VQ-GAN, cut them into 2 x 2 blocks, and write the k = 20 neighbour tables (a few
    minutes on a CPU; nothing is downloaded). Later calls find it and return at once."""
    if (SHIPPED_DB / "neighbours" / "database.json").is_file():
        return SHIPPED_DB
    steps = _latents_step()
    if not (SHIPPED_DB / "manifest.json").is_file():
        steps.append(["db", "build", str(SHIPPED_LATENTS), "--out", str(SHIPPED_DB), "--grid", "2"])
    steps.append(["db", "neighbours", str(SHIPPED_DB), "-k", "20"])
    return _run_steps(steps, SHIPPED_DB)


def ensure_shipped_rdm_database() -> Path:
    """Build the shipped RDM's embedding database on first use, as its config says (configs/rdm/fmnist_vq.yaml):
    VQ-latent embeddings of training rows 30000..59999 as the database, rows 0..29999 (the rows it was
    trained on) as the queries of the `train` table that p_D comes from, k = 20 exact neighbours."""
    if all((SHIPPED_RDM_DB / "neighbours" / f"{t}.json").is_file() for t in ("database", "train")):
        return SHIPPED_RDM_DB
    emb_a, emb_b = EMBEDDINGS / "fmnist-train-a-vq.npy", EMBEDDINGS / "fmnist-train-b-vq.npy"
    steps = _latents_step()
    if not emb_a.with_suffix(".json").is_file():
        steps.append(["embed", str(SHIPPED_LATENTS), "--embedder", "vq", "--rows", "0:30000", "--out", str(emb_a)])
    if not (SHIPPED_RDM_DB / "manifest.json").is_file():
        steps.append(["embed", str(SHIPPED_LATENTS), "--embedder", "vq", "--rows", "30000:60000", "--out", str(emb_b),
                      "--db", str(SHIPPED_RDM_DB)])
    steps.append(["db", "neighbours", str(SHIPPED_RDM_DB), "--backend", "exact", "--keys", "latent", "-k", "20",
                  "--queries", str(emb_a)])
    return _run_steps(steps, SHIPPED_RDM_DB)


def ensure_database_for(ckpt: str | os.PathLike) -> None:
    """Build the database of a shipped checkpoint on first use (other checkpoints name their own)."""
    ckpt = Path(ckpt).resolve()
    if ckpt == SHIPPED_RISSOLE.resolve():
        ensure_shipped_database()
    elif ckpt in (SHIPPED_RDM.resolve(), SHIPPED_RARM.resolve()):
        ensure_shipped_rdm_database()
