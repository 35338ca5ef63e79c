"""One interface for the neighbour embeddings phi(y) of RDM and RARM (RDM paper, Sec. 3.1, App. E.2).

    emb = make_embedder("vq", vqgan=path) ; v = emb.embed_images(uint8 (n, C, H, W))  # (n, d), unit length

Every embedding is a flat unit vector of d = tokens * token_dim values, laid out token-major, so
retrieval searches it as one vector (dot product) and a head reads it back as a sequence of
`tokens` cross-attention tokens of `token_dim` channels each (k neighbours -> k * tokens tokens).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from rissole.retrieval.keys import normalise


@dataclass(frozen=True)
class TextTower:
    """A text tower in exportable form (rissole-export writes it as ONNX beside its tokenizer file):
    `module(input_ids, attention_mask)` (int64 (n, L)) -> unit (n, d) float32, the same vectors as
    the embedder's embed_texts; `tokenizer_file` is the Hugging Face fast-tokenizer JSON that made the ids."""

    module: Any  # torch.nn.Module
    tokenizer_file: Any  # pathlib.Path
    max_tokens: int


@dataclass(frozen=True)
class EmbeddingSpec:
    """What an embedding vector is: which embedder, and how its d values split into tokens."""

    embedder: str
    tokens: int
    token_dim: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.tokens * self.token_dim

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "dim": self.dim}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EmbeddingSpec":
        return cls(str(d["embedder"]), int(d["tokens"]), int(d["token_dim"]), dict(d.get("params") or {}))

    def identity(self) -> tuple:
        """What makes two embeddings the same space: everything but where the model file lies (`path`)."""
        return (self.embedder, self.tokens, self.token_dim,
                tuple(sorted((k, str(v)) for k, v in self.params.items() if k != "path")))

    def describe(self) -> str:
        params = "".join(f", {k} {v}" for k, v in sorted(self.params.items()) if k != "path")
        return f"{self.embedder} embeddings of d = {self.dim} ({self.tokens} token(s) x {self.token_dim}{params})"


class Embedder(ABC):
    """Images (or, where the embedder allows, VQ latents) -> unit-length embeddings (n, d) float32."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def spec(self) -> EmbeddingSpec: ...

    @abstractmethod
    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """uint8 images (n, C, H, W) -> float32 (n, d), every row of unit L2 norm."""

    def embed_texts(self, texts: "list[str]", progress: bool = False) -> np.ndarray:
        """Texts -> float32 (n, d) unit rows in the same space as embed_images (joint text-image embedders)."""
        from rissole.errors import DataError

        raise DataError(f"the {self.name} embedder has no text tower; embed text with minilm, joint or clip:PATH.")

    def text_tower(self) -> TextTower:
        """The text tower for export (joint text-image embedders)."""
        from rissole.errors import DataError

        raise DataError(f"the {self.name} embedder has no text tower to export; only minilm, joint and clip:PATH have one.")

    def embed_latents(self, z: np.ndarray) -> np.ndarray | None:
        """VQ latents (n, c, h, w) -> (n, d) when the embedding is a function of the latent alone; else None."""
        return None

    @staticmethod
    def unit(x: np.ndarray) -> np.ndarray:
        return normalise(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
