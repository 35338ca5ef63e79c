"""phi = the neighbour's own VQ-GAN latent as a token sequence (RDM paper, App. E.2 and F.3.5).

A latent (c, h, w) becomes h*w spatial tokens of c channels in raster order; the flat vector
(h*w*c, token-major) is scaled to unit length for retrieval. With k neighbours a head sees
k*h*w tokens (the neighbours' sequences one after another: "k x tokens"; the paper concatenates
along channels instead, which ties the projection to one k). The embedding of a latent needs no
network, so databases of `rissole encode` latents are embedded without decoding anything.
"""

from __future__ import annotations

import os
from typing import ClassVar

import numpy as np
import torch
from einops import rearrange

from rissole.embeddings.base import Embedder, EmbeddingSpec


class VQTokenEmbedder(Embedder):
    name: ClassVar[str] = "vq"

    def __init__(self, latent_shape: tuple[int, int, int], vqgan: str | os.PathLike | torch.nn.Module | None = None,
                 device: str | torch.device = "cpu") -> None:
        """vqgan: a checkpoint path or a loaded VQ-GAN (only needed to embed images, not latents)."""
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.device = device
        self._model = vqgan if isinstance(vqgan, torch.nn.Module) else None
        self.vqgan_path = None if isinstance(vqgan, torch.nn.Module) else vqgan

    @property
    def spec(self) -> EmbeddingSpec:
        c, h, w = self.latent_shape
        return EmbeddingSpec(self.name, tokens=h * w, token_dim=c)

    def embed_latents(self, z: np.ndarray) -> np.ndarray:
        z = np.asarray(z, dtype=np.float32)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"expected latents (n, {', '.join(map(str, self.latent_shape))}), found {z.shape}")
        return self.unit(rearrange(z, "n c h w -> n (h w c)"))

    @torch.no_grad()
    def embed_images(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        from rissole.autoencoder import load_vqgan
        from rissole.data import to_model_range

        if self._model is None:
            if self.vqgan_path is None:
                raise ValueError("the vq embedder needs a VQ-GAN checkpoint to embed images (vqgan=...)")
            self._model = load_vqgan(self.vqgan_path, self.device)
        z = torch.cat([self._model.encode(to_model_range(images[s : s + 256]).to(self.device)).cpu()
                       for s in range(0, len(images), 256)])
        return self.embed_latents(z.numpy())
