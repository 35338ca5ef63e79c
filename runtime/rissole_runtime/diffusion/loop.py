"""The reverse-diffusion loop: a sampler that steps, a function that predicts eps.

Shared by every diffusion head (RISSOLE blocks, RDM latents) and by the torch-free runtime:
the loop only uses `+`, `*` and a noise source, so `x` may be a torch tensor or a numpy array.
Classifier-free guidance evaluates the conditional and the zero-conditioned prediction in ONE
network call (the batch doubled), as a device would.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from rissole_runtime.diffusion.schedule import AffineSampler, guide

Array = TypeVar("Array")

# eps_fn(x, t_index_array, guided) -> eps, or (eps_cond, eps_uncond) when guided is True
EpsFn = Callable[[Any, Any, bool], Any]


def denoise(
    eps_fn: EpsFn,
    sampler: AffineSampler,
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
    for i, t in enumerate(sampler.timesteps):
        tt = timestep_fn(int(t), x.shape[0])
        if guided:
            eps_c, eps_u = eps_fn(x, tt, True)
            eps = guide(eps_c, eps_u, guidance)
        else:
            eps = eps_fn(x, tt, False)
        sigma = sampler.coefficients(i)[2]
        x = sampler.step(x, eps, i, noise_fn(tuple(x.shape)) if sigma > 0 else None)
        if progress is not None:
            progress(i)
    return x
