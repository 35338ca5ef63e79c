"""VQ code indices of latents: what RARM models. The same nearest-codebook-entry rule as the VQ-GAN's
quantiser (VectorQuantizer2: argmin of squared distance), applied to the stored pre-quantisation
latents in chunks, so training never runs the encoder."""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm


def code_indices(latents: np.ndarray, codebook: torch.Tensor, chunk: int = 4096, progress: bool = False) -> np.ndarray:
    """latents (n, c, h, w) float, codebook (K, c) -> int64 (n, h*w) code indices in raster order."""
    cb = codebook.detach().float().cpu()
    cb_sq = (cb**2).sum(1)
    n, c, h, w = latents.shape
    out = np.empty((n, h * w), dtype=np.int64)
    for s in tqdm(range(0, n, chunk), desc="code indices", unit="chunk", disable=not progress):
        z = torch.from_numpy(np.array(latents[s : s + chunk], dtype=np.float32))  # a copy: memmaps are read-only
        flat = z.permute(0, 2, 3, 1).reshape(-1, c)  # raster order: row by row, column by column
        d = (flat**2).sum(1, keepdim=True) + cb_sq[None] - 2.0 * flat @ cb.T
        out[s : s + len(z)] = d.argmin(1).reshape(len(z), h * w).numpy()
    return out


def vqgan_codebook(vqgan_path: str) -> torch.Tensor:
    """(K, c) codebook of a VQ-GAN checkpoint (its inference weights)."""
    from rissole.checkpoint import load_checkpoint

    ckpt = load_checkpoint(vqgan_path, expect_kind="vqgan")
    return ckpt.weights[ckpt.inference_weights_name()]["quantize.embedding.weight"]
