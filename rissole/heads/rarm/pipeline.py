"""RARM's pipeline: code indices position by position (top-k, temperature, guidance on the logits), decoded
through the VQ-GAN's codebook."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rissole.heads.neighbour_pipeline import TEXT_OPTIONS, NeighbourHeadPipeline
from rissole.heads.pipeline import SamplingOptions


class RARMPipeline(NeighbourHeadPipeline):
    kind = "rarm"
    accepts = TEXT_OPTIONS | frozenset({"k", "top_k", "temperature"})

    def num_steps(self, options: SamplingOptions) -> int:
        return int(self.model.config.seq_len)

    def describe(self, options: SamplingOptions) -> str:
        return f"top-k {options.top_k or 'all'}, temperature {options.temperature}"

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        from rissole.data import from_model_range

        _, h, w = self.vqgan.config.latent_shape
        idx = codes.reshape(-1, h, w).to(self.device)
        return np.concatenate([from_model_range(self.vqgan.decode_code(idx[s : s + 256]).clamp(-1, 1))
                               for s in range(0, len(idx), 256)])

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None, x_T: torch.Tensor | None = None,
                 context: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), code indices (n, L)); RARM draws no initial noise (x_T unused)."""
        from rissole.heads.rarm.sampling import sample_codes

        gen = torch.Generator().manual_seed(options.seed)
        codes = sample_codes(self.model, self.neighbour_embeddings(neighbour_ids, context), gen, options.guidance,
                             options.top_k, options.temperature, cache=True, progress=progress)
        return self.decode_codes(codes), codes.cpu()
