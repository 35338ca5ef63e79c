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


def _ensure_latents() -> None:
    """The 60k training images through the shipped VQ-GAN (what `rissole encode --source fmnist:train` writes)."""
    from rissole.latents import encode_source

    if not SHIPPED_LATENTS.with_suffix(".json").is_file():
        encode_source(SHIPPED_VQGAN, "fmnist:train", SHIPPED_LATENTS)


def ensure_shipped_database() -> Path:
    """Build the shipped RISSOLE model's database on first use: encode the 60k training images with
    the shipped VQ-GAN, cut them into 2 x 2 blocks, and write the k = 20 neighbour tables (a few
    minutes on a CPU; nothing is downloaded). Later calls find it and return at once."""
    from rissole.retrieval import build_database, open_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    if (SHIPPED_DB / "neighbours" / "database.json").is_file():
        return SHIPPED_DB
    print(f"first run: building the database the shipped model samples from, in {SHIPPED_DB}")
    _ensure_latents()
    if not (SHIPPED_DB / "manifest.json").is_file():
        build_database(SHIPPED_LATENTS, SHIPPED_DB, grid=2)
    db = open_database(SHIPPED_DB)
    for line in make_tables(db, KeySet(db, "block0"), "scann", {"threads": 1}, k=20):
        print(line)
    return SHIPPED_DB


def ensure_shipped_rdm_database() -> Path:
    """Build the shipped RDM's embedding database on first use, as its config says (configs/rdm/fmnist_vq.yaml):
    VQ-latent embeddings of training rows 30000..59999 as the database, rows 0..29999 (the rows it was
    trained on) as the queries of the `train` table that p_D comes from, k = 20 exact neighbours."""
    import numpy as np

    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.latents import open_latents
    from rissole.retrieval import open_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    if all((SHIPPED_RDM_DB / "neighbours" / f"{t}.json").is_file() for t in ("database", "train")):
        return SHIPPED_RDM_DB
    print(f"first run: building the database the shipped model samples from, in {SHIPPED_RDM_DB}")
    emb_a, emb_b = EMBEDDINGS / "fmnist-train-a-vq.npy", EMBEDDINGS / "fmnist-train-b-vq.npy"
    _ensure_latents()
    vq = make_embedder("vq", tuple(open_latents(SHIPPED_LATENTS).array.shape[1:]), device="cpu")
    if not emb_a.with_suffix(".json").is_file():
        write_embeddings(vq, SHIPPED_LATENTS, emb_a, np.arange(0, 30000))
    if not (SHIPPED_RDM_DB / "manifest.json").is_file():
        write_embeddings(vq, SHIPPED_LATENTS, emb_b, np.arange(30000, 60000))
        build_embedding_database(emb_b, SHIPPED_RDM_DB)
    db = open_database(SHIPPED_RDM_DB)
    for line in make_tables(db, KeySet(db, "latent"), "exact", {"threads": 1}, k=20, queries_path=emb_a):
        print(line)
    return SHIPPED_RDM_DB


def ensure_database_for(ckpt: str | os.PathLike) -> None:
    """Build the database of a shipped checkpoint on first use (other checkpoints name their own)."""
    ckpt = Path(ckpt).resolve()
    if ckpt == SHIPPED_RISSOLE.resolve():
        ensure_shipped_database()
    elif ckpt in (SHIPPED_RDM.resolve(), SHIPPED_RARM.resolve()):
        ensure_shipped_rdm_database()
