"""The two torch modules that are traced into ONNX: the denoiser returning eps, and the VQ decoder.

Why wrappers: the runtime's sampler only understands eps (rissole.diffusion), so a v-predicting
model's output is turned into eps inside the exported graph, with the same formula as
rissole.heads.block_sampling._eps_fn (eps = sqrt(1 - ab_t) x + sqrt(ab_t) v), but per row, since
an exported graph receives a timestep per row. The decoder graph quantises, decodes and clamps to
[-1, 1], exactly as RissolePipeline.decode does before its uint8 conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rissole.diffusion.schedule import NoiseSchedule
from rissole.models.block_unet import BlockDenoiser

DENOISER_INPUTS = ("x", "t", "neighbours", "position")
DENOISER_OUTPUT = "eps"
DECODER_INPUT = "latents"
DECODER_OUTPUT = "images"


class EpsDenoiserGraph(nn.Module):
    """eps(x (B, c, s, s), t (B,) int64, neighbours (B, k, c, s, s), position (B,) int64) for one BlockDenoiser."""

    def __init__(self, model: BlockDenoiser, schedule: NoiseSchedule) -> None:
        super().__init__()
        if model.config.previous_block:
            raise ValueError("a +P model (previous_block=True) samples block after block; the edge bundle holds "
                             "parallel-block models only. Export a model trained with previous_block=false.")
        self.model = model
        self.v_prediction = model.config.prediction == "v"
        ab = schedule.alphas_cumprod
        self.register_buffer("sqrt_ab", torch.from_numpy(np.sqrt(ab)).float(), persistent=False)
        self.register_buffer("sqrt_one_minus_ab", torch.from_numpy(np.sqrt(1.0 - ab)).float(), persistent=False)

    def input_names(self) -> list[str]:
        cfg = self.model.config
        return ["x", "t"] + (["neighbours"] if cfg.retrieval else []) + (["position"] if cfg.position else [])

    def forward(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        rest = list(cond)
        neighbours = rest.pop(0) if cfg.retrieval else None
        position = rest.pop(0) if cfg.position else None
        out = self.model(x, t, neighbours, position, None)
        if not self.v_prediction:
            return out
        a = self.sqrt_ab[t][:, None, None, None]
        s = self.sqrt_one_minus_ab[t][:, None, None, None]
        return s * x + a * out


class DecoderGraph(nn.Module):
    """Unscaled latents (N, c, h, w) -> images in [-1, 1] (N, C, H, W): quantise, decode, clamp."""

    def __init__(self, vqgan: nn.Module) -> None:
        super().__init__()
        self.vqgan = vqgan

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decode(latents).clamp(-1.0, 1.0)
