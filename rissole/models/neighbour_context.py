"""The learned projection from k neighbour embeddings to the cross-attention context of RDM and RARM.

    (B, k, d) unit embeddings, d = tokens * token_dim
    -> x sqrt(d) (a unit vector's entries have RMS 1 / sqrt(d); rescaled to RMS 1 so the neighbour's content
       is not drowned by the projection's bias before the LayerNorm)
    -> (B, k, tokens, token_dim) -> Linear(token_dim, context_dim) + learned token-position embedding
    -> LayerNorm -> (B, k * tokens, context_dim)

The projection is per token, so the same weights serve any k at inference (k x tokens, not k
concatenated along channels). The all-zero conditioning of classifier-free guidance (RDM paper,
App. D.2) is all-zero *embeddings*, passed through this same projection.
"""

from __future__ import annotations

import torch
from torch import nn


class NeighbourContext(nn.Module):
    def __init__(self, tokens: int, token_dim: int, context_dim: int) -> None:
        super().__init__()
        self.tokens, self.token_dim = tokens, token_dim
        self.proj = nn.Linear(token_dim, context_dim)
        self.position = nn.Parameter(torch.zeros(tokens, context_dim)) if tokens > 1 else None
        if self.position is not None:
            nn.init.normal_(self.position, std=0.02)
        self.norm = nn.LayerNorm(context_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        b, k, d = embeddings.shape
        if d != self.tokens * self.token_dim:
            raise ValueError(f"neighbour embeddings have d = {d}; this model takes {self.tokens} x {self.token_dim} = "
                             f"{self.tokens * self.token_dim}")
        h = self.proj(embeddings.reshape(b, k, self.tokens, self.token_dim) * float(d) ** 0.5)
        if self.position is not None:
            h = h + self.position
        return self.norm(h).reshape(b, k * self.tokens, -1)
