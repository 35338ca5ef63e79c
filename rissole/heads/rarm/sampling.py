"""RARM sampling: code indices one position at a time, raster order, with top-k and temperature, and
classifier-free guidance on the log-probabilities against all-zero neighbour embeddings (RDM paper,
App. D.2, Eq. 8): log p = log p(.|0) + s (log p(.|y) - log p(.|0)), the same `guide` as diffusion.

With `cache=True` (default) each position is one `step` over a key-value cache; `cache=False`
recomputes the whole prefix at every position (the reference the cache is tested against). Both draw
their random numbers identically, so for one seed they give the same tokens.
"""

from __future__ import annotations

from typing import Callable

import torch

from rissole_runtime.diffusion.guidance import doubled, guide, halves, with_zeros
from rissole_runtime.rarm_pick import pick_from_uniform
from rissole.models.rarm_transformer import RARMTransformer


def pick(logp: torch.Tensor, generator: torch.Generator, top_k: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """Draw one index per row of log-probabilities (n, V): temperature, then keep the top_k (0 = all).
    One uniform per row from `generator`; the draw itself is rarm_pick's, shared with the edge runtime."""
    u = torch.rand(logp.shape[0], generator=generator, dtype=torch.float64)
    idx = pick_from_uniform(logp.detach().float().cpu().numpy(), u.numpy(), top_k, temperature)
    return torch.from_numpy(idx).to(logp.device)


@torch.no_grad()
def sample_codes(model: RARMTransformer, neighbours: torch.Tensor, generator: torch.Generator, guidance: float = 1.0,
                 top_k: int = 0, temperature: float = 1.0, cache: bool = True,
                 progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """Code indices (n, L) conditioned on neighbour embeddings (n, k, d), any k."""
    dev = next(model.parameters()).device
    n, L = neighbours.shape[0], model.config.seq_len
    guided = guidance != 1.0
    nb = neighbours.to(dev)
    if guided:
        nb = with_zeros(nb)
    kv = model.new_cache(nb) if cache else None
    inputs = torch.full((nb.shape[0], 1), model.start_token, dtype=torch.long, device=dev)
    for pos in range(L):
        if kv is not None:
            logits = model.step(inputs[:, -1], pos, kv)
        else:
            logits = model(inputs, nb)[:, -1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        if guided:
            logp = guide(*halves(logp), guidance)
        token = pick(logp, generator, top_k, temperature)
        if guided:
            token = doubled(token)
        inputs = torch.cat([inputs, token[:, None]], dim=1)
        if progress is not None:
            progress(pos)
    return inputs[:n, 1:]
