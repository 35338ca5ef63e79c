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

EMBEDDERS = ("vq", "inception", "minilm", "joint", "joint:PATH", "clip:PATH")


def make_embedder(name: str, latent_shape: tuple[int, int, int] | None = None,
                  vqgan: str | os.PathLike | torch.nn.Module | None = None, device: str = "cpu", **params: Any) -> Embedder:
    """An embedder by name; `params` are its options (inception: size, path, batch_size).

    Text-image embedders: `minilm` (text only), `joint` (the shipped image tower, or `joint:PATH` a
    checkpoint of `rissole joint train`) and `clip:PATH` (a CLIP from a local file)."""
    kind, _, path = name.partition(":")
    if kind in ("joint", "clip", "minilm"):
        path = path or params.pop("path", None) or None
        params.pop("tower", None), params.pop("model", None)  # identity entries of a recorded spec
        if kind == "minilm":
            from rissole.embeddings.minilm import MiniLMEmbedder

            return MiniLMEmbedder(path, device=device, **params)
        if kind == "joint":
            from rissole.embeddings.joint import JointEmbedder

            return JointEmbedder(path, device=device, **params)
        if not path:
            raise ValueError("the clip embedder needs a path: clip:PATH (a Hugging Face CLIP folder or a state dict file)")
        from rissole.embeddings.clip import ClipEmbedder

        return ClipEmbedder(path, device=device, **params)
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
    """The embedder that made vectors of `spec` (to embed a user's query image the same way); one whose
    model file has changed since is refused, naming both."""
    embedder = make_embedder(spec.embedder, latent_shape, vqgan, device, **spec.params)
    if embedder.spec.identity() != spec.identity():
        from rissole.errors import DataError

        raise DataError(f"the embedder at {spec.params.get('path', spec.embedder)} now makes {embedder.spec.describe()}, "
                        f"but the vectors were made as {spec.describe()}; rebuild them with `rissole embed`.")
    return embedder


__all__ = [
    "EMBEDDERS", "Embedder", "EmbeddingDatabase", "EmbeddingFile", "EmbeddingSpec", "InceptionEmbedder",
    "VQTokenEmbedder", "build_embedding_database", "embedder_for_spec", "make_embedder", "open_embedding_database",
    "open_embeddings", "write_embeddings",
]
