"""The `joint` embedder: images through the image tower trained here, texts through frozen MiniLM.

Both land in all-MiniLM-L6-v2's 384-d sentence space, so a text prompt can retrieve images and a
database of image embeddings can be queried by text. The spec names the tower by the hash of its
weights: databases made with another tower are refused.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Sequence

import numpy as np
import torch

from rissole.embeddings.base import Embedder, EmbeddingSpec, TextTower
from rissole.errors import DataError

if TYPE_CHECKING:
    from rissole.embeddings.minilm import MiniLMEmbedder

SHIPPED_NAME = "joint-minilm-stickers"


def shipped_joint() -> Path:
    from rissole.paths import CHECKPOINTS

    return CHECKPOINTS / SHIPPED_NAME


class JointEmbedder(Embedder):
    name: ClassVar[str] = "joint"

    def __init__(self, path: str | os.PathLike | None = None, batch_size: int = 256,
                 device: str | torch.device = "cpu") -> None:
        from rissole.checkpoint import load_checkpoint
        from rissole.embeddings.joint_train import KIND, MODEL_DEFAULTS
        from rissole.models.image_tower import ImageTower
        from rissole.training import with_defaults

        self.path = (Path(path) if path is not None else shipped_joint()).resolve()
        self.batch_size, self.device = batch_size, torch.device(device)
        ckpt = load_checkpoint(self.path, expect_kind=KIND)
        mc = with_defaults(ckpt.config.get("model"), MODEL_DEFAULTS, "model")
        self.tower = ImageTower(tuple(mc["channels"]), mc["dim"], 3, mc["groups"], mc["init_temperature"])
        group = ckpt.inference_weights_name()
        ckpt.weights[group] = {k: v.float() for k, v in ckpt.weights[group].items()}  # slim checkpoints keep fp16
        ckpt.load_into(self.tower, group)
        self.tower.to(self.device).eval()
        self.tower_hash = ckpt.weights_hash()[:16]
        self.dim = int(mc["dim"])
        self._text = None

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.name, tokens=1, token_dim=self.dim, params={"tower": self.tower_hash, "path": str(self.path)})

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        from tqdm import tqdm

        from rissole.models.image_tower import to_tower_input

        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"the joint embedder needs uint8 images (n, 1|3, H, W), found {images.dtype} {images.shape}.")
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for s in tqdm(range(0, len(images), self.batch_size), desc="joint", unit="batch", disable=not progress):
            x = to_tower_input(torch.from_numpy(images[s : s + self.batch_size]).to(self.device))
            out[s : s + len(x)] = self.tower(x).cpu().numpy()
        return self.unit(out)

    def embed_texts(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        return self.text_embedder().embed_texts(texts, progress)

    def text_tower(self) -> TextTower:
        return self.text_embedder().text_tower()

    def text_embedder(self) -> "MiniLMEmbedder":
        """The frozen MiniLM the tower was trained into (loaded on first use)."""
        if self._text is None:
            from rissole.embeddings.minilm import MiniLMEmbedder

            self._text = MiniLMEmbedder(device=self.device)
        return self._text
