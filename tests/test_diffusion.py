"""The one schedule / sampler definition: DDIM vs DDPM, numpy vs torch, guidance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rissole.diffusion import DDIMSampler, DDPMSampler, NoiseSchedule, guide


def test_ddim_eta1_all_steps_is_ddpm() -> None:
    s = NoiseSchedule()
    ddim, ddpm = DDIMSampler(s, num_steps=1000, eta=1.0), DDPMSampler(s)
    assert np.array_equal(ddim.timesteps, ddpm.timesteps)
    for i in range(1000):
        np.testing.assert_allclose(ddim.coefficients(i), ddpm.coefficients(i), rtol=1e-9, atol=1e-12)


def test_linear_schedule_values() -> None:
    s = NoiseSchedule()
    assert s.betas[0] == pytest.approx(1e-4) and s.betas[-1] == pytest.approx(0.02)
    assert s.alphas_cumprod[-1] == pytest.approx(4.04e-5, rel=1e-2)  # x_T is almost pure noise


@pytest.mark.parametrize("steps", [1, 10, 50, 1000])
def test_ddim_with_oracle_eps_recovers_x0(steps: int) -> None:
    """With the true noise as the prediction, deterministic DDIM lands exactly on x0 from any start."""
    s = NoiseSchedule()
    sampler = DDIMSampler(s, num_steps=steps, eta=0.0)
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal((4, 10, 8, 8))
    x = rng.standard_normal(x0.shape)
    for i, t in enumerate(sampler.timesteps):
        a, b = s.noise_coefficients(t)
        eps = (x - a * x0) / b
        x = sampler.step(x, eps, i)
    np.testing.assert_allclose(x, x0, atol=1e-8)
    assert len(sampler) == steps and sampler.timesteps[0] == 999
    assert sampler.timesteps[-1] == (0 if steps > 1 else 999)


def test_same_step_for_numpy_and_torch() -> None:
    sampler = DDIMSampler(NoiseSchedule(), num_steps=20, eta=0.5)
    rng = np.random.default_rng(1)
    x, eps, z = (rng.standard_normal((3, 10, 4, 4)).astype(np.float32) for _ in range(3))
    out_np = sampler.step(x, eps, 5, z)
    out_t = sampler.step(torch.from_numpy(x), torch.from_numpy(eps), 5, torch.from_numpy(z))
    assert out_np.dtype == np.float32 and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_np, out_t.numpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="needs a noise sample"):
        sampler.step(x, eps, 5)


def test_guidance_scale_one_is_conditional() -> None:
    c, u = torch.randn(2, 10, 4, 4), torch.randn(2, 10, 4, 4)
    assert torch.equal(guide(c, u, 1.0), c)
    torch.testing.assert_close(guide(c, u, 3.0), u + 3.0 * (c - u))
    torch.testing.assert_close(guide(c, u, 0.0), u)


def test_diffusion_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys; import rissole_runtime.diffusion.loop, rissole_runtime.diffusion.schedule; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_prediction_conversion_inverts_the_training_target(prediction: str) -> None:
    """to_eps(training_target(x0, eps)) is eps for every parameterisation, per batch (floats, torch) and per
    row (arrays, as the exported graphs index them), and numpy gives what torch gives."""
    from rissole_runtime.diffusion.prediction import to_eps, training_target

    sched = NoiseSchedule()
    rng = np.random.default_rng(0)
    x0, eps = rng.standard_normal((4, 10, 4, 4)), rng.standard_normal((4, 10, 4, 4))
    for t in (0, 400, 999):
        a, s = (float(v) for v in sched.noise_coefficients(t))
        xt = a * x0 + s * eps
        target = training_target(prediction, x0, eps, a, s)
        np.testing.assert_allclose(to_eps(prediction, target, xt, a, s), eps, rtol=1e-6, atol=1e-6 / s)
        tt = [torch.from_numpy(v) for v in (target, xt)]
        np.testing.assert_allclose(to_eps(prediction, tt[0], tt[1], a, s).numpy(), to_eps(prediction, target, xt, a, s))
    t = np.array([0, 10, 500, 999])
    a, s = (v[:, None, None, None] for v in sched.noise_coefficients(t))
    xt = a * x0 + s * eps
    np.testing.assert_allclose(to_eps(prediction, training_target(prediction, x0, eps, a, s), xt, a, s), eps,
                               rtol=1e-6, atol=1e-4)


def test_guidance_doubles_the_batch_once_with_zero_conditioning() -> None:
    """eps_function: one network call on [x; x] with [cond; 0] (position kept in both halves), the halves
    converted and returned as (cond, uncond); the loop mixes them with `guide`."""
    from rissole_runtime.diffusion.guidance import eps_function

    calls = []

    def network(x, t, neighbours, position):  # noqa: ANN001
        calls.append((x.shape[0], neighbours.copy(), position.copy()))
        return x * 0 + neighbours.sum(axis=(1, 2, 3))[:, None, None, None] + position[:, None, None, None]

    nb, pos = np.ones((3, 2, 1, 1)), np.arange(3)
    fn = eps_function(network, "eps", NoiseSchedule(), {"neighbours": nb, "position": pos})
    x, t = np.zeros((3, 1, 2, 2)), np.full(3, 5)
    c, u = fn(x, t, True)
    assert len(calls) == 1 and calls[0][0] == 6
    np.testing.assert_array_equal(calls[0][1][3:], 0)
    np.testing.assert_array_equal(calls[0][2], np.concatenate([pos, pos]))
    np.testing.assert_array_equal(c[:, 0, 0, 0], 2 + pos)
    np.testing.assert_array_equal(u[:, 0, 0, 0], pos)
    np.testing.assert_array_equal(fn(x, t, False), c)


def test_loop_resets_a_stateful_sampler_and_passes_eps_in_order() -> None:
    """A multistep sampler keeps state between steps: the loop resets it before step 0 and steps in order."""
    from rissole_runtime.diffusion.loop import denoise

    class Recorder(DDIMSampler):
        def reset(self) -> None:
            self.seen: list[int] = []

        def step(self, x, eps, i, noise=None):  # noqa: ANN001
            self.seen.append(i)
            return super().step(x, eps, i, noise)

    smp = Recorder(NoiseSchedule(), 5)
    for _ in range(2):  # the second run starts from a clean state
        denoise(lambda x, t, g: x * 0.1, smp, np.ones((2, 3)), lambda s: np.zeros(s), lambda t, n: np.full(n, t))
        assert smp.seen == list(range(5))
