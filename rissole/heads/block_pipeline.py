"""A trained RISSOLE model, its database and its VQ-GAN, ready to generate images.

    pipe = RissolePipeline.load("checkpoints/rissole-fmnist-g2")
    rows = pipe.pseudo_queries(64, top_m=1.0, seed=0)          # p_D (RDM Eq. 5), truncated (Eq. 7)
    images, latents = pipe.generate(pipe.table_neighbours(rows), DDIMSampler(pipe.schedule, 50), seed=0)

Unconditional sampling needs no search: pseudo-queries come from p_D and their neighbours
from the `database` table. A user's own image is a query: it is encoded, keyed and searched live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from rissole.checkpoint import load_checkpoint
from rissole_runtime.errors import CheckpointError
from rissole_runtime.diffusion.schedule import AffineSampler, NoiseSchedule
from rissole.heads.block_batches import check_pairing
from rissole.heads.block_sampling import sample_blocks
from rissole.retrieval.database import gather_neighbours
from rissole.heads.block_train import KIND, build_model
from rissole.paths import REPO_ROOT, SHIPPED_VQGAN
from rissole.retrieval import open_database
from rissole_runtime.retrieval.blocks import merge_blocks
from rissole.retrieval.database import BlockDatabase
from rissole.retrieval.neighbours import open_table
from rissole_runtime.retrieval.proposal import PseudoQuerySampler, proposal_from_table


def _resolve(path: str, base: Path) -> Path:
    """Config paths are relative to the working directory, else to the repository (shipped configs)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else base / p


@dataclass
class RissolePipeline:
    model: torch.nn.Module
    config: dict[str, Any]
    db: BlockDatabase
    vqgan: torch.nn.Module
    device: torch.device

    @classmethod
    def load(cls, ckpt: str | os.PathLike, db: str | os.PathLike | None = None, vqgan: str | os.PathLike | None = None,
             device: str = "auto") -> "RissolePipeline":
        from rissole.autoencoder import load_vqgan
        from rissole.device import pick_device

        dev = pick_device(device)
        c = load_checkpoint(ckpt, expect_kind=KIND)
        model = build_model(c.config["model"])
        c.load_into(model, c.inference_weights_name())
        database = open_database(db or _resolve(c.config["data"]["db"], REPO_ROOT))
        table = open_table(database, "database") if model.config.retrieval else None
        check_pairing(database, table, model.config, c.config["vqgan_hash"], ckpt)
        vq_path = vqgan or _resolve(c.config["data"].get("vqgan") or str(SHIPPED_VQGAN), REPO_ROOT)
        vq_hash = load_checkpoint(vq_path).weights_hash()
        if vq_hash != c.config["vqgan_hash"]:
            raise CheckpointError(f"{vq_path}: VQ-GAN {vq_hash[:12]}, but the model {ckpt} was trained on latents of "
                                  f"VQ-GAN {c.config['vqgan_hash'][:12]}. Pass that VQ-GAN with --vqgan.")
        return cls(model.to(dev).eval(), c.config, database, load_vqgan(vq_path, dev), dev)

    @property
    def schedule(self) -> NoiseSchedule:
        return NoiseSchedule.from_dict(self.config["diffusion"])

    @property
    def k(self) -> int:
        return self.model.config.k

    def pseudo_queries(self, n: int, top_m: float = 1.0, seed: int = 0) -> np.ndarray:
        """n database rows drawn from p_D truncated to its top-m fraction (uniform without a train table)."""
        try:
            p = proposal_from_table(open_table(self.db, "train").ids, self.db.rows)
        except Exception:  # noqa: BLE001 - a database without a training table: uniform proposal
            p = None
        return PseudoQuerySampler(p, self.db.rows, m=top_m, seed=seed).sample(n)

    def table_neighbours(self, rows: np.ndarray) -> np.ndarray:
        """(n, k) neighbour ids of database rows, read from the `database` table."""
        return np.asarray(open_table(self.db, "database").ids[np.asarray(rows), : self.k])

    @torch.no_grad()
    def query_neighbours(self, images: np.ndarray) -> np.ndarray:
        """(n, k) neighbour ids of the user's own images (uint8), by a live exact search."""
        from rissole.data import to_model_range
        from rissole.retrieval.keys import KeySet, latent_keys
        from rissole.retrieval.searchers import make_searcher

        z = self.vqgan.encode(to_model_range(images).to(self.device)).cpu().numpy()
        keys = KeySet(self.db, self.model.config.key)
        return make_searcher("exact").build(keys).search(latent_keys(z, self.db.grid, keys.mode), self.k)[0]

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        from rissole.data import from_model_range

        return np.concatenate([from_model_range(self.vqgan.decode(latents[s : s + 256].to(self.device)).clamp(-1, 1))
                               for s in range(0, len(latents), 256)])

    def rows_as_images(self, rows: np.ndarray) -> np.ndarray:
        """Database rows decoded back to images (their blocks stitched): the retrieved neighbours as a person sees them."""
        rows = np.asarray(rows)
        images = self.decode(torch.from_numpy(merge_blocks(self.db.blocks(rows.ravel()), self.db.grid)))
        return images.reshape(*rows.shape, *images.shape[1:])

    @torch.no_grad()
    def generate(self, neighbour_ids: np.ndarray | None, sampler: AffineSampler, n: int | None = None,
                 seed: int = 0, guidance: float = 1.0, order: str = "parallel",
                 progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, torch.Tensor]:
        """(uint8 images (n, C, H, W), unscaled latents (n, c, h, w))."""
        scale = float(self.config["scale_factor"])
        nb = None
        if self.model.config.retrieval:
            if neighbour_ids is None:
                raise ValueError("this model needs neighbours: pass table_neighbours(rows) or query_neighbours(images)")
            nb = torch.from_numpy(gather_neighbours(self.db, neighbour_ids, self.k) * np.float32(scale))
            n = len(neighbour_ids)
        if n is None:
            raise ValueError("n is needed for a model without retrieval")
        gen = torch.Generator().manual_seed(seed)
        lat = sample_blocks(self.model, sampler, nb, n, gen, guidance, order, progress) / scale
        return self.decode(lat), lat.cpu()
