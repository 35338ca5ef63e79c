"""Diffusion: the noise schedule and samplers (numpy-only, shared with the torch-free runtime).

Nothing imported here may import torch: the edge runtime uses this module as it is.
"""

from rissole.diffusion.schedule import DDIMSampler, DDPMSampler, NoiseSchedule, guide

__all__ = ["DDIMSampler", "DDPMSampler", "NoiseSchedule", "guide"]
