"""The pipelines of the RDM paper's heads, RDM and RARM: a model conditioned on neighbour embeddings, its
embedding database and its VQ-GAN (rissole.heads.pipeline).

    pipe = load_pipeline("checkpoints/rdm-fmnist-vq", database=None)   # or database=OTHER: swap
    rows = pipe.pseudo_queries(64, top_m=0.01, seed=0)       # p_D (RDM paper, Eq. 5), top-m (Eq. 7)
    images, _ = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(seed=0, guidance=2.0, steps=100))

Unconditional sampling needs no search: pseudo-queries come from p_D of the database (uniform when
it has no training table) and their neighbours from its `database` table. Swapping the database
(RDM paper, Sec. 4.3) is opening another embedding database of the same embedding: its table, its
p_D and its vectors are used from then on.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch

from rissole.checkpoint import Checkpoint
from rissole.embeddings.base import EmbeddingSpec
from rissole.embeddings.store import KEY_MODE, EmbeddingDatabase, open_embedding_database
from rissole.heads.pipeline import Pipeline, SamplingOptions


class NeighbourHeadPipeline(Pipeline):
    """What RDM and RARM share: the embedding database (self.db is its block database)."""

    edb: EmbeddingDatabase

    @classmethod
    def open(cls, ckpt: Checkpoint, model: torch.nn.Module, database: str | os.PathLike, vqgan: torch.nn.Module,
             device: torch.device) -> "NeighbourHeadPipeline":
        edb = open_embedding_database(database)
        spec: EmbeddingSpec = model.config.embedding_spec()
        edb.check_spec(spec, f"the model {ckpt.path}")
        if spec.embedder == "vq":  # vectors of another VQ-GAN's latents live in another space
            edb.db.check_vqgan(ckpt.config["vqgan_hash"], f"the model {ckpt.path}")
        pipe = cls(ckpt, model, edb.db, vqgan, device)
        pipe.edb = edb
        return pipe

    @torch.no_grad()
    def query_neighbours(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """Embedded as the database was, searched exactly."""
        from rissole.embeddings import embedder_for_spec
        from rissole.retrieval.keys import KeySet
        from rissole.retrieval.searchers import make_searcher

        lat_shape = tuple(self.edb.source_latents().array.shape[1:])
        embedder = embedder_for_spec(self.edb.spec, lat_shape, vqgan=self.vqgan, device=str(self.device))
        queries = embedder.embed_images(images)
        return make_searcher("exact").build(KeySet(self.db, KEY_MODE)).search(queries, k or self.k)[0]

    def neighbour_embeddings(self, neighbour_ids: np.ndarray) -> torch.Tensor:
        """(n, k, d) float32: what the head's cross-attention reads, from this pipeline's database."""
        return torch.from_numpy(self.edb.embeddings(neighbour_ids))

    def row_latents(self, rows: np.ndarray) -> np.ndarray:
        """The rows' source latents (the embedding database keeps where they came from)."""
        return self.edb.latents(np.asarray(rows))


class RDMPipeline(NeighbourHeadPipeline):
    kind = "rdm"
    accepts = frozenset({"sampler", "steps", "eta", "k"})

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 x_T: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), unscaled latents (n, c, h, w)); x_T (n, c, h, w)."""
        from rissole.heads.rdm_sampling import sample_latents

        gen = torch.Generator().manual_seed(options.seed)
        lat = sample_latents(self.model, self.sampler(options), self.neighbour_embeddings(neighbour_ids), gen,
                             options.guidance, progress, x_T) / float(self.config["scale_factor"])
        return self.decode(lat), lat.cpu()


class RARMPipeline(NeighbourHeadPipeline):
    kind = "rarm"
    accepts = frozenset({"k", "top_k", "temperature"})

    def num_steps(self, options: SamplingOptions) -> int:
        return int(self.model.config.seq_len)

    def describe(self, options: SamplingOptions) -> str:
        return f"top-k {options.top_k or 'all'}, temperature {options.temperature}"

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor) -> np.ndarray:
        from rissole.data import from_model_range

        _, h, w = self.vqgan.config.latent_shape
        idx = codes.reshape(-1, h, w).to(self.device)
        return np.concatenate([from_model_range(self.vqgan.decode_code(idx[s : s + 256]).clamp(-1, 1))
                               for s in range(0, len(idx), 256)])

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray, options: SamplingOptions, n: int | None = None,
                 progress: Callable[[int], None] | None = None,
                 x_T: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), code indices (n, L)); RARM draws no initial noise (x_T unused)."""
        from rissole.heads.rarm_sampling import sample_codes

        gen = torch.Generator().manual_seed(options.seed)
        codes = sample_codes(self.model, self.neighbour_embeddings(neighbour_ids), gen, options.guidance,
                             options.top_k, options.temperature, cache=True, progress=progress)
        return self.decode_codes(codes), codes.cpu()
