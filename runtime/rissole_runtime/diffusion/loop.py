"""The reverse-diffusion loop: a sampler that steps, a function that predicts eps.

The one loop of every diffusion head (RISSOLE blocks, RDM latents) and of the torch-free runtime:
it only uses `+`, `*` and a noise source, so `x` may be a torch tensor or a numpy array.
Classifier-free guidance evaluates the conditional and the zero-conditioned prediction in ONE
network call (the batch doubled, rissole_runtime.diffusion.guidance), as a device would.

The sampler interface (Sampler below) lets a sampler keep state between its steps, as multistep
solvers do (DPM-Solver++ 2M, UniPC: the previous steps' model outputs): the loop calls
sampler.reset() once before step 0, then sampler.step(x, eps, i, noise) for i = 0, 1, ... in order,
always with the model output already converted to eps (rissole_runtime.diffusion.prediction; a
solver that works in x0 gets it as (x - sqrt(1 - ab) eps) / sqrt(ab)). Noise is drawn only for the
steps where sampler.needs_noise(i), so deterministic samplers consume no random numbers.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, TypeVar

import numpy as np

from rissole_runtime.diffusion.schedule import guide

Array = TypeVar("Array")

# eps_fn(x, t_index_array, guided) -> eps, or (eps_cond, eps_uncond) when guided is True
EpsFn = Callable[[Any, Any, bool], Any]


class Sampler(Protocol):
    """What the loop needs of a sampler (DDIM, DDPM, or a multistep solver with state)."""

    timesteps: np.ndarray  # int64, noisiest first

    def reset(self) -> None: ...

    def needs_noise(self, i: int) -> bool: ...

    def step(self, x: Any, eps: Any, i: int, noise: Any | None = None) -> Any: ...


def denoise(
    eps_fn: EpsFn,
    sampler: Sampler,
    x: Array,
    noise_fn: Callable[[tuple[int, ...]], Array],
    timestep_fn: Callable[[int, int], Any],
    guidance: float = 1.0,
    progress: Callable[[int], None] | None = None,
) -> Array:
    """Run every step of `sampler` from x = x_T; returns x_0.

    timestep_fn(t, n) builds the (n,) timestep array in the caller's framework; noise_fn(shape)
    draws standard normal noise (seeded by the caller) for stochastic steps.
    """
    guided = guidance != 1.0
    sampler.reset()
    for i, t in enumerate(sampler.timesteps):
        tt = timestep_fn(int(t), x.shape[0])
        if guided:
            eps_c, eps_u = eps_fn(x, tt, True)
            eps = guide(eps_c, eps_u, guidance)
        else:
            eps = eps_fn(x, tt, False)
        x = sampler.step(x, eps, i, noise_fn(tuple(x.shape)) if sampler.needs_noise(i) else None)
        if progress is not None:
            progress(i)
    return x
