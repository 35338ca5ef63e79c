"""Where the shipped checkpoints live (in the repository checkout; override with RISSOLE_CHECKPOINTS)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CHECKPOINTS = Path(os.environ.get("RISSOLE_CHECKPOINTS", REPO_ROOT / "checkpoints"))
SHIPPED_VQGAN = CHECKPOINTS / "vqgan-fmnist-f4-perceptual"  # first stage B (issue 19); vqgan-fmnist-f4 is A
SHIPPED_RISSOLE = CHECKPOINTS / "rissole-fmnist-g2"
SHIPPED_RDM = CHECKPOINTS / "rdm-fmnist-vq"
SHIPPED_RARM = CHECKPOINTS / "rarm-fmnist-vq"  # the same embedding database as SHIPPED_RDM
# the shipped RISSOLE model's block database (its config's data.db): neighbour tables keyed by the whole latent
SHIPPED_DB = Path(os.environ.get("RISSOLE_DB", REPO_ROOT / "runs" / "db" / "fmnist-train-g2-latent"))
SHIPPED_RDM_DB = REPO_ROOT / "runs" / "db" / "rdm-fmnist-b-vq"  # the shipped RDM config's data.db
SHIPPED_LATENTS = REPO_ROOT / "runs" / "latents" / "fmnist-train.npy"
EMBEDDINGS = REPO_ROOT / "runs" / "emb"
# the text-guided RDM (configs/rdm/stickers_joint.yaml) and what it samples from
SHIPPED_RGB_VQGAN = CHECKPOINTS / "vqgan-stickers-fmnist-rgb"
SHIPPED_TEXT_RDM = CHECKPOINTS / "rdm-stickers-joint"
SHIPPED_KNN = CHECKPOINTS / "knn-stickers-joint"  # kNN-Diffusion (configs/rdm/stickers_knn.yaml)
SHIPPED_EDIT = CHECKPOINTS / "knn-stickers-edit"  # its mask-free manipulation (configs/rdm/stickers_edit.yaml)
KNN_DB = REPO_ROOT / "runs" / "db" / "knn-stickers-joint"
STICKERS = REPO_ROOT / "runs" / "stickers32"
MIX_SOURCE = f"folder:{STICKERS}:train+fmnist:train"
STYLES = ("emoji", "tuxpaint", "fmnist")
STICKER_REPEAT = 8  # training rows repeat the stickers' share 8x: 9,536 of 39,536 instead of 1,192 of 31,192


def _ensure_latents() -> None:
    """The 60k training images through the shipped VQ-GAN (what `rissole encode --source fmnist:train` writes)."""
    from rissole.latents import encode_source

    if not SHIPPED_LATENTS.with_suffix(".json").is_file():
        encode_source(SHIPPED_VQGAN, "fmnist:train", SHIPPED_LATENTS)


def shipped_rissole_key() -> str:
    """The key mode the shipped RISSOLE model was trained with (its config's model.key), which its
    database's neighbour tables must be made with."""
    from rissole.config import load_config

    return str(load_config(SHIPPED_RISSOLE / "config.yaml")["model"]["key"])


def ensure_shipped_database() -> Path:
    """Build the shipped RISSOLE model's database on first use: encode the 60k training images with
    the shipped VQ-GAN, cut them into 2 x 2 blocks, and write the k = 20 neighbour tables with the
    model's key mode (a few minutes on a CPU; nothing is downloaded). Later calls find it and return at once."""
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
    for line in make_tables(db, KeySet(db, shipped_rissole_key()), "scann", {"threads": 1}, k=20):
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


def mix_rows(stickers: str | os.PathLike = STICKERS, n_fmnist: int = 60000) -> dict[str, np.ndarray]:
    """Row ids of the mixed latents (MIX_SOURCE: the sticker training images, then Fashion-MNIST's 60k) for
    the text-guided RDM: `train` (even-numbered stickers, repeated STICKER_REPEAT times, and Fashion-MNIST
    0..29999) and the disjoint `database` (odd-numbered stickers, Fashion-MNIST 30000..59999), which the
    style databases split by where each image came from (`emoji`, `tuxpaint`, `fmnist`)."""
    import numpy as np

    style = mix_styles(stickers, n_fmnist)
    s = len(style) - n_fmnist
    odd = np.arange(1, s, 2)
    fm_train, fm_db = np.arange(s, s + n_fmnist // 2), np.arange(s + n_fmnist // 2, s + n_fmnist)
    rows = {"train": np.concatenate([np.tile(np.arange(0, s, 2), STICKER_REPEAT), fm_train]),
            "database": np.concatenate([odd, fm_db]), "fmnist": fm_db}
    for i, name in enumerate(STYLES[:2]):
        rows[name] = odd[style[odd] == i]
    return rows


def mix_styles(stickers: str | os.PathLike = STICKERS, n_fmnist: int = 60000) -> np.ndarray:
    """(rows,) int64: the STYLES index of every row of the mixed latents (the sticker's `source` in its
    metadata.jsonl, then `fmnist` for the Fashion-MNIST rows)."""
    import numpy as np

    from rissole.data import load_source

    records = load_source(f"folder:{stickers}:train", size=32, channels=3).records or []
    return np.array([STYLES.index(r.get("source", "")) for r in records] + [STYLES.index("fmnist")] * n_fmnist,
                    dtype=np.int64)


def ensure_text_databases(vqgan: str | os.PathLike = SHIPPED_RGB_VQGAN, work: str | os.PathLike = REPO_ROOT / "runs",
                          embedder: str = "joint", k: int = 20) -> dict[str, Path]:
    """Build, on first use, the joint-space embedding databases the text-guided RDM trains and samples on:
    the sticker images (`rissole data stickers`), MIX_SOURCE through the RGB VQ-GAN, joint embeddings of
    the `train` and `database` rows of mix_rows, the database with its `train` (p_D) and `database`
    tables, and one database per style (zero-shot stylization by database swap). Returns name -> path:
    latents, train (the training embeddings) and database, emoji, tuxpaint, fmnist (databases)."""
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.latents import encode_source
    from rissole.retrieval import open_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import list_tables, make_tables

    work = Path(work)
    if not (STICKERS / "train" / "metadata.jsonl").is_file():
        from rissole.data.stickers import build_stickers

        print(f"first run: rendering the sticker images into {STICKERS}")
        build_stickers(STICKERS)
    latents = work / "latents" / "mix-train.npy"
    if not latents.with_suffix(".json").is_file():
        print(f"first run: encoding {MIX_SOURCE} into {latents}")
        encode_source(vqgan, MIX_SOURCE, latents)
    paths = {"latents": latents, "train": work / "emb" / "mix-a-joint.npy"}
    rows = mix_rows()
    emb = make_embedder(embedder, device="cpu")
    if not paths["train"].with_suffix(".json").is_file():
        write_embeddings(emb, latents, paths["train"], rows["train"])
    for name in ("database", *STYLES):
        db_path = work / "db" / f"rdm-mix-{name}-joint"
        paths[name] = db_path
        if not (db_path / "manifest.json").is_file():
            e = work / "emb" / f"mix-{name}-joint.npy"
            if not e.with_suffix(".json").is_file():
                write_embeddings(emb, latents, e, rows[name])
            build_embedding_database(e, db_path)
        db = open_database(db_path)
        if not {"database", "train"} <= set(list_tables(db)):
            for line in make_tables(db, KeySet(db, "latent"), "exact", {"threads": 1}, k=min(k, db.rows - 1),
                                    queries_path=paths["train"] if name == "database" else None):
                print(line)
    return paths


def ensure_knn_database(k: int = 20) -> Path:
    """Build, on first use, kNN-Diffusion's index (configs/rdm/stickers_knn.yaml): the joint embeddings of
    the sticker training images alone, which are also its training rows (the model is trained on images
    only, each conditioned on its own embedding and its k nearest others: the `train` table, self excluded).
    About 20 s: the 2,384 stickers are rendered, encoded with the RGB VQ-GAN and embedded."""
    import numpy as np

    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.latents import encode_source
    from rissole.retrieval import open_database
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import list_tables, make_tables

    if (KNN_DB / "manifest.json").is_file() and {"database", "train"} <= set(list_tables(open_database(KNN_DB))):
        return KNN_DB
    if not (STICKERS / "train" / "metadata.jsonl").is_file():
        from rissole.data.stickers import build_stickers

        print(f"first run: rendering the sticker images into {STICKERS}")
        build_stickers(STICKERS)
    latents = REPO_ROOT / "runs" / "latents" / "stickers-train.npy"
    if not latents.with_suffix(".json").is_file():
        encode_source(SHIPPED_RGB_VQGAN, f"folder:{STICKERS}:train", latents)
    emb = EMBEDDINGS / "stickers-joint.npy"
    if not emb.with_suffix(".json").is_file():
        from rissole.latents import open_latents

        write_embeddings(make_embedder("joint", device="cpu"), latents, emb, np.arange(len(open_latents(latents).array)))
    if not (KNN_DB / "manifest.json").is_file():
        build_embedding_database(emb, KNN_DB)
    db = open_database(KNN_DB)
    for line in make_tables(db, KeySet(db, "latent"), "exact", {"threads": 1}, k=k):
        print(line)
    return KNN_DB


def ensure_database_for(ckpt: str | os.PathLike) -> None:
    """Build the database of a shipped checkpoint on first use (other checkpoints name their own)."""
    ckpt = Path(ckpt).resolve()
    if ckpt == SHIPPED_RISSOLE.resolve():
        ensure_shipped_database()
    elif ckpt in (SHIPPED_RDM.resolve(), SHIPPED_RARM.resolve()):
        ensure_shipped_rdm_database()
    elif ckpt == SHIPPED_TEXT_RDM.resolve():
        ensure_text_databases()
    elif ckpt in (SHIPPED_KNN.resolve(), SHIPPED_EDIT.resolve()):
        ensure_knn_database()
