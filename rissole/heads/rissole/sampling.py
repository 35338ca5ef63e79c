"""RISSOLE sampling: every block of every sample denoised together, one network call per step.

    neighbours (n, b, k, c, s, s)  the same-position blocks of each sample's k retrieved rows
    -> noise (n*b, c, s, s) -> T..1 steps of the shared sampler, blocks folded into the batch
    -> (n, b, c, s, s) -> merge_blocks -> latent (n, c, h, w) -> VQ decoder (by the caller)

Blocks are independent given their neighbours, so the fold is exact, not an approximation.
Two other orders exist for comparison and for the +P ablation:
    block_by_block   the same network on one block position at a time (what the authors' code does)
    previous_block   +P: block i is conditioned on the finished block i-1, so it must be sequential
Classifier-free guidance doubles the batch with all-zero neighbours (RDM style, one call).
"""

from __future__ import annotations

from typing import Callable

import torch

from rissole_runtime.diffusion.guidance import eps_function
from rissole_runtime.diffusion.loop import denoise
from rissole_runtime.diffusion.noise import NoiseSource
from rissole_runtime.diffusion.schedule import AffineSampler, NoiseSchedule
from rissole.models.block_unet import BlockDenoiser
from rissole_runtime.retrieval.blocks import merge_blocks


def _eps_fn(model: BlockDenoiser, schedule: NoiseSchedule, neighbours: torch.Tensor | None,
            position: torch.Tensor | None, previous: torch.Tensor | None) -> Callable[[torch.Tensor, torch.Tensor, bool], object]:
    """eps(x, t, guided) for a fixed conditioning (rissole_runtime.diffusion.guidance: the output turned
    into eps, guidance as one call with zero neighbours)."""
    feeds = {"neighbours": neighbours, "position": position, "previous": previous}
    return eps_function(model, model.config.prediction, schedule, feeds, conditioning=("neighbours",))


@torch.no_grad()
def sample_blocks(
    model: BlockDenoiser,
    sampler: AffineSampler,
    neighbours: torch.Tensor | None,
    n: int,
    generator: torch.Generator,
    guidance: float = 1.0,
    order: str = "parallel",
    progress: Callable[[int], None] | None = None,
    x_T: torch.Tensor | None = None,
    noise: NoiseSource | None = None,
) -> torch.Tensor:
    """Scaled latents (n, c, h, w) from neighbours (n, b, k, c, s, s) (None for the -RAG model).

    x_T (n, b, c, s, s): the initial noise, drawn from `noise` (the numpy noise source the edge
    runtime shares, rissole_runtime.diffusion.noise) or else from `generator` when None. With `noise`, the
    stochastic steps' noise comes from it too, so the parallel order matches the runtime's images.

    order: "parallel" (all n*b blocks in one call per step), "block_by_block" (n blocks per call,
    b times as many calls); a model with previous_block=True is always sampled sequentially.
    """
    cfg = model.config
    b, c, s = cfg.num_blocks, cfg.latent_channels, cfg.block_size
    if cfg.retrieval and neighbours is None:
        raise ValueError("this model conditions on retrieved neighbours: pass them (n, b, k, c, s, s)")
    if order not in ("parallel", "block_by_block"):
        raise ValueError(f"order must be 'parallel' or 'block_by_block', found {order!r}")
    dev = next(model.parameters()).device
    # all noise is drawn up front in one fixed layout, so every order starts from the same x_T
    if noise is not None and (noise.n, noise.sample_shape) != (n, (b, c, s, s)):
        raise ValueError(f"the noise source is for {noise.n} samples of {noise.sample_shape}, not {n} of {(b, c, s, s)}")
    if x_T is None:
        x_T = torch.from_numpy(noise.initial()) if noise is not None else torch.randn((n, b, c, s, s), generator=generator)
    elif tuple(x_T.shape) != (n, b, c, s, s):
        raise ValueError(f"x_T must have shape {(n, b, c, s, s)} (n, b, c, s, s), found {tuple(x_T.shape)}")
    x_T = x_T.to(dev)
    noise_fn = lambda shape: torch.randn(shape, generator=generator).to(dev)  # noqa: E731
    if noise is not None:  # the parallel order: one (b, c, s, s) draw per sample and stochastic step
        noise_fn = lambda shape: torch.from_numpy(noise.step(0, n, shape)).to(dev)  # noqa: E731
    t_fn = lambda t, m: torch.full((m,), t, dtype=torch.long, device=dev)  # noqa: E731
    nb = None if neighbours is None else neighbours.to(dev)
    positions = torch.arange(b, device=dev).repeat(n) if cfg.position else None

    if order == "parallel" and not cfg.previous_block:
        cond = None if nb is None else nb.flatten(0, 1)
        x = denoise(_eps_fn(model, sampler.schedule, cond, positions, None), sampler, x_T.flatten(0, 1), noise_fn, t_fn, guidance, progress)
        return merge_blocks(x.reshape(n, b, c, s, s), cfg.grid)

    out = torch.zeros_like(x_T)
    if noise is not None:  # block i's noise: the i-th block of each sample's draw
        noise_fn = lambda shape: torch.from_numpy(noise.step(0, n)[:, i].copy()).to(dev)  # noqa: E731
    for i in range(b):  # one block position at a time
        cond = None if nb is None else nb[:, i]
        pos = torch.full((n,), i, dtype=torch.long, device=dev) if cfg.position else None
        prev = (out[:, i - 1] if i > 0 else torch.zeros_like(out[:, 0])) if cfg.previous_block else None
        out[:, i] = denoise(_eps_fn(model, sampler.schedule, cond, pos, prev), sampler, x_T[:, i], noise_fn, t_fn, guidance, progress)
    return merge_blocks(out, cfg.grid)
