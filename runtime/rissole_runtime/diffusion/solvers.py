"""Few-step multistep ODE solvers over the shared NoiseSchedule: DPM-Solver++ (2M) and UniPC (bh2).

Both integrate the probability-flow ODE in the data-prediction form: the eps the loop hands over is
turned into x0 = (x - sigma_t eps) / alpha_t, with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t)
and the half log-SNR lambda_t = log(alpha_t / sigma_t). Coefficients are float64 numpy, computed
from the schedule; every update is arithmetic on the arrays (`a * x + b * x0 + c * x0_prev`) with
Python-float coefficients, so the same code steps torch tensors and numpy arrays in their own dtype,
as AffineSampler does. A multistep solver keeps the previous x0 predictions (and UniPC the
previous sample) as state: `reset()` clears it and the loop calls it at the start of every run.

Step i goes from timesteps[i] to timesteps[i + 1], and the last step to the clean end point
(alpha = 1, sigma = 0), where both solvers return their first-order x0 estimate, as DDIM does.

Nothing here imports torch: the edge runtime uses this module as it is.
"""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np

from rissole_runtime.diffusion.schedule import DDIMSampler, DDPMSampler, NoiseSchedule

Array = TypeVar("Array")

SPACINGS = ("linspace", "leading", "trailing")
SAMPLERS = ("ddim", "ddpm", "dpmpp2m", "unipc")
ODE_SOLVERS = ("dpmpp2m", "unipc")  # deterministic: no eta
# measured (python -m benchmarks.solvers error, benchmarks/results/solver_error.json): on the shipped RISSOLE,
# trailing has the lowest error against a 1000-step reference for both solvers at every count from 5 to 25
# calls (DPM-Solver++ at 15 calls: trailing 0.030, leading 0.067, linspace 0.072; DDIM-50: 0.018)
DEFAULT_SPACING = "trailing"
# what rissole-export records as a bundle's sampler unless told otherwise: UniPC at 10 calls measured equal to
# DDIM-50 at a fifth of the calls (FID at N = 2,000, python -m benchmarks.solvers; RISSOLE 44.06 vs 44.20,
# RDM 45.04 vs 45.14). `rissole sample` keeps DDIM-50, the papers' protocol the benchmarks compare at.
DEVICE_SAMPLER = "unipc"
DEVICE_STEPS = 10


def spaced_timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = DEFAULT_SPACING) -> np.ndarray:
    """Descending integer timesteps (noisiest first), the three spacings of Lin et al. 2024, Table 2:
    linspace  round(linspace(T - 1, 0, n)), both ends included (what DDIMSampler uses);
    leading   (n - 1 .. 0) * (T // n), so the noisiest step is below T - 1;
    trailing  round(arange(T, 0, -T / n)) - 1, so the noisiest step is T - 1 and the last T / n - 1."""
    T = schedule.num_timesteps
    if not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be in [1, {T}], found {num_steps}")
    if spacing == "linspace":
        ts = np.linspace(T - 1, 0, num_steps).round()
    elif spacing == "leading":
        ts = np.arange(num_steps)[::-1] * (T // num_steps)
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
    else:
        raise ValueError(f"timestep spacing must be one of {', '.join(SPACINGS)}, found {spacing!r}")
    return np.unique(ts.astype(np.int64))[::-1].copy()


class MultistepSolver:
    """What DPM-Solver++ and UniPC share: timesteps, alpha / sigma / lambda along them, the x0 history."""

    name = ""

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 15, spacing: str = DEFAULT_SPACING) -> None:
        self.schedule, self.num_steps, self.spacing = schedule, num_steps, spacing
        self.timesteps = spaced_timesteps(schedule, num_steps, spacing)
        ab = np.append(schedule.alphas_cumprod[self.timesteps], 1.0)  # the end point: clean data
        self._alpha, self._sigma = np.sqrt(ab), np.sqrt(1.0 - ab)
        with np.errstate(divide="ignore"):
            self._lambda = np.log(self._alpha) - np.log(self._sigma)  # +inf at the end point
        self.reset()

    def __len__(self) -> int:
        return len(self.timesteps)

    def reset(self) -> None:
        """Forget the previous model outputs: call before every new trajectory (the loop does)."""
        self._history: list[Any] = []  # x0 predictions at timesteps[: i + 1], at most the last two kept

    def needs_noise(self, i: int) -> bool:
        """Whether step i needs a noise sample: never, these solve the probability-flow ODE."""
        return False

    def _to_x0(self, x: Array, eps: Array, i: int) -> Array:
        return float(1.0 / self._alpha[i]) * x + float(-self._sigma[i] / self._alpha[i]) * eps

    def _h(self, i: int) -> float:
        """lambda step from timesteps[i] to the next point (inf into the clean end)."""
        return float(self._lambda[i + 1] - self._lambda[i])

    def to_dict(self) -> dict[str, Any]:
        return {"num_steps": self.num_steps, "spacing": self.spacing, "timesteps": self.timesteps.tolist()}

    def step(self, x: Array, eps: Array, i: int, noise: Array | None = None) -> Array:
        raise NotImplementedError


class DPMSolverPP2M(MultistepSolver):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): second-order multistep in x0 with the previous
    x0 prediction; first order (= DDIM) on the first step and into the clean end point."""

    name = "dpmpp2m"

    def step(self, x: Array, eps: Array, i: int, noise: Array | None = None) -> Array:
        x0 = self._to_x0(x, eps, i)
        self._history = (self._history + [x0])[-2:]
        if i == len(self.timesteps) - 1:  # sigma_next = 0: x_next = x0 (the exponential term vanishes)
            return x0
        h = self._h(i)
        a = float(self._sigma[i + 1] / self._sigma[i])
        c = float(-self._alpha[i + 1] * np.expm1(-h))  # alpha_next (1 - e^-h)
        if i == 0 or len(self._history) < 2:
            return a * x + c * x0
        r = float(self._lambda[i] - self._lambda[i - 1]) / h  # h_{i-1} / h_i
        # D = (1 + 1 / 2r) x0_i - (1 / 2r) x0_{i-1}  (Lu et al. 2022, Eq. 13 / Algorithm 2)
        return a * x + (c * (1.0 + 0.5 / r)) * x0 + (-c * 0.5 / r) * self._history[0]


class UniPC(MultistepSolver):
    """UniPC (Zhao et al. 2023) with the B(h) = e^h - 1 variant (bh2) in data prediction, order 2:
    the UniP-2 predictor (Algorithm 2) and the UniC corrector, which reuses the model output at the
    predicted sample to correct it (no extra network call). Order 1 on the first step and into the
    clean end point; the corrector runs at every step but the first (nothing to correct yet)."""

    name = "unipc"
    order = 2

    def reset(self) -> None:
        super().reset()
        self._last_x: Any = None  # the sample the last predictor stepped from
        self._last_order = 0

    def _b_coefficients(self, h: float, order: int) -> tuple[float, float, np.ndarray]:
        """(h_phi_1, B_h, b) of Zhao et al. 2023, Algorithm 2 in x0 form (hh = -h): phi-function terms."""
        hh = -h
        h_phi_1 = float(np.expm1(hh))
        h_phi_k = h_phi_1 / hh - 1.0
        b_h = h_phi_1  # bh2
        b, factorial = [], 1
        for k in range(1, order + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= k + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        return h_phi_1, b_h, np.array(b)

    def _update(self, x_prev: Array, i_prev: int, x0s: list[Any], order: int, x0_new: Array | None) -> Array:
        """From the sample at timesteps[i_prev] to the next point: the predictor (x0_new None) or the
        corrector (x0_new, the model's x0 at the predicted next sample). x0s[-1] is the x0 at i_prev."""
        h = self._h(i_prev)
        alpha_t = float(self._alpha[i_prev + 1])
        h_phi_1, b_h, b = self._b_coefficients(h, order)
        m0 = x0s[-1]
        out = float(self._sigma[i_prev + 1] / self._sigma[i_prev]) * x_prev + (-alpha_t * h_phi_1) * m0
        if order == 2:
            r1 = float(self._lambda[i_prev - 1] - self._lambda[i_prev]) / h  # < 0: the older point
            d1 = (1.0 / r1) * x0s[-2] + (-1.0 / r1) * m0  # (m_{-1} - m0) / r1
        if x0_new is None:
            if order == 2:  # UniP-2 predictor, bh2: rho = 1/2
                out = out + (-alpha_t * b_h * 0.5) * d1
            return out
        if order == 1:
            rhos = np.array([0.5])
        else:
            rks = np.array([r1, 1.0])
            rhos = np.linalg.solve(np.stack([np.ones(2), rks]), b)  # rows rk^0, rk^1
        d1_t = x0_new + (-1.0) * m0
        out = out + (-alpha_t * b_h * float(rhos[-1])) * d1_t
        if order == 2:
            out = out + (-alpha_t * b_h * float(rhos[0])) * d1
        return out

    def step(self, x: Array, eps: Array, i: int, noise: Array | None = None) -> Array:
        x0 = self._to_x0(x, eps, i)
        if i > 0 and self._last_x is not None:  # UniC: correct x with the model output taken at it
            x = self._update(self._last_x, i - 1, self._history, self._last_order, x0)
        self._history = (self._history + [x0])[-2:]
        self._last_x = x
        last = i == len(self.timesteps) - 1
        order = 1 if (last or len(self._history) < 2) else self.order
        self._last_order = order
        if last:  # into the clean end point: x_next = x0
            return x0
        return self._update(x, i, self._history, order, None)


def make_sampler(name: str, schedule: NoiseSchedule, steps: int = 50, eta: float = 0.0,
                 spacing: str | None = None) -> Any:
    """The sampler `name` (one of SAMPLERS) over `schedule`: DDIM-`steps` (eta), DDPM (all T steps),
    DPM-Solver++(2M) or UniPC with `steps` network calls and the given timestep spacing."""
    if name == "ddim":
        if spacing not in (None, "linspace"):
            raise ValueError(f"DDIM here uses linspace timesteps; --spacing {spacing} is for dpmpp2m and unipc")
        return DDIMSampler(schedule, steps, eta)
    if name == "ddpm":
        return DDPMSampler(schedule)
    if eta:
        raise ValueError(f"{name} solves the probability-flow ODE and has no eta; eta is for ddim")
    if name == "dpmpp2m":
        return DPMSolverPP2M(schedule, steps, spacing or DEFAULT_SPACING)
    if name == "unipc":
        return UniPC(schedule, steps, spacing or DEFAULT_SPACING)
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, found {name!r}")
