"""RDM's decoding head (RDM paper, Sec. 3.2.1): a latent-diffusion UNet over the whole latent,
conditioned by cross-attention on the embeddings of the k retrieved neighbours.

    context = NeighbourContext(neighbour embeddings (B, k, d))      (B, k*tokens, context_dim)
    eps     = UNet(z_t, t; SpatialTransformer(., context) at the attention resolutions)

Building blocks (ResBlock, SpatialTransformer, ...) are shared with the RISSOLE block denoiser in
rissole.models.layers. `attention_resolutions` are downsampling factors, as in latent-diffusion:
1 = the full 8 x 8 latent, 2 = 4 x 4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rissole.config import ModelConfig
from rissole.embeddings.base import EmbeddingSpec
from rissole_runtime.diffusion.prediction import PREDICTIONS
from rissole_runtime.errors import ConfigError
from rissole.models.layers import Downsample, ResBlock, SpatialTransformer, Upsample, group_norm, timestep_embedding
from rissole.models.neighbour_context import NeighbourContext


@dataclass
class NeighbourConditioning(ModelConfig):
    """The conditioning part of an RDM / RARM config: how many neighbours, of which embedding."""

    may_be_zero = ("k",)  # with own_embedding (check_k)

    k: int = 4  # k_train: neighbours per training sample (the paper's main RDM: 4)
    embedder: str = "vq"
    context_tokens: int = 64  # tokens per neighbour embedding
    context_token_dim: int = 10  # values per token
    embedder_params: dict[str, Any] = field(default_factory=dict)
    context_dim: int = 64  # width of the learned projection
    # kNN-Diffusion (Sheynin et al.): the sample's own embedding conditions beside its k neighbours (k + 1
    # vectors; k = 0 is the paper's no-kNN baseline); at inference a text embedding takes its place
    own_embedding: bool = False

    def embedding_spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(self.embedder, self.context_tokens, self.context_token_dim, dict(self.embedder_params))

    @property
    def vectors(self) -> int:
        """Embeddings a sample conditions on: its k neighbours, and its own with own_embedding."""
        return self.k + int(self.own_embedding)

    def check_k(self) -> None:
        if self.k < (0 if self.own_embedding else 1):
            raise ConfigError(f"k must be >= 1 (>= 0 with own_embedding, kNN-Diffusion's no-kNN baseline), found {self.k}")


@dataclass
class RDMUNetConfig(NeighbourConditioning):
    latent_channels: int = 10
    latent_size: int = 8
    model_channels: int = 48
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention_resolutions: list[int] = field(default_factory=lambda: [1, 2])
    num_heads: int = 4
    dropout: float = 0.0
    prediction: str = "v"  # eps, v or x0 (rissole_runtime.diffusion.prediction); eps samples broken images here (README)
    # kNN-Diffusion's mask-free manipulation (Sheynin et al., Sec. 3.1): the UNet also reads the latent of the
    # image to edit, concatenated to z_t (rissole.heads.rdm.edit_pairs builds the training pairs)
    edit: bool = False

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"model.prediction must be one of {', '.join(PREDICTIONS)}, found {self.prediction!r}")
        if self.latent_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(f"latent size {self.latent_size} cannot be halved {len(self.channel_mult) - 1} times; "
                              "shorten channel_mult.")
        levels = [2**i for i in range(len(self.channel_mult))]
        bad = [r for r in self.attention_resolutions if r not in levels]
        if bad:
            raise ConfigError(f"attention_resolutions {bad} are not downsampling factors of this UNet ({levels}).")
        self.check_k()


class RDMUNet(nn.Module):
    """eps_theta(z_t, t, {phi(y)}): predicts the noise of a whole latent from its neighbours' embeddings."""

    def __init__(self, config: RDMUNetConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C, c, D = cfg.model_channels, cfg.latent_channels, cfg.context_dim
        emb_dim = 4 * C
        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.context = NeighbourContext(cfg.context_tokens, cfg.context_token_dim, D)
        self.conv_in = nn.Conv2d(2 * c if cfg.edit else c, C, 3, padding=1)

        def block(ch: int, ds: int) -> list[nn.Module]:
            return [SpatialTransformer(ch, D, cfg.num_heads, cfg.dropout)] if ds in cfg.attention_resolutions else []

        self.down = nn.ModuleList()
        skips, ch, ds = [C], C, 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(nn.ModuleList([ResBlock(ch, C * mult, emb_dim, cfg.dropout), *block(C * mult, ds)]))
                ch = C * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(nn.ModuleList([Downsample(ch)]))
                skips.append(ch)
                ds *= 2
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout), SpatialTransformer(ch, D, cfg.num_heads, cfg.dropout),
                                  ResBlock(ch, ch, emb_dim, cfg.dropout)])
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), C * mult, emb_dim, cfg.dropout), *block(C * mult, ds)]
                ch = C * mult
                if level > 0 and i == cfg.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.up.append(nn.ModuleList(layers))
        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    @staticmethod
    def _run(layers: nn.Module, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        for layer in layers:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            else:
                h = layer(h)
        return h

    def forward(self, x: torch.Tensor, t: torch.Tensor, neighbours: torch.Tensor,
                source: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, c, h, w) noisy latents; t (B,); neighbours (B, k, d) embeddings (any k; zeros = unconditional);
        source (B, c, h, w) scaled latents of the image to edit (model.edit only)."""
        if self.config.edit != (source is not None):
            raise ValueError("an edit model (model.edit) needs the source latent, other models take none")
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        context = self.context(neighbours)
        h = self.conv_in(x if source is None else torch.cat([x, source], dim=1))
        hs = [h]
        for layers in self.down:
            h = self._run(layers, h, emb, context)
            hs.append(h)
        h = self._run(self.mid, h, emb, context)
        for layers in self.up:
            h = self._run(layers, torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out_conv(F.silu(self.out_norm(h)))
