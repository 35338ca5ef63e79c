"""Text and class prompts for heads conditioned on neighbour embeddings in a joint text-image space.

The RDM paper trains on images only and conditions at inference on what a text embedding retrieves
(Sec. 4.2, Fig. 2), in one of three ways:

    text             (i)   the prompt's text embedding alone, as one conditioning token
    text+neighbours  (ii)  the text embedding and its k - 1 nearest image embeddings in the database
    neighbours       (iii) only the k nearest image embeddings of the text

and post-hoc class conditioning (Sec. 3.3): the text "An image of a t(c)" retrieves a pool of l >= k
neighbours, and every sample conditions on k of them drawn at random. Swapping the database for one of a
single style is zero-shot stylization (Rombach et al., "Text-Guided Synthesis of Artistic Images with
Retrieval-Augmented Diffusion Models"). Only an embedding space with a text tower allows any of this
(the `joint` and `clip:PATH` embedders); the text is embedded by the embedder the database records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from rissole_runtime.errors import ConfigError, DataError
from rissole_runtime.prompts import STRATEGIES, prompt_condition  # noqa: F401 - STRATEGIES re-exported

if TYPE_CHECKING:
    from rissole.heads.neighbour_pipeline import NeighbourHeadPipeline
    from rissole.heads.pipeline import Conditioning

CLASS_TEMPLATE = "An image of a {}"  # the RDM paper's class prompt, Sec. 3.3


def embed_prompts(pipe: "NeighbourHeadPipeline", texts: list[str]) -> np.ndarray:
    """(len(texts), d) text embeddings in the database's space; an embedding without a text tower is an error
    that names it."""
    spec = pipe.edb.spec
    if spec.embedder.partition(":")[0] not in ("joint", "clip"):
        raise ConfigError(f"{pipe.path}: the model conditions on {spec.describe()}, which have no text tower; "
                          "--prompt and --class need a model trained on joint or clip:PATH embeddings "
                          "(e.g. configs/rdm/stickers_joint.yaml).")
    v = np.asarray(pipe.embedder().embed_texts(list(texts)), dtype=np.float32)
    if v.shape != (len(texts), spec.dim):
        raise DataError(f"the text tower made {list(v.shape)} vectors, the database holds d = {spec.dim}.")
    return v


def prompt_conditioning(pipe: "NeighbourHeadPipeline", prompts: list[str], n: int, strategy: str,
                        k: int) -> Conditioning:
    """n samples' conditioning for prompts cycled over n, by one of the RDM paper's three strategies
    (rissole_runtime.prompts, shared with `rissole-run --prompt`); k is the number of vectors the model
    conditions on (for kNN-Diffusion 1 + its k)."""
    from rissole.heads.pipeline import Conditioning  # (torch: imported when a prompt is sampled, not with the CLI)

    texts = [prompts[i % len(prompts)] for i in range(n)]
    text = embed_prompts(pipe, list(prompts))[np.arange(n) % len(prompts)]  # (n, d)
    ids, vectors = prompt_condition(text, pipe.search, pipe.edb.embeddings, strategy, k)
    return Conditioning(ids, None, vectors, texts)


def class_conditioning(pipe: "NeighbourHeadPipeline", class_name: str, n: int, k: int, pool: int | None,
                       seed: int) -> Conditioning:
    """Post-hoc class conditioning (RDM paper, Sec. 3.3): "An image of a <class>" retrieves a pool of l
    neighbours (default 4k), each sample draws k of them without replacement (seeded)."""
    from rissole.heads.pipeline import Conditioning  # (torch: imported when a prompt is sampled, not with the CLI)

    pool = pool or 4 * k
    if pool < k:
        raise ConfigError(f"--pool {pool} is smaller than k = {k}; the pool must hold at least k neighbours.")
    text = CLASS_TEMPLATE.format(class_name)
    candidates = pipe.search(embed_prompts(pipe, [text]), pool)[0]  # (pool,)
    rng = np.random.default_rng(seed)
    ids = np.stack([candidates[rng.permutation(pool)[:k]] for _ in range(n)])
    return Conditioning(ids, None, pipe.edb.embeddings(ids), [text] * n)
