"""Small real data for the RDM / RARM / embedding tests: Fashion-MNIST latents of the shipped VQ-GAN,
VQ-token embedding databases (disjoint halves, same set, one class) with exact neighbour tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

N_IMAGES = 400
HALF = N_IMAGES // 2


def build_neighbour_data(d: Path) -> dict[str, Any]:
    from rissole.autoencoder import load_vqgan
    from rissole.checkpoint import load_checkpoint
    from rissole.data import load_source
    from rissole.embeddings import build_embedding_database, make_embedder, write_embeddings
    from rissole.latents import encode_images
    from rissole.paths import SHIPPED_VQGAN
    from rissole.retrieval.keys import KeySet
    from rissole.retrieval.neighbours import make_tables

    data = load_source("fmnist:train", limit=N_IMAGES)
    h = load_checkpoint(SHIPPED_VQGAN).weights_hash()
    lat = encode_images(load_vqgan(SHIPPED_VQGAN), data.images, d / "lat.npy", str(SHIPPED_VQGAN), h, "fmnist:train",
                        labels=data.labels, progress=False)
    vq = make_embedder("vq", tuple(lat.array.shape[1:]))
    write_embeddings(vq, d / "lat.npy", d / "a.npy", np.arange(HALF), progress=False)  # training half
    write_embeddings(vq, d / "lat.npy", d / "b.npy", np.arange(HALF, N_IMAGES), progress=False)  # database half
    b = build_embedding_database(d / "b.npy", d / "db_b", progress=False)
    make_tables(b.db, KeySet(b.db, "latent"), "exact", {}, k=6, queries_path=d / "a.npy", progress=False)
    write_embeddings(vq, d / "lat.npy", d / "all.npy", progress=False)
    same = build_embedding_database(d / "all.npy", d / "db_same", progress=False)
    make_tables(same.db, KeySet(same.db, "latent"), "exact", {}, k=6, progress=False)
    cls = int(data.labels[HALF])
    one = np.flatnonzero(data.labels == cls)
    one = one[one >= HALF]
    write_embeddings(vq, d / "lat.npy", d / "c.npy", one, progress=False)  # one class of the database half
    c = build_embedding_database(d / "c.npy", d / "db_class", progress=False)
    make_tables(c.db, KeySet(c.db, "latent"), "exact", {}, k=6, progress=False)
    return {"dir": d, "images": data.images, "labels": data.labels, "latents": np.asarray(lat.array), "class": cls,
            "db_b": d / "db_b", "db_same": d / "db_same", "db_class": d / "db_class", "a": d / "a.npy"}


def rdm_config(db: Path, **model: Any) -> dict[str, Any]:
    m = {"latent_channels": 10, "latent_size": 8, "model_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
         "attention_resolutions": [2], "num_heads": 2, "k": 3, "embedder": "vq", "context_tokens": 64,
         "context_token_dim": 10, "context_dim": 16, "prediction": "eps", **model}
    return {"kind": "rdm", "model": m, "data": {"db": str(db), "table": "train"},
            "train": {"steps": 60, "batch_size": 16, "lr": 2e-3, "warmup_steps": 5, "ema_decay": 0.9, "ckpt_every": 1000,
                      "seed": 5}}


def rarm_config(db: Path, **model: Any) -> dict[str, Any]:
    from rissole.paths import SHIPPED_VQGAN

    m = {"vocab_size": 1024, "seq_len": 64, "width": 32, "depth": 2, "num_heads": 2, "k": 3, "embedder": "vq",
         "context_tokens": 64, "context_token_dim": 10, "context_dim": 16, **model}
    return {"kind": "rarm", "model": m, "data": {"db": str(db), "table": "train", "vqgan": str(SHIPPED_VQGAN)},
            "train": {"steps": 60, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5, "ema_decay": 0.9, "ckpt_every": 1000,
                      "seed": 5}}


def randomise(model: Any, seed: int = 0) -> Any:
    """Fresh random weight matrices, 1/sqrt(fan-in) scaled, also where training starts from zero (those
    layers would hide the conditioning); norms and biases kept. Eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for these modules: the test machines share their cores with training runs, where a
    second thread waiting on a busy core makes small convolutions ~10x slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
