"""RARM's decoding head (RDM paper, Sec. 3.2.2, App. F.2.2): a decoder-only transformer over the VQ code
indices of a latent in raster order, with a cross-attention block after every self-attention block
attending to the k neighbour embeddings (the same NeighbourContext projection as RDM).

    inputs  [start, c_1, ..., c_{L-1}]   (a start token, id = vocab_size, then the codes shifted by one)
    logits  p(c_i | c_<i, {phi(y)})      (B, L, vocab_size)

`step` decodes one position with a key-value cache (self-attention keys/values of earlier positions
are kept, the context's cross-attention keys/values computed once), so sampling costs O(L) block
calls instead of recomputing the whole prefix at every position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rissole_runtime.errors import ConfigError
from rissole.models.layers import CrossAttention, FeedForward
from rissole.models.neighbour_context import NeighbourContext
from rissole.models.rdm_unet import NeighbourConditioning


@dataclass
class RARMConfig(NeighbourConditioning):
    vocab_size: int = 1024
    seq_len: int = 64  # h * w code indices
    width: int = 128
    depth: int = 4
    num_heads: int = 4
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ConfigError(f"width {self.width} is not divisible by num_heads {self.num_heads}")
        self.check_k()


class DecoderBlock(nn.Module):
    """Causal self-attention, then cross-attention to the neighbours, then feed-forward (pre-LN, residual)."""

    def __init__(self, width: int, context_dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.self_attn = nn.LayerNorm(width), CrossAttention(width, None, num_heads)
        self.norm2, self.cross_attn = nn.LayerNorm(width), CrossAttention(width, context_dim, num_heads)
        self.norm3, self.ff = nn.LayerNorm(width), FeedForward(width, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        h = h + self.drop(self.self_attn(self.norm1(h), causal=True))
        h = h + self.drop(self.cross_attn(self.norm2(h), context))
        return h + self.drop(self.ff(self.norm3(h)))

    def step(self, h: torch.Tensor, cache: "KVCache", layer: int, pos: int) -> torch.Tensor:
        """h (B, 1, width) at position `pos`; appends its self-attention keys/values to the cache."""
        a = self.norm1(h)
        k, v = self.self_attn.keys_values(a)
        cache.self_k[layer][:, :, pos : pos + 1] = k
        cache.self_v[layer][:, :, pos : pos + 1] = v
        h = h + self.self_attn.attend(a, cache.self_k[layer][:, :, : pos + 1], cache.self_v[layer][:, :, : pos + 1])
        h = h + self.cross_attn.attend(self.norm2(h), cache.cross_k[layer], cache.cross_v[layer])
        return h + self.ff(self.norm3(h))


@dataclass
class KVCache:
    self_k: list[torch.Tensor]  # per layer (B, heads, L, width / heads), filled position by position
    self_v: list[torch.Tensor]
    cross_k: list[torch.Tensor]  # per layer (B, heads, k * tokens, width / heads), fixed for the whole sample
    cross_v: list[torch.Tensor]


class RARMTransformer(nn.Module):
    def __init__(self, config: RARMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.token_embed = nn.Embedding(cfg.vocab_size + 1, cfg.width)  # + the start token
        self.position_embed = nn.Parameter(torch.zeros(cfg.seq_len, cfg.width))
        nn.init.normal_(self.position_embed, std=0.02)
        self.context = NeighbourContext(cfg.context_tokens, cfg.context_token_dim, cfg.context_dim)
        self.blocks = nn.ModuleList([DecoderBlock(cfg.width, cfg.context_dim, cfg.num_heads, cfg.dropout)
                                     for _ in range(cfg.depth)])
        self.out_norm = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)
        self.drop = nn.Dropout(cfg.dropout)

    @property
    def start_token(self) -> int:
        return self.config.vocab_size

    def shift_right(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, L) codes -> the inputs [start, c_1, ..., c_{L-1}]."""
        start = torch.full_like(codes[:, :1], self.start_token)
        return torch.cat([start, codes[:, :-1]], dim=1)

    def forward(self, inputs: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """inputs (B, L') token ids starting with the start token, L' <= seq_len; neighbours (B, k, d) -> logits (B, L', V)."""
        n = inputs.shape[1]
        if n > self.config.seq_len:
            raise ValueError(f"sequence of {n} tokens, the model takes at most {self.config.seq_len}")
        context = self.context(neighbours)
        h = self.drop(self.token_embed(inputs) + self.position_embed[:n])
        for blk in self.blocks:
            h = blk(h, context)
        return self.head(self.out_norm(h))

    def new_cache(self, neighbours: torch.Tensor) -> KVCache:
        """An empty self-attention cache and the context's cross-attention keys/values, for B samples."""
        cfg = self.config
        b = neighbours.shape[0]
        context = self.context(neighbours)
        dh = cfg.width // cfg.num_heads
        empty = lambda: neighbours.new_zeros(b, cfg.num_heads, cfg.seq_len, dh)  # noqa: E731
        cross = [blk.cross_attn.keys_values(context) for blk in self.blocks]
        return KVCache([empty() for _ in self.blocks], [empty() for _ in self.blocks],
                       [k for k, _ in cross], [v for _, v in cross])

    def step(self, token: torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        """Logits (B, V) for position `pos` given the previous token (B,) (the start token at pos 0)."""
        h = self.token_embed(token)[:, None] + self.position_embed[pos]
        for i, blk in enumerate(self.blocks):
            h = blk.step(h, cache, i, pos)
        return self.head(self.out_norm(h))[:, 0]
