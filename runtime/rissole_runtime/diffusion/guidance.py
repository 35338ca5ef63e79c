"""Classifier-free guidance (RDM paper, App. D.2, Eq. 8; Ho & Salimans 2021) as one network call: the
batch doubled, the conditioning of the second half all-zero, the two halves mixed by `guide`.

The one place that builds the doubled batch, for PyTorch sampling (every head), the runtime's ONNX
calls and RARM's logits. Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, TypeVar

import numpy as np

from rissole_runtime.diffusion.prediction import to_eps
from rissole_runtime.diffusion.schedule import NoiseSchedule, guide

Array = TypeVar("Array")

__all__ = ["doubled", "eps_function", "guidance_feeds", "guide", "halves", "with_zeros"]


def _torch() -> Any:
    """The torch module, for torch tensors: loaded already by whoever made them (the runtime never does)."""
    return sys.modules["torch"]


def _cat(parts: list[Any]) -> Any:
    return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else _torch().cat(parts)


def _zeros_like(x: Any) -> Any:
    return np.zeros_like(x) if isinstance(x, np.ndarray) else _torch().zeros_like(x)


def doubled(x: Array | None) -> Array | None:
    """x twice along the batch (None stays None)."""
    return None if x is None else _cat([x, x])


def with_zeros(cond: Array | None) -> Array | None:
    """The conditioning, then all-zero conditioning (the unconditional half; None stays None)."""
    return None if cond is None else _cat([cond, _zeros_like(cond)])


def halves(out: Array) -> tuple[Array, Array]:
    """(conditional, unconditional) halves of a doubled batch's output."""
    n = out.shape[0] // 2
    return out[:n], out[n:]


def guidance_feeds(feeds: dict[str, Any], conditioning: Iterable[str]) -> dict[str, Any]:
    """Every feed doubled; those named in `conditioning` zeroed in the second half."""
    zeroed = set(conditioning)
    return {name: with_zeros(v) if name in zeroed else doubled(v) for name, v in feeds.items()}


# network(x, t, **feeds) -> the raw output (what `prediction` names)
Network = Callable[..., Any]


def eps_function(network: Network, prediction: str, schedule: NoiseSchedule, feeds: dict[str, Any],
                 conditioning: Iterable[str] = ("neighbours",)) -> Callable[[Any, Any, bool], Any]:
    """eps(x, t, guided) for the denoise loop: the network on fixed `feeds`, its output turned into eps;
    guided: one call on the doubled batch (guidance_feeds), returning (eps_cond, eps_uncond). All rows share
    the timestep t[0], as in the loop."""
    sqrt_ab, sqrt_one_minus_ab = schedule.noise_coefficients(np.arange(schedule.num_timesteps))
    both: dict[str, Any] = {}  # the doubled feeds, built on the first guided call

    def eps(x: Any, t: Any, guided: bool) -> Any:
        a, s = float(sqrt_ab[int(t[0])]), float(sqrt_one_minus_ab[int(t[0])])
        if not guided:
            return to_eps(prediction, network(x, t, **feeds), x, a, s)
        if not both:
            both.update(guidance_feeds(feeds, conditioning))
        cond, uncond = halves(network(doubled(x), doubled(t), **both))
        return to_eps(prediction, cond, x, a, s), to_eps(prediction, uncond, x, a, s)

    return eps
