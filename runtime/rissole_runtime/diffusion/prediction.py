"""What a denoising network predicts, turned into the eps every sampler steps with.

    eps  the noise itself (DDPM, Ho et al. 2020)
    v    sqrt(ab) eps - sqrt(1 - ab) x0 (progressive distillation, Salimans & Ho 2022):
         eps = sqrt(1 - ab) x_t + sqrt(ab) v
    x0   the clean sample: eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)

with x_t = sqrt(ab) x0 + sqrt(1 - ab) eps. The coefficients are the schedule's noise_coefficients,
floats (one timestep for the whole batch, PyTorch sampling and the runtime) or per-row arrays
(the exported graphs, which receive a timestep per row). Plain arithmetic, so torch tensors, numpy
arrays and traced graphs use the same function.
"""

from __future__ import annotations

from typing import Any, TypeVar

Array = TypeVar("Array")
PREDICTIONS = ("eps", "v", "x0")


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, found {prediction!r}")
    return prediction


def to_eps(prediction: str, out: Array, x: Array, sqrt_ab: Any, sqrt_one_minus_ab: Any) -> Array:
    """eps from the network output `out` at x_t = `x`, given sqrt(ab_t) and sqrt(1 - ab_t)."""
    if prediction == "eps":
        return out
    if prediction == "v":
        return sqrt_one_minus_ab * x + sqrt_ab * out
    if prediction == "x0":
        return (x - sqrt_ab * out) / sqrt_one_minus_ab
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, found {prediction!r}")


def training_target(prediction: str, x0: Array, eps: Array, sqrt_ab: Any, sqrt_one_minus_ab: Any) -> Array:
    """What a network of this parameterisation regresses on: the inverse of to_eps."""
    if prediction == "eps":
        return eps
    if prediction == "v":
        return sqrt_ab * eps - sqrt_one_minus_ab * x0
    if prediction == "x0":
        return x0
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, found {prediction!r}")
