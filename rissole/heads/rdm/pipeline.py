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
                 context: np.ndarray | None = None, source: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), unscaled latents (n, c, h, w)); x_T (n, c, h, w); an edit model also
        reads `source`, the unscaled latents (n, c, h, w) of the images to edit."""
        from rissole.heads.rdm.sampling import sample_latents

        from rissole_runtime.diffusion.noise import NoiseSource

        cfg = self.model.config  # x_T and stochastic-step noise from the numpy source rissole-run uses
        if cfg.edit and source is None:
            from rissole_runtime.errors import ConfigError

            raise ConfigError(f"{self.path}: an edit model (model.edit) changes a given image; use "
                              "`rissole edit IMAGE --prompt TEXT --ckpt CKPT --out OUT.png`, not `rissole sample`.")
        emb = self.neighbour_embeddings(neighbour_ids, context)
        noise = NoiseSource(options.seed, len(emb), (cfg.latent_channels, cfg.latent_size, cfg.latent_size))
        scale = float(self.config["scale_factor"])
        src = None if source is None else torch.from_numpy(np.ascontiguousarray(source, dtype=np.float32) * np.float32(scale))
        lat = sample_latents(self.model, self.sampler(options), emb, torch.Generator(), options.guidance, progress, x_T,
                             noise, src) / scale
        return self.decode(lat), lat.cpu()

    @torch.no_grad()
    def edit(self, images: np.ndarray, prompt: str, options: SamplingOptions,
             progress: Callable[[int], None] | None = None) -> np.ndarray:
        """kNN-Diffusion's mask-free manipulation (Sec. 3.1): uint8 images (n, C, H, W) edited towards the text,
        each conditioned on its own latent and the prompt's embedding (which stood in training for the embedding
        of the area to restore; rissole.heads.rdm.edit_pairs)."""
        from rissole.data import to_model_range
        from rissole.heads.text_conditioning import embed_prompts
        from rissole_runtime.errors import ConfigError

        if not self.model.config.edit:
            raise ConfigError(f"{self.path}: not an edit model (model.edit); train one with configs/rdm/stickers_edit.yaml, "
                              "or use the shipped checkpoints/knn-stickers-edit.")
        x = to_model_range(images).to(self.device)
        source = self.vqgan.encode(x).float().cpu().numpy()  # as `rissole encode` stores training latents
        text = np.repeat(embed_prompts(self, [prompt]), len(images), axis=0)[:, None]  # (n, 1, d)
        return self.generate(np.full((len(images), 1), -1), options, progress=progress, context=text, source=source)[0]
