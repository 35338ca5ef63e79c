"""A trained RDM or RARM, its embedding database and its VQ-GAN, ready to generate images.

    pipe = NeighbourHeadPipeline.load("runs/rdm-fmnist/final", database=None)   # or database=OTHER: swap
    rows = pipe.pseudo_queries(64, top_m=0.01, seed=0)       # p_D (RDM paper, Eq. 5), top-m (Eq. 7)
    images, _ = pipe.generate(pipe.table_neighbours(rows), seed=0, guidance=2.0, steps=100)

Unconditional sampling needs no search: pseudo-queries come from p_D of the database (uniform when
it has no training table) and their neighbours from its `database` table. Swapping the database
(RDM paper, Sec. 4.3) is opening another embedding database of the same embedding: its table, its
p_D and its vectors are used from then on.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from rissole.checkpoint import load_checkpoint
from rissole_runtime.diffusion.schedule import DDIMSampler, DDPMSampler, NoiseSchedule
from rissole.embeddings.base import EmbeddingSpec
from rissole.embeddings.store import KEY_MODE, EmbeddingDatabase, open_embedding_database
from rissole_runtime.errors import CheckpointError, DataError
from rissole.heads.rdm_data import resolve_path
from rissole.paths import REPO_ROOT, SHIPPED_VQGAN
from rissole.retrieval.neighbours import list_tables, open_table
from rissole_runtime.retrieval.proposal import PseudoQuerySampler, proposal_from_table

KINDS = ("rdm", "rarm")


def build_head(kind: str, model_cfg: dict[str, Any]) -> torch.nn.Module:
    if kind == "rdm":
        from rissole.heads.rdm_train import build_model
    elif kind == "rarm":
        from rissole.heads.rarm_train import build_model
    else:
        raise CheckpointError(f"expected an rdm or rarm checkpoint, found kind {kind!r}")
    return build_model(model_cfg)


@dataclass
class NeighbourHeadPipeline:
    kind: str
    model: torch.nn.Module
    config: dict[str, Any]
    edb: EmbeddingDatabase
    vqgan: torch.nn.Module
    device: torch.device

    @classmethod
    def load(cls, ckpt: str | os.PathLike, database: str | os.PathLike | None = None,
             vqgan: str | os.PathLike | None = None, device: str = "auto") -> "NeighbourHeadPipeline":
        from rissole.autoencoder import load_vqgan
        from rissole.device import pick_device

        dev = pick_device(device)
        c = load_checkpoint(ckpt)
        model = build_head(c.kind, c.config["model"])
        c.load_into(model, c.inference_weights_name())
        edb = open_embedding_database(database or resolve_path(c.config["data"]["db"], REPO_ROOT))
        spec: EmbeddingSpec = model.config.embedding_spec()
        edb.check_spec(spec, f"the model {ckpt}")
        if spec.embedder == "vq":  # vectors of another VQ-GAN's latents live in another space
            edb.db.check_vqgan(c.config["vqgan_hash"], f"the model {ckpt}")
        vq_path = vqgan or resolve_path(c.config["data"].get("vqgan") or str(SHIPPED_VQGAN), REPO_ROOT)
        vq_hash = load_checkpoint(vq_path).weights_hash()
        if vq_hash != c.config["vqgan_hash"]:
            raise CheckpointError(f"{vq_path}: VQ-GAN {vq_hash[:12]}, but the model {ckpt} was trained on latents of "
                                  f"VQ-GAN {c.config['vqgan_hash'][:12]}. Pass that VQ-GAN with --vqgan.")
        return cls(c.kind, model.to(dev).eval(), c.config, edb, load_vqgan(vq_path, dev), dev)

    @property
    def k(self) -> int:
        return int(self.model.config.k)

    def pseudo_queries(self, n: int, top_m: float = 1.0, seed: int = 0) -> np.ndarray:
        """n database rows drawn from p_D truncated to its top-m fraction (uniform without a train table)."""
        p = None
        if "train" in list_tables(self.edb.db):
            p = proposal_from_table(open_table(self.edb.db, "train").ids, len(self.edb))
        return PseudoQuerySampler(p, len(self.edb), m=top_m, seed=seed).sample(n)

    def table_neighbours(self, rows: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, k) neighbour ids of database rows, read from the database's `database` table."""
        k = k or self.k
        table = open_table(self.edb.db, "database")
        if k > table.k:
            raise DataError(f"{self.edb.path}: {k} neighbours asked for, its database table holds {table.k}. "
                            f"Re-run `rissole db neighbours {self.edb.path} --keys {KEY_MODE} -k {k}`.")
        return np.asarray(table.ids[np.asarray(rows), :k])

    @torch.no_grad()
    def query_neighbours(self, images: np.ndarray, k: int | None = None) -> np.ndarray:
        """(n, k) neighbour ids of the user's own images (uint8): embedded as the database was, searched exactly."""
        from rissole.embeddings import embedder_for_spec
        from rissole.retrieval.keys import KeySet
        from rissole.retrieval.searchers import make_searcher

        lat_shape = tuple(self.edb.source_latents().array.shape[1:])
        embedder = embedder_for_spec(self.edb.spec, lat_shape, vqgan=self.vqgan, device=str(self.device))
        queries = embedder.embed_images(images)
        return make_searcher("exact").build(KeySet(self.edb.db, KEY_MODE)).search(queries, k or self.k)[0]

    def neighbour_embeddings(self, neighbour_ids: np.ndarray) -> torch.Tensor:
        """(n, k, d) float32: what the head's cross-attention reads, from this pipeline's database."""
        return torch.from_numpy(self.edb.embeddings(neighbour_ids))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        from rissole.data import from_model_range

        return np.concatenate([from_model_range(self.vqgan.decode(latents[s : s + 256].to(self.device)).clamp(-1, 1))
                               for s in range(0, len(latents), 256)])

    @torch.no_grad()
    def decode_codes(self, codes: torch.Tensor, h: int, w: int) -> np.ndarray:
        from rissole.data import from_model_range

        idx = codes.reshape(-1, h, w).to(self.device)
        return np.concatenate([from_model_range(self.vqgan.decode_code(idx[s : s + 256]).clamp(-1, 1))
                               for s in range(0, len(idx), 256)])

    def rows_as_images(self, rows: np.ndarray) -> np.ndarray:
        """Database rows decoded back to images from their source latents: the retrieved neighbours as seen."""
        rows = np.asarray(rows)
        images = self.decode(torch.from_numpy(self.edb.latents(rows.ravel())))
        return images.reshape(*rows.shape, *images.shape[1:])

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray, seed: int = 0, guidance: float = 1.0, sampler: str = "ddim",
                 steps: int = 100, eta: float = 0.0, top_k: int = 0, temperature: float = 1.0,
                 progress: Callable[[int], None] | None = None,
                 x_T: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), RDM: unscaled latents (n, c, h, w) | RARM: code indices (n, L)).
        RDM only: `x_T` (n, c, h, w) fixes the initial noise (parity with the edge runtime)."""
        nb = self.neighbour_embeddings(neighbour_ids)
        gen = torch.Generator().manual_seed(seed)
        if self.kind == "rdm":
            from rissole.heads.rdm_sampling import sample_latents

            sched = NoiseSchedule.from_dict(self.config["diffusion"])
            smp = DDPMSampler(sched) if sampler == "ddpm" else DDIMSampler(sched, steps, eta)
            lat = sample_latents(self.model, smp, nb, gen, guidance, progress, x_T) / float(self.config["scale_factor"])
            return self.decode(lat), lat.cpu()
        from rissole.heads.rarm_sampling import sample_codes

        codes = sample_codes(self.model, nb, gen, guidance, top_k, temperature, cache=True, progress=progress)
        _, h, w = self.vqgan.config.latent_shape
        return self.decode_codes(codes, h, w), codes.cpu()

    def sample(self, n: int, top_m: float = 1.0, seed: int = 0, guidance: float = 1.0, sampler: str = "ddim",
               steps: int = 50, batch: int = 250, top_k: int = 0, temperature: float = 1.0,
               progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, float]:
        """n uint8 images from n pseudo-queries (p_D, top-m, seeded), `batch` at a time, and the seconds spent
        in `generate`. Batch b starting at image s uses noise seed `seed * 100_003 + s`, as the paper table's
        eval does (benchmarks/paper_table.py), so top_m=1, guidance=1 reproduces its samples."""
        rows = self.pseudo_queries(n, top_m, seed)
        out, seconds = [], 0.0
        for s in range(0, n, batch):
            ids = self.table_neighbours(rows[s : s + batch])
            t0 = time.perf_counter()
            images, _ = self.generate(ids, seed=seed * 100_003 + s, guidance=guidance, sampler=sampler, steps=steps,
                                      top_k=top_k, temperature=temperature, progress=progress)
            seconds += time.perf_counter() - t0
            out.append(images)
        return np.concatenate(out), seconds

    def num_steps(self, sampler: str = "ddim", steps: int = 100, eta: float = 0.0) -> int:
        """Network calls of one `generate` (for a progress bar)."""
        if self.kind == "rarm":
            return int(self.model.config.seq_len)
        sched = NoiseSchedule.from_dict(self.config["diffusion"])
        return len(DDPMSampler(sched) if sampler == "ddpm" else DDIMSampler(sched, steps, eta))
