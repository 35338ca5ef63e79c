"""What the pipelines of the RDM paper's heads (RDM, RARM) share: a model conditioned on neighbour embeddings,
its embedding database and its VQ-GAN (rissole.heads.pipeline; the heads: rissole.heads.rdm.pipeline,
rissole.heads.rarm.pipeline).

    pipe = load_pipeline("checkpoints/rdm-fmnist-vq", database=None)   # or database=OTHER: swap
    rows = pipe.pseudo_queries(64, top_m=0.01, seed=0)       # p_D (RDM paper, Eq. 5), top-m (Eq. 7)
    images, _ = pipe.generate(pipe.neighbour_ids(rows), SamplingOptions(seed=0, guidance=2.0, steps=100))

Unconditional sampling needs no search: pseudo-queries come from p_D of the database (uniform when
it has no training table) and their neighbours from its `database` table. Swapping the database
(RDM paper, Sec. 4.3) is opening another embedding database of the same embedding: its table, its
p_D and its vectors are used from then on. In a text-image space (joint, clip:PATH) a text prompt or a
class name replaces the pseudo-queries (rissole.heads.text_conditioning):

    pipe.sample(16, SamplingOptions(prompt=("a red apple",), strategy="text+neighbours", guidance=2.0))
"""

from __future__ import annotations

import os
import numpy as np
import torch

from rissole.checkpoint import Checkpoint
from rissole.embeddings.base import Embedder, EmbeddingSpec
from rissole.embeddings.store import KEY_MODE, EmbeddingDatabase, open_embedding_database
from rissole.heads.pipeline import Conditioning, Pipeline, SamplingOptions
from rissole.retrieval.neighbours import open_table
from rissole_runtime.errors import ConfigError, DataError

TEXT_OPTIONS = frozenset({"prompt", "strategy", "class_name", "pool"})  # what both heads take in a text-image space


class NeighbourHeadPipeline(Pipeline):
    """What RDM and RARM share: the embedding database (self.db is its block database)."""

    edb: EmbeddingDatabase
    _embedder: Embedder | None = None  # built on first use (embedder())

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

    @property
    def own(self) -> bool:
        """kNN-Diffusion: the model also conditions on the sample's own embedding (model.own_embedding)."""
        return bool(getattr(self.model.config, "own_embedding", False))

    def strategy(self, options: SamplingOptions) -> str:
        """How a prompt conditions: the option, else the model's default (rissole_runtime.prompts)."""
        from rissole_runtime.prompts import default_strategy

        return options.strategy or default_strategy(self.own)

    def neighbour_ids(self, rows: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, k) neighbour ids of database rows from the `database` table; for kNN-Diffusion (n, 1 + k): the
        row itself, then its k nearest other rows."""
        if not self.own:
            return super().neighbour_ids(rows, k)
        from rissole_runtime.retrieval.search import own_neighbour_ids

        k = self.k if k is None else k
        rows = np.asarray(rows)
        table = open_table(self.db, "database")
        if k + 1 > table.k:
            raise DataError(f"{self.db.path}: {k} neighbours besides the row asked for, its database table holds "
                            f"{table.k}. Re-run `rissole db neighbours {self.db.path}` with -k {k + 1}.")
        return own_neighbour_ids(rows, table.ids[rows, : k + 1], k)

    @torch.no_grad()
    def query_neighbours(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """Embedded as the database was, searched exactly."""
        if self.own:
            raise ConfigError(f"{self.path}: --query with a kNN-Diffusion model (model.own_embedding) is not supported: "
                              "the query image is not a database row. Use --prompt, or pseudo-queries.")
        return self.search(self.embedder().embed_images(images), k or self.k)

    def embedder(self) -> Embedder:
        """The embedder that made the database's vectors (built once): what embeds a user's image or text."""
        if self._embedder is None:
            from rissole.embeddings import embedder_for_spec

            lat_shape = tuple(self.edb.source_latents().array.shape[1:])
            self._embedder = embedder_for_spec(self.edb.spec, lat_shape, vqgan=self.vqgan, device=str(self.device))
        return self._embedder

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """(q, k) database rows nearest to unit query vectors, by exact dot product over the database's unit
        vectors (rissole_runtime.retrieval.search: the same search as `rissole-run --prompt`)."""
        from rissole_runtime.retrieval.search import exact_search

        if k > len(self.edb):
            raise ConfigError(f"{k} neighbours asked for, the database {self.edb.path} holds {len(self.edb)} rows.")
        return exact_search(np.asarray(queries, dtype=np.float32), self.db.vector_chunks(), k)[0]

    def neighbour_embeddings(self, neighbour_ids: np.ndarray, context: np.ndarray | None = None) -> torch.Tensor:
        """(n, k, d) float32: what the head's cross-attention reads, from this pipeline's database (or the
        given `context` embeddings of a text prompt)."""
        if context is not None:
            return torch.from_numpy(np.ascontiguousarray(context, dtype=np.float32))
        return torch.from_numpy(self.edb.embeddings(neighbour_ids))

    def conditioning(self, n: int, options: SamplingOptions) -> Conditioning:
        """Pseudo-queries (the base's), or the prompt's / the class's neighbours and text embedding."""
        from rissole.heads.text_conditioning import class_conditioning, prompt_conditioning

        vectors = (self.k if options.k is None else options.k) + int(self.own)  # what the model conditions on
        if options.prompt is not None:
            return prompt_conditioning(self, list(options.prompt), n, self.strategy(options), vectors)
        if options.class_name is not None:
            return class_conditioning(self, options.class_name, n, vectors, options.pool, options.seed)
        return super().conditioning(n, options)

    def row_latents(self, rows: np.ndarray) -> np.ndarray:
        """The rows' source latents (the embedding database keeps where they came from)."""
        return self.edb.latents(np.asarray(rows))
