"""The one definition of the noise schedule and of the DDPM / DDIM update rules.

Coefficients are computed once in float64 numpy; each update is plain arithmetic
(`a * x + b * eps + c * noise`) with Python-float coefficients, so the same code steps torch
tensors in training-time sampling and numpy arrays in the torch-free runtime, keeping the
array's own dtype. The network that predicts eps is not part of this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from rissole_runtime.errors import ConfigError
from rissole_runtime.validate import INT, NUM, STR, Field, check_schema

SCHEDULE_SCHEMA = {"num_timesteps": Field(INT, required=False, min=1), "beta_start": Field(NUM, required=False),
                   "beta_end": Field(NUM, required=False), "kind": Field(STR, required=False)}

Array = TypeVar("Array")  # torch.Tensor or np.ndarray: anything with + and * by floats


@dataclass(frozen=True)
class NoiseSchedule:
    """Discrete-time variance schedule (DDPM, Ho et al. 2020): linear betas from beta_start to beta_end."""

    num_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.kind not in ("linear", "scaled_linear"):
            raise ConfigError(f"diffusion.kind: expected 'linear' or 'scaled_linear' (latent-diffusion's), found {self.kind!r}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ConfigError(f"diffusion: expected 0 < beta_start < beta_end < 1, found {self.beta_start}, {self.beta_end}")

    @property
    def betas(self) -> np.ndarray:
        if self.kind == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, self.num_timesteps, dtype=np.float64) ** 2
        return np.linspace(self.beta_start, self.beta_end, self.num_timesteps, dtype=np.float64)

    @property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(1.0 - self.betas)

    def noise_coefficients(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(sqrt(abar_t), sqrt(1 - abar_t)) for integer timesteps t: x_t = a * x_0 + b * eps."""
        ab = self.alphas_cumprod[np.asarray(t)]
        return np.sqrt(ab), np.sqrt(1.0 - ab)

    def to_dict(self) -> dict[str, Any]:
        return {"num_timesteps": self.num_timesteps, "beta_start": self.beta_start, "beta_end": self.beta_end, "kind": self.kind}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config") -> "NoiseSchedule":
        """From a config's `diffusion` section or a manifest's `schedule`: keys and types checked first."""
        check_schema(d, SCHEDULE_SCHEMA, where, "diffusion", error=ConfigError)
        unknown = sorted(set(d) - set(SCHEDULE_SCHEMA))
        if unknown:
            raise ConfigError(f"{where}: unknown diffusion keys {unknown}; known: {sorted(SCHEDULE_SCHEMA)}.")
        return cls(**d)


def guide(eps_cond: Array, eps_uncond: Array, scale: float) -> Array:
    """Classifier-free guidance (RDM App. D.2, Eq. 8): eps_u + s * (eps_c - eps_u); s = 1 is the conditional model."""
    if scale == 1.0:
        return eps_cond
    return eps_uncond + scale * (eps_cond - eps_uncond)


class AffineSampler:
    """A sampler whose every step is x_prev = a * x_t + b * eps + sigma * z, given coefficients(i).

    The denoise loop's sampler interface (rissole_runtime.diffusion.loop): `timesteps`, reset(),
    needs_noise(i), step(x, eps, i, noise). These samplers keep no state between steps, so reset()
    does nothing; a multistep solver overrides it."""

    timesteps: np.ndarray

    def __len__(self) -> int:
        return len(self.timesteps)

    def reset(self) -> None:
        """Forget what earlier steps left behind; the loop calls this before step 0."""

    def needs_noise(self, i: int) -> bool:
        """Whether step i adds fresh noise (the loop draws it only then)."""
        return self.coefficients(i)[2] > 0.0

    def coefficients(self, i: int) -> tuple[float, float, float]:
        raise NotImplementedError

    def step(self, x: Array, eps: Array, i: int, noise: Array | None = None) -> Array:
        a, b, sigma = self.coefficients(i)
        out = a * x + b * eps
        if sigma > 0.0:
            if noise is None:
                raise ValueError(f"{type(self).__name__} step {i} has sigma {sigma:.3g} > 0 and needs a noise sample")
            out = out + sigma * noise
        return out


class DDIMSampler(AffineSampler):
    """DDIM (Song et al. 2021) over respaced timesteps; eta = 0 deterministic, eta = 1 with all steps is DDPM."""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 50, eta: float = 0.0) -> None:
        T = schedule.num_timesteps
        if not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be in [1, {T}], found {num_steps}")
        self.schedule, self.num_steps, self.eta = schedule, num_steps, float(eta)
        # evenly spaced from T-1 (the noisiest step) down to 0; one step means t = T-1 only
        self.timesteps = np.unique(np.linspace(T - 1, 0, num_steps).round().astype(np.int64))[::-1].copy()
        ab = schedule.alphas_cumprod
        self._ab = ab[self.timesteps]
        self._ab_prev = np.append(ab[self.timesteps[1:]], 1.0)

    def coefficients(self, i: int) -> tuple[float, float, float]:
        """(a, b, sigma) of step i (0 = noisiest): x_prev = a * x_t + b * eps + sigma * z."""
        ab, ab_prev = self._ab[i], self._ab_prev[i]
        sigma = self.eta * np.sqrt((1.0 - ab_prev) / (1.0 - ab)) * np.sqrt(1.0 - ab / ab_prev)
        # x0 = (x - sqrt(1 - ab) eps) / sqrt(ab); x_prev = sqrt(ab_prev) x0 + sqrt(1 - ab_prev - sigma^2) eps
        a = np.sqrt(ab_prev / ab)
        b = np.sqrt(max(1.0 - ab_prev - sigma**2, 0.0)) - np.sqrt(ab_prev) * np.sqrt(1.0 - ab) / np.sqrt(ab)
        return float(a), float(b), float(sigma)

    def to_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "eta": self.eta, "timesteps": self.timesteps.tolist()}


class DDPMSampler(AffineSampler):
    """Ancestral sampling (Ho et al. 2020, Eq. 6-7) with the posterior variance beta_tilde, over all T steps."""

    def __init__(self, schedule: NoiseSchedule) -> None:
        self.schedule = schedule
        T = schedule.num_timesteps
        self.timesteps = np.arange(T - 1, -1, -1, dtype=np.int64)
        betas, ab = schedule.betas, schedule.alphas_cumprod
        ab_prev = np.append(1.0, ab[:-1])
        self._x0_from_x = 1.0 / np.sqrt(ab)
        self._x0_from_eps = -np.sqrt(1.0 - ab) / np.sqrt(ab)
        self._mean_x0 = betas * np.sqrt(ab_prev) / (1.0 - ab)
        self._mean_xt = (1.0 - ab_prev) * np.sqrt(1.0 - betas) / (1.0 - ab)
        self._var = betas * (1.0 - ab_prev) / (1.0 - ab)

    def coefficients(self, i: int) -> tuple[float, float, float]:
        """(a, b, sigma) of step i: the posterior mean a * x_t + b * eps and its standard deviation."""
        t = self.timesteps[i]
        a = self._mean_x0[t] * self._x0_from_x[t] + self._mean_xt[t]
        b = self._mean_x0[t] * self._x0_from_eps[t]
        return float(a), float(b), float(np.sqrt(self._var[t]))
