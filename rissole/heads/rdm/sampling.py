"""RDM sampling: noise for the whole latent -> the shared reverse-diffusion loop (rissole_runtime.diffusion.loop)
-> scaled latent. Classifier-free guidance doubles the batch with all-zero neighbour embeddings (seed
000, App. D.2), one network call per step."""

from __future__ import annotations

from typing import Callable

import torch

from rissole_runtime.diffusion.guidance import eps_function
from rissole_runtime.diffusion.loop import denoise
from rissole_runtime.diffusion.noise import NoiseSource
from rissole_runtime.diffusion.schedule import AffineSampler, NoiseSchedule
from rissole.models.rdm_unet import RDMUNet


def rdm_eps_fn(model: RDMUNet, schedule: NoiseSchedule, neighbours: torch.Tensor,
               source: torch.Tensor | None = None) -> Callable[[torch.Tensor, torch.Tensor, bool], object]:
    """eps(x, t, guided) for fixed neighbours (n, k, d) (rissole_runtime.diffusion.guidance); an edit model's
    source latents are kept in the unconditional half (guidance contrasts the text, not the image)."""
    feeds = {"neighbours": neighbours} if source is None else {"neighbours": neighbours, "source": source}
    return eps_function(model, model.config.prediction, schedule, feeds)


@torch.no_grad()
def sample_latents(model: RDMUNet, sampler: AffineSampler, neighbours: torch.Tensor,
                   generator: torch.Generator, guidance: float = 1.0,
                   progress: Callable[[int], None] | None = None, x_T: torch.Tensor | None = None,
                   noise: NoiseSource | None = None, source: torch.Tensor | None = None) -> torch.Tensor:
    """Scaled latents (n, c, h, w) conditioned on neighbour embeddings (n, k, d), any k. `x_T` (n, c, h, w)
    replaces the initial noise; `noise` (the numpy source the edge runtime shares) gives x_T and every
    stochastic step's noise, else the torch `generator` does. `source` (n, c, h, w): an edit model's scaled
    latents of the images to edit."""
    cfg = model.config
    dev = next(model.parameters()).device
    n = neighbours.shape[0]
    shape = (n, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    if noise is not None and (noise.n, noise.sample_shape) != (n, shape[1:]):
        raise ValueError(f"the noise source is for {noise.n} samples of {noise.sample_shape}, not {n} of {shape[1:]}")
    if x_T is None:
        x_T = torch.from_numpy(noise.initial()) if noise is not None else torch.randn(shape, generator=generator)
    elif tuple(x_T.shape) != shape:
        raise ValueError(f"x_T must be {list(shape)}, found {list(x_T.shape)}")
    x_T = x_T.to(dev)
    noise_fn = lambda shape: torch.randn(shape, generator=generator).to(dev)  # noqa: E731
    if noise is not None:
        noise_fn = lambda shape: torch.from_numpy(noise.step(0, n, shape)).to(dev)  # noqa: E731
    t_fn = lambda t, m: torch.full((m,), t, dtype=torch.long, device=dev)  # noqa: E731
    eps = rdm_eps_fn(model, sampler.schedule, neighbours.to(dev), None if source is None else source.to(dev))
    return denoise(eps, sampler, x_T, noise_fn, t_fn, guidance, progress)
