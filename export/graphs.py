"""The torch modules that are traced into ONNX: a denoiser returning eps (RISSOLE's block denoiser
or RDM's latent UNet), RARM's context and one-position step, and the VQ decoder.

Why wrappers: the runtime's sampler only understands eps, so a v- or x0-predicting model's output is
turned into eps inside the exported graph by the function PyTorch sampling uses
(rissole_runtime.diffusion.prediction.to_eps), with per-row coefficients, since an exported graph
receives a timestep per row. Both denoiser graphs share that conversion (_EpsGraph) and wrap their network as `model`,
so the fp16 / TensorRT fp32 scopes ("" and "/model") name the same ops for either kind. The
decoder graph quantises, decodes and clamps to [-1, 1], exactly as RissolePipeline.decode and
NeighbourHeadPipeline.decode do before their uint8 conversion.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from rissole_runtime.diffusion.prediction import check_prediction, to_eps
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole.models.block_unet import BlockDenoiser
from rissole.models.layers import CrossAttention
from rissole.models.rarm_transformer import RARMTransformer
from rissole.models.rdm_unet import RDMUNet

DENOISER_INPUTS = ("x", "t", "neighbours", "position")
DENOISER_OUTPUT = "eps"
CONTEXT_INPUTS = ("neighbours",)  # RARM; outputs: rarm_context_outputs(depth)
STEP_OUTPUTS = ("logits", "kv_new")  # RARM; inputs: rarm_step_inputs(depth)
DECODER_INPUT = "latents"
DECODER_OUTPUT = "images"


class _EpsGraph(nn.Module):
    """The prediction -> eps conversion with a timestep per row; `model` is the wrapped network."""

    def __init__(self, model: nn.Module, prediction: str, schedule: NoiseSchedule) -> None:
        super().__init__()
        self.model = model
        self.prediction = check_prediction(prediction)
        a, s = schedule.noise_coefficients(np.arange(schedule.num_timesteps))
        self.register_buffer("sqrt_ab", torch.from_numpy(a).float(), persistent=False)
        self.register_buffer("sqrt_one_minus_ab", torch.from_numpy(s).float(), persistent=False)

    def to_eps(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return out
        a = self.sqrt_ab[t][:, None, None, None]  # x is (B, c, h, w) for both kinds
        s = self.sqrt_one_minus_ab[t][:, None, None, None]
        return to_eps(self.prediction, out, x, a, s)


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


def rarm_context_outputs(depth: int) -> list[str]:
    """Names of RARMContextGraph's outputs: per decoder block, the cross-attention keys (transposed) and values."""
    return [f"cross_{kv}{i}" for i in range(depth) for kv in ("k", "v")]


def rarm_step_inputs(depth: int) -> list[str]:
    """Names of RARMStepGraph's inputs: token, pos, then per block the self-attention cache and the context."""
    return ["token", "pos", *[f"{part}{i}" for i in range(depth) for part in ("self_k", "self_v", "cross_k", "cross_v")]]


class RARMContextGraph(nn.Module):
    """neighbours (B, k, d) unit embeddings (zeros = unconditional) -> per decoder block cross_k (B, heads,
    head_dim, k * tokens) (keys transposed, ready for q @ k) and cross_v (B, heads, k * tokens, head_dim),
    computed once per sample. One tensor per block and role: slicing a stacked tensor inside the step
    graph would copy all of it at every position."""

    def __init__(self, model: RARMTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, neighbours: torch.Tensor) -> tuple[torch.Tensor, ...]:
        context = self.model.context(neighbours)
        out: list[torch.Tensor] = []
        for blk in self.model.blocks:
            k, v = blk.cross_attn.keys_values(context)
            out += [k.transpose(-1, -2).contiguous(), v]
        return tuple(out)


def _attention(attn: CrossAttention, a: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor,
               visible: torch.Tensor | None = None, k_new: torch.Tensor | None = None,
               v_new: torch.Tensor | None = None) -> torch.Tensor:
    """attn's attention of one query a (B, 1, width) to keys_t (B, heads, head_dim, M) / values (B, heads, M,
    head_dim), only the `visible` slots (B, 1, 1, M) if given, and to one extra key/value (B, heads, 1,
    head_dim) if given (the position's own): one softmax over both, the cache read, never rewritten."""
    q = attn.heads(attn.to_q(a))  # (B, heads, 1, head_dim)
    scale = q.shape[-1] ** -0.5
    scores = (q @ keys_t) * scale
    if visible is not None:
        scores = torch.where(visible, scores, torch.tensor(float("-inf")))
    if k_new is None:
        out = torch.softmax(scores, -1) @ values
    else:
        w = torch.softmax(torch.cat([scores, (q * k_new).sum(-1, keepdim=True) * scale], -1), -1)
        out = w[..., :-1] @ values + w[..., -1:] * v_new
    b, h, n, dh = out.shape
    return attn.to_out(out.transpose(1, 2).reshape(b, n, h * dh))


class RARMStepGraph(nn.Module):
    """One position of RARMTransformer.step in fixed shapes, for ONNX and TensorRT:

        token (B,) int64   the previous code (the start token at position 0)
        pos (B,) int64     the position being decoded, the same in every row
        per block i:  self_k{i} (B, heads, head_dim, seq_len), self_v{i} (B, heads, seq_len, head_dim): the
                      keys (transposed) / values of positions < pos (later slots ignored);
                      cross_k{i}, cross_v{i}: RARMContextGraph's outputs
     -> logits (B, vocab), kv_new (B, depth, 2, heads, 1, head_dim): this position's keys/values, which the
        caller writes into slot pos of its cache

    Where `step` slices the cache to pos + 1 slots and writes in place, this graph masks the cache to the
    slots < pos and attends to the new key/value beside it, so no shape depends on pos and the cache is
    only read (passing it back out would copy it at every position); the parity check compares it with
    the PyTorch forward pass position by position.
    """

    def __init__(self, model: RARMTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, token: torch.Tensor, pos: torch.Tensor, *caches: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        slots = torch.arange(m.config.seq_len, device=token.device)
        visible = (slots[None] < pos[:, None])[:, None, None, :]  # (B, 1, 1, L)
        h = (m.token_embed(token) + m.position_embed[pos])[:, None]
        new = []
        for i, blk in enumerate(m.blocks):
            self_k, self_v, cross_k, cross_v = caches[4 * i: 4 * i + 4]
            a = blk.norm1(h)
            k, v = blk.self_attn.keys_values(a)  # (B, heads, 1, head_dim)
            new.append(torch.stack([k, v], 1))
            h = h + _attention(blk.self_attn, a, self_k, self_v, visible, k, v)
            h = h + _attention(blk.cross_attn, blk.norm2(h), cross_k, cross_v)
            h = h + blk.ff(blk.norm3(h))
        return m.head(m.out_norm(h))[:, 0], torch.stack(new, 1)


class DecoderGraph(nn.Module):
    """Unscaled latents (N, c, h, w) -> images in [-1, 1] (N, C, H, W): quantise, decode, clamp."""

    def __init__(self, vqgan: nn.Module) -> None:
        super().__init__()
        self.vqgan = vqgan

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vqgan.decode(latents).clamp(-1.0, 1.0)
