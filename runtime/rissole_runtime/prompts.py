"""A text prompt as a neighbour-conditioned model's conditioning (numpy only): one definition for
`rissole sample --prompt` (rissole.heads.text_conditioning) and `rissole-run --prompt`.

The RDM paper (Sec. 4.2, Fig. 2) conditions a model trained on images only in one of three ways:

    text             (i)   the prompt's text embedding alone, as one conditioning vector
    text+neighbours  (ii)  the text embedding and its m - 1 nearest image embeddings in the database
    neighbours       (iii) only the m nearest image embeddings of the text

where m is the number of vectors the model conditions on. For kNN-Diffusion (Sheynin et al., Sec. 3:
the model was trained on an image's own embedding plus its k neighbours, m = 1 + k) text+neighbours is
the paper's inference condition: the text embedding and its k nearest images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from rissole_runtime.errors import ConfigError

STRATEGIES = ("neighbours", "text+neighbours", "text")
TEXT_ID = -1  # the id of the text embedding among a sample's conditioning ids (it is no database row)


def default_strategy(own_embedding: bool) -> str:
    """kNN-Diffusion models: the paper's text+neighbours; RDM: neighbours, which measured best (README)."""
    return "text+neighbours" if own_embedding else "neighbours"


def prompt_condition(text: np.ndarray, search: Callable[[np.ndarray, int], np.ndarray],
                     vectors: Callable[[np.ndarray], np.ndarray], strategy: str, m: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (n, m') int64 with TEXT_ID for the text, conditioning (n, m', d) float32) of n unit text
    embeddings (n, d); `search(queries, j)` gives the j nearest database rows, `vectors(ids)` their embeddings."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"--strategy must be one of {', '.join(STRATEGIES)}, found {strategy!r}")
    text = np.asarray(text, dtype=np.float32)
    n = len(text)
    if strategy == "text":
        return np.full((n, 1), TEXT_ID, dtype=np.int64), text[:, None]
    j = m if strategy == "neighbours" else m - 1
    if j < 1:
        raise ConfigError(f"--strategy {strategy} with {m} conditioning vector(s): no image neighbours left beside the "
                          "text; condition on k >= 2 vectors (-k), or use --strategy text.")
    ids = np.asarray(search(text, j), dtype=np.int64)
    nbrs = np.asarray(vectors(ids), dtype=np.float32)
    if strategy == "neighbours":
        return ids, nbrs
    return (np.concatenate([np.full((n, 1), TEXT_ID, dtype=np.int64), ids], axis=1),
            np.concatenate([text[:, None], nbrs], axis=1))
