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
