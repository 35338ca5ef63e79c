"""Denoising networks (torch). The samplers that drive them live in rissole.diffusion."""
