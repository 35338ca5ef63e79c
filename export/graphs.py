"""The torch modules that are traced into ONNX: a denoiser returning eps (RISSOLE's block denoiser
or RDM's latent UNet), and the VQ decoder.

Why wrappers: the runtime's sampler only understands eps (rissole.diffusion), so a v-predicting
model's output is turned into eps inside the exported graph, with the same formula as
rissole.heads.block_sampling._eps_fn and rissole.heads.rdm_sampling.rdm_eps_fn
(eps = sqrt(1 - ab_t) x + sqrt(ab_t) v), but per row, since an exported graph receives a timestep
per row. Both denoiser graphs share that conversion (_EpsGraph) and wrap their network as `model`,
so the fp16 / TensorRT fp32 scopes ("" and "/model") name the same ops for either kind. The
decoder graph quantises, decodes and clamps to [-1, 1], exactly as RissolePipeline.decode and
NeighbourHeadPipeline.decode do before their uint8 conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rissole.diffusion.schedule import NoiseSchedule
from rissole.models.block_unet import BlockDenoiser
from rissole.models.rdm_unet import RDMUNet

DENOISER_INPUTS = ("x", "t", "neighbours", "position")
DENOISER_OUTPUT = "eps"
DECODER_INPUT = "latents"
DECODER_OUTPUT = "images"


class _EpsGraph(nn.Module):
    """The v -> eps conversion with a timestep per row; `model` is the wrapped network."""

    def __init__(self, model: nn.Module, prediction: str, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.model = model
        self.v_prediction = prediction == "v"
        ab = schedule.alphas_cumprod
        self.register_buffer("sqrt_ab", torch.from_numpy(np.sqrt(ab)).float(), persistent=False)
        self.register_buffer("sqrt_one_minus_ab", torch.from_numpy(np.sqrt(1.0 - ab)).float(), persistent=False)

    def to_eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if not self.v_prediction:
            return out
        a = self.sqrt_ab[t][:, None, None, None]  # x is (B, c, h, w) for both kinds
        s = self.sqrt_one_minus_ab[t][:, None, None, None]
        return s * x + a * out


class EpsDenoiserGraph(_EpsGraph):
    """eps(x (B, c, s, s), t (B,) int64, neighbours (B, k, c, s, s), position (B,) int64) for one BlockDenoiser."""

    def __init__(self, model: BlockDenoiser, schedule: NoiseSchedule) -> None:
        if model.config.previous_block:
            raise ValueError("a +P model (previous_block=True) samples block after block; the edge bundle holds "
                             "parallel-block models only. Export a model trained with previous_block=false.")
        super().__init__(model, model.config.prediction, schedule)

    def input_names(self) -> list[str]:
        cfg = self.model.config
        return ["x", "t"] + (["neighbours"] if cfg.retrieval else []) + (["position"] if cfg.position else [])

    def forward(self, x: torch.Tensor, t: torch.Tensor, *cond: torch.Tensor) -> torch.Tensor:
        cfg = self.model.config
        rest = list(cond)
        neighbours = rest.pop(0) if cfg.retrieval else None
        position = rest.pop(0) if cfg.position else None
        return self.to_eps(self.model(x, t, neighbours, position, None), x, t)


class RDMEpsGraph(_EpsGraph):
    """eps(x (B, c, h, w), t (B,) int64, neighbours (B, k, d) unit embeddings; zeros = unconditional) for RDM."""

    def __init__(self, model: RDMUNet, schedule: NoiseSchedule) -> None:
        super().__init__(model, model.config.prediction, schedule)

    def input_names(self) -> list[str]:
        return ["x", "t", "neighbours"]

    def forward(self, x: torch.Tensor, t: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        return self.to_eps(self.model(x, t, neighbours), x, t)


class DecoderGraph(nn.Module):
    """Unscaled latents (N, c, h, w) -> images in [-1, 1] (N, C, H, W): quantise, decode, clamp."""

    def __init__(self, vqgan: nn.Module) -> None:
        super().__init__()
        self.vqgan = vqgan

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decode(latents).clamp(-1.0, 1.0)
