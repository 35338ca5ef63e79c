"""Diffusion for the heads: the training-time forward process (rissole.diffusion.training, torch) on top
of the numpy schedule, samplers, denoise loop, prediction conversion and guidance that the runtime
distribution owns (rissole_runtime.diffusion)."""

from rissole_runtime.diffusion.schedule import DDIMSampler, DDPMSampler, NoiseSchedule, guide

__all__ = ["DDIMSampler", "DDPMSampler", "NoiseSchedule", "guide"]
