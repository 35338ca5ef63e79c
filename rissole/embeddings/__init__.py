"""Neighbour embeddings phi(y) for RDM and RARM behind one interface, and embedding databases.

    embedder = make_embedder("vq", latent_shape=(10, 8, 8))        # or "inception" (size=75)
    v = embedder.embed_images(images)                               # (n, d) float32, unit rows
    write_embeddings(embedder, "fmnist-train.npy", "emb.npy", rows) # -> build_embedding_database
"""

from __future__ import annotations

import os
from typing import Any

import torch

from rissole.embeddings.base import Embedder, EmbeddingSpec
from rissole.embeddings.inception_small import InceptionEmbedder
from rissole.embeddings.store import (
    EmbeddingDatabase,
    EmbeddingFile,
    build_embedding_database,
    open_embedding_database,
    open_embeddings,
    write_embeddings,
)
from rissole.embeddings.vq_tokens import VQTokenEmbedder

EMBEDDERS = ("vq", "inception")


def make_embedder(name: str, latent_shape: tuple[int, int, int] | None = None,
                  vqgan: str | os.PathLike | torch.nn.Module | None = None, device: str = "cpu", **params: Any) -> Embedder:
    """An embedder by name; `params` are its options (inception: size, path, batch_size)."""
    if name == "vq":
        if latent_shape is None:
            raise ValueError("the vq embedder needs the latent shape (c, h, w)")
        return VQTokenEmbedder(latent_shape, vqgan, device)
    if name == "inception":
        return InceptionEmbedder(device=device, **params)
    raise ValueError(f"unknown embedder {name!r}; choose one of {EMBEDDERS}")


def embedder_for_spec(spec: EmbeddingSpec, latent_shape: tuple[int, int, int],
                      vqgan: str | os.PathLike | torch.nn.Module | None = None,
                      device: str = "cpu") -> Embedder:
    """The embedder that made vectors of `spec` (to embed a user's query image the same way)."""
    return make_embedder(spec.embedder, latent_shape, vqgan, device, **spec.params)


__all__ = [
    "EMBEDDERS", "Embedder", "EmbeddingDatabase", "EmbeddingFile", "EmbeddingSpec", "InceptionEmbedder",
    "VQTokenEmbedder", "build_embedding_database", "embedder_for_spec", "make_embedder", "open_embedding_database",
    "open_embeddings", "write_embeddings",
]
