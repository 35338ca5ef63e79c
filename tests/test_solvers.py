"""DPM-Solver++(2M) and UniPC over the shared schedule: exactness, numpy = torch, a Gaussian with known eps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rissole_runtime.diffusion.loop import denoise
from rissole_runtime.diffusion.schedule import DDIMSampler, NoiseSchedule
from rissole_runtime.diffusion.solvers import SPACINGS, DPMSolverPP2M, UniPC, make_sampler, spaced_timesteps

SOLVERS = ("dpmpp2m", "unipc")


def test_spacings_follow_lin_et_al_table_2() -> None:
    s = NoiseSchedule()
    assert spaced_timesteps(s, 10, "trailing").tolist() == [999, 899, 799, 699, 599, 499, 399, 299, 199, 99]
    assert spaced_timesteps(s, 10, "leading").tolist() == [900, 800, 700, 600, 500, 400, 300, 200, 100, 0]
    for n in (1, 7, 50):  # linspace is DDIM's own spacing
        assert spaced_timesteps(s, n, "linspace").tolist() == DDIMSampler(s, n).timesteps.tolist()
    assert spaced_timesteps(s, 1, "trailing").tolist() == [999]
    with pytest.raises(ValueError, match="spacing must be one of"):
        spaced_timesteps(s, 10, "even")


@pytest.mark.parametrize("name", SOLVERS)
@pytest.mark.parametrize("steps", [1, 2, 5, 15])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_oracle_x0_is_recovered_exactly(name: str, steps: int, spacing: str) -> None:
    """Fed the eps of a fixed x0 (an oracle), every step's x0 estimate is x0, so the solver lands on it;
    one step is x_T -> x0 directly, as in the DDIM test."""
    s = NoiseSchedule()
    sampler = make_sampler(name, s, steps, spacing=spacing)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 10, 8, 8))
    x = rng.standard_normal(x0.shape)
    for i, t in enumerate(sampler.timesteps):
        a, b = s.noise_coefficients(t)
        x = sampler.step(x, (x - a * x0) / b, i)
    np.testing.assert_allclose(x, x0, atol=1e-8)
    assert len(sampler) == steps


def _eps_fn(x, t, guided):  # noqa: ANN001, ANN202 - a stand-in network, any framework
    """The exact eps of N(0.3, 0.8^2) data plus a smooth nonlinear term: samples stay O(1), as a real model's."""
    lib = torch if isinstance(x, torch.Tensor) else np
    ab = float(NoiseSchedule().alphas_cumprod[int(t[0])])
    a, b = ab**0.5, (1.0 - ab) ** 0.5
    return (b / (0.64 * ab + b * b)) * (x + (-a * 0.3)) + 0.1 * lib.tanh(2.0 * x)


@pytest.mark.parametrize("name", SOLVERS)
def test_numpy_and_torch_paths_agree(name: str) -> None:
    """The whole trajectory (history included) through the shared loop, float32 numpy vs float32 torch."""
    x_T = np.random.default_rng(1).standard_normal((6, 10, 4, 4)).astype(np.float32)
    outs = []
    for x in (x_T, torch.from_numpy(x_T.copy())):
        sampler = make_sampler(name, NoiseSchedule(), 12)
        if isinstance(x, torch.Tensor):
            t_fn = lambda t, m: torch.full((m,), t, dtype=torch.long)  # noqa: E731
        else:
            t_fn = lambda t, m: np.full((m,), t, dtype=np.int64)  # noqa: E731
        outs.append(denoise(_eps_fn, sampler, x, lambda shape: None, t_fn))
    assert outs[0].dtype == np.float32 and outs[1].dtype == torch.float32
    np.testing.assert_allclose(outs[0], outs[1].numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(outs[0] - x_T).max() > 0.1  # it did move


@pytest.mark.parametrize("name", SOLVERS)
def test_state_is_reset_between_runs(name: str) -> None:
    """The loop resets the history: a second trajectory on the same sampler object gives the same result."""
    sampler = make_sampler(name, NoiseSchedule(), 8)
    x_T = np.random.default_rng(2).standard_normal((3, 5))
    t_fn = lambda t, m: np.full((m,), t)  # noqa: E731
    first = denoise(_eps_fn, sampler, x_T, lambda shape: None, t_fn)
    np.testing.assert_array_equal(denoise(_eps_fn, sampler, x_T, lambda shape: None, t_fn), first)


def _gaussian_run(sampler, mu: float, sd: float, n: int = 50_000) -> np.ndarray:  # noqa: ANN001
    """Data x0 ~ N(mu, sd^2): x_t ~ N(a mu, a^2 sd^2 + b^2) and the exact eps is
    E[eps | x_t] = b (x_t - a mu) / (a^2 sd^2 + b^2). Start from the exact marginal at the first step."""
    ab = sampler.schedule.alphas_cumprod
    a, b = np.sqrt(ab[sampler.timesteps[0]]), np.sqrt(1 - ab[sampler.timesteps[0]])
    x = a * mu + np.sqrt(a * a * sd * sd + b * b) * np.random.default_rng(3).standard_normal(n)
    for i, t in enumerate(sampler.timesteps):
        a, b = np.sqrt(ab[t]), np.sqrt(1 - ab[t])
        x = sampler.step(x, b * (x - a * mu) / (a * a * sd * sd + b * b), i)
    return x


@pytest.mark.parametrize("cls", [DPMSolverPP2M, UniPC])
def test_gaussian_with_exact_eps_converges_in_few_steps(cls) -> None:  # noqa: ANN001
    """The second-order solvers reach the data distribution's spread in 25 calls, where DDIM-25 is 8%
    narrow; at 15 calls they are within 4% (DDIM-15: 14%)."""
    s, mu, sd = NoiseSchedule(), 0.5, 0.8
    for steps, tol in ((15, 0.04), (25, 0.015)):
        x = _gaussian_run(cls(s, steps), mu, sd)
        assert abs(x.mean() - mu) < 0.01 and abs(x.std() / sd - 1) < tol, (steps, x.mean(), x.std())
    ddim = _gaussian_run(DDIMSampler(s, 25), mu, sd)
    assert abs(ddim.std() / sd - 1) > 0.05  # the test can tell a first-order solver from a second-order one


def test_make_sampler_refuses_what_does_not_apply() -> None:
    s = NoiseSchedule()
    with pytest.raises(ValueError, match="no eta"):
        make_sampler("unipc", s, 10, eta=0.5)
    with pytest.raises(ValueError, match="linspace"):
        make_sampler("ddim", s, 10, spacing="trailing")
    with pytest.raises(ValueError, match="sampler must be one of"):
        make_sampler("euler", s, 10)
    assert not make_sampler("dpmpp2m", s, 10).needs_noise(0)
    assert make_sampler("ddim", s, 10, eta=1.0).needs_noise(0) and not make_sampler("ddim", s, 10).needs_noise(0)


def test_sample_cli_refuses_eta_with_an_ode_solver(capsys: pytest.CaptureFixture[str]) -> None:
    from rissole.cli.main import main

    assert main(["sample", "--sampler", "unipc", "--eta", "0.5", "-n", "1"]) != 0
    assert "unipc solves the probability-flow ODE and has no eta" in capsys.readouterr().err


def test_sampling_options_spacing_reaches_the_solver() -> None:
    """SamplingOptions.spacing picks the solver's timesteps (the few-step benchmark sweeps it); None: trailing."""
    from rissole.heads.pipeline import Pipeline, SamplingOptions
    from rissole_runtime.diffusion.schedule import NoiseSchedule
    from rissole_runtime.diffusion.solvers import spaced_timesteps

    class Fixed(Pipeline):  # only the schedule is needed to build a sampler
        kind, accepts = "test", frozenset({"sampler", "steps"})

        def __init__(self) -> None:
            self.config = {"diffusion": NoiseSchedule().to_dict()}

    pipe, sched = Fixed(), NoiseSchedule()
    for spacing in ("linspace", "leading", "trailing"):
        s = pipe.sampler(SamplingOptions(sampler="unipc", steps=10, spacing=spacing))
        np.testing.assert_array_equal(s.timesteps, spaced_timesteps(sched, 10, spacing))
    default = pipe.sampler(SamplingOptions(sampler="dpmpp2m", steps=10))
    np.testing.assert_array_equal(default.timesteps, spaced_timesteps(sched, 10, "trailing"))
