"""RDM's pipeline: DDIM / DDPM over the whole latent, conditioned on the neighbours' embeddings."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from rissole.heads.neighbour_pipeline import TEXT_OPTIONS, NeighbourHeadPipeline
from rissole.heads.pipeline import SamplingOptions


class RDMPipeline(NeighbourHeadPipeline):
    kind = "rdm"
    accepts = TEXT_OPTIONS | frozenset({"sampler", "steps", "eta", "k"})

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None, x_T: torch.Tensor | None = None,
                 context: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), unscaled latents (n, c, h, w)); x_T (n, c, h, w)."""
        from rissole.heads.rdm.sampling import sample_latents

        from rissole_runtime.diffusion.noise import NoiseSource

        cfg = self.model.config  # x_T and stochastic-step noise from the numpy source rissole-run uses
        emb = self.neighbour_embeddings(neighbour_ids, context)
        noise = NoiseSource(options.seed, len(emb), (cfg.latent_channels, cfg.latent_size, cfg.latent_size))
        lat = sample_latents(self.model, self.sampler(options), emb, torch.Generator(), options.guidance, progress, x_T,
                             noise) / float(self.config["scale_factor"])
        return self.decode(lat), lat.cpu()
