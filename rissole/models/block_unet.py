"""RISSOLE's block denoiser (RISSOLE paper, Sec. 4.1.3): eps_psi(z_t^i, t, neighbours' i-th blocks).

    e_x = conv3x3(z_t^i)                          (c -> C)
    e_c = conv3x3(concat of the k neighbour blocks) (k*c -> C)        if retrieval
    e_p = conv3x3(previous block z^{i-1})          (c -> C)            if previous_block (+P)
    h   = LayerNorm(e_x + e_c + e_p)  over (C, h, w), learned affine, saved with the weights
    eps = UNet(h, time embedding [+ learned block-position embedding if position (+Pos)])

No block depends on another (unless +P), so blocks are folded into the batch. Ablations are flags
of this one model; with grid 1 and retrieval off it is a plain latent diffusion UNet (the LDM
baseline).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rissole.config import ModelConfig
from rissole_runtime.diffusion.prediction import PREDICTIONS
from rissole_runtime.errors import ConfigError
from rissole.models.layers import Downsample, ResBlock, SelfAttention, Upsample, group_norm, timestep_embedding


@dataclass
class BlockDenoiserConfig(ModelConfig):
    latent_channels: int = 10
    latent_size: int = 8  # h = w of the whole latent
    grid: int = 2  # g: b = g*g blocks
    k: int = 10  # neighbours per block
    model_channels: int = 64
    channel_mult: list[int] = field(default_factory=lambda: [1, 2])
    num_res_blocks: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    num_heads: int = 4
    dropout: float = 0.0
    retrieval: bool = True  # off: RISSOLE-RAG
    position: bool = False  # on: RISSOLE+Pos
    previous_block: bool = False  # on: RISSOLE+P (sequential sampling)
    key: str = "block0"  # retrieval key: block 0 (the paper) or the whole latent ("latent"), see rissole.retrieval.keys
    # what the network outputs: "eps" (the noise, as LDM/RISSOLE), "v" (sqrt(ab) eps - sqrt(1 - ab) x0) or "x0".
    # The input LayerNorm hides each block's overall scale, which puts a floor of about 1/d under the
    # eps error; eps-prediction multiplies it by 1/ab_t at high t (x0 error > 100 at t = 999 here),
    # v-prediction does not. See README "RISSOLE".
    prediction: str = "v"

    def __post_init__(self) -> None:
        if self.latent_size % self.grid:
            raise ConfigError(
                f"latent size {self.latent_size} is not divisible by grid {self.grid}; "
                "use a grid that divides it (an 8x8 latent takes g in {1, 2, 4}) or a first stage with a 12x12 latent for g=3."
            )
        if self.prediction not in PREDICTIONS:
            raise ConfigError(f"model.prediction must be one of {', '.join(PREDICTIONS)}, found {self.prediction!r}")
        if self.key not in ("block0", "latent"):
            raise ConfigError(f"key must be 'block0' or 'latent', found {self.key!r}")
        if self.block_size % 2 ** (len(self.channel_mult) - 1):
            raise ConfigError(
                f"block size {self.block_size} cannot be halved {len(self.channel_mult) - 1} times; shorten channel_mult."
            )

    @property
    def block_size(self) -> int:
        return self.latent_size // self.grid

    @property
    def num_blocks(self) -> int:
        return self.grid * self.grid


class BlockDenoiser(nn.Module):
    """Predicts the noise of one latent block from its noisy version and its neighbours' same-position blocks."""

    def __init__(self, config: BlockDenoiserConfig) -> None:
        super().__init__()
        self.config = cfg = config
        C, c, s = cfg.model_channels, cfg.latent_channels, cfg.block_size
        emb_dim = 4 * C
        self.time_embed = nn.Sequential(nn.Linear(C, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.position_embed = nn.Embedding(cfg.num_blocks, emb_dim) if cfg.position else None
        self.embed_x = nn.Conv2d(c, C, 3, padding=1)
        self.embed_neighbours = nn.Conv2d(cfg.k * c, C, 3, padding=1) if cfg.retrieval else None
        self.embed_previous = nn.Conv2d(c, C, 3, padding=1) if cfg.previous_block else None
        self.input_norm = nn.LayerNorm([C, s, s])

        self.down = nn.ModuleList()
        skips, ch = [C], C
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(ResBlock(ch, C * mult, emb_dim, cfg.dropout))
                ch = C * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                self.down.append(Downsample(ch))
                skips.append(ch)
        self.mid = nn.ModuleList([ResBlock(ch, ch, emb_dim, cfg.dropout)])
        if cfg.attention:
            self.mid.append(SelfAttention(ch, cfg.num_heads))
        self.mid.append(ResBlock(ch, ch, emb_dim, cfg.dropout))
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(ResBlock(ch + skips.pop(), C * mult, emb_dim, cfg.dropout))
                ch = C * mult
            if level > 0:
                self.up.append(Upsample(ch))
        self.out_norm = group_norm(ch)
        self.out_conv = nn.Conv2d(ch, c, 3, padding=1)
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        neighbours: torch.Tensor | None = None,
        position: torch.Tensor | None = None,
        previous: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, c, s, s) noisy blocks; t (B,); neighbours (B, k, c, s, s); position (B,) block index;
        previous (B, c, s, s) the previous block (+P). B = samples x blocks, folded."""
        cfg = self.config
        emb = self.time_embed(timestep_embedding(t, cfg.model_channels))
        if self.position_embed is not None:
            if position is None:
                raise ValueError("this model was built with position=True: pass the block index of every row")
            emb = emb + self.position_embed(position)
        h = self.embed_x(x)
        if self.embed_neighbours is not None:
            if neighbours is None:
                raise ValueError("this model was built with retrieval=True: pass neighbours (B, k, c, s, s)")
            h = h + self.embed_neighbours(neighbours.flatten(1, 2))
        if self.embed_previous is not None:
            if previous is None:
                raise ValueError("this model was built with previous_block=True: pass the previous block")
            h = h + self.embed_previous(previous)
        h = self.input_norm(h)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        for layer in self.mid:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out_conv(F.silu(self.out_norm(h)))
