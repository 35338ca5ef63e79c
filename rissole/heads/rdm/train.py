"""Training RDM (RDM paper): the latent-diffusion UNet with cross-attention to neighbour embeddings,
on the shared head trainer (rissole.heads.trainer).

Data: an embedding database (`rissole embed ... --db`) and its `train` neighbour table. The final
config records what sampling needs: the database, the latent scale factor and the VQ-GAN hash.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from rissole.checkpoint import Checkpoint
from rissole_runtime.diffusion.schedule import NoiseSchedule
from rissole.embeddings.store import EmbeddingDatabase, open_embedding_database
from rissole_runtime.errors import DataError
from rissole.heads.neighbour_data import NeighbourBatcher, latents_std
from rissole.heads.rdm.loss import RDMLoss
from rissole.heads.trainer import COMMON_DEFAULTS, HeadTrainer, train_head
from rissole.models.rdm_unet import RDMUNet
from rissole.retrieval.neighbours import open_table

KIND = "rdm"



def synthetic_loss(model: RDMUNet, images: int, generator: torch.Generator) -> torch.Tensor:
    """The training loss on a random batch (latents and k neighbour embeddings): the used-parameter count
    (rissole.heads.registry.Head.parameter_counts) and `rissole budget`'s activation memory."""
    cfg = model.config
    dev = next(model.parameters()).device
    x0 = torch.randn((images, cfg.latent_channels, cfg.latent_size, cfg.latent_size), generator=generator).to(dev)
    nb = torch.randn((images, cfg.vectors, cfg.context_tokens * cfg.context_token_dim), generator=generator).to(dev)
    source = torch.randn(x0.shape, generator=generator).to(dev) if cfg.edit else None
    return RDMLoss(NoiseSchedule(), 0.1)(model, x0, nb, generator, source)


class NeighbourHeadTrainer(HeadTrainer):
    """What RDM and RARM training share: training rows and their neighbours' embeddings from an
    embedding database and its table (data.db, data.table)."""

    def open_batcher(self) -> EmbeddingDatabase:
        dc, mc = self.config["data"], self.model.config
        edb = open_embedding_database(dc["db"])
        table = open_table(edb.db, dc.get("table", "train"))
        self.batcher = NeighbourBatcher(edb, table, mc.embedding_spec(), mc.k, "the config", mc.own_embedding)
        return edb

    def num_rows(self) -> int:
        return len(self.batcher)


class RDMTrainer(NeighbourHeadTrainer):
    kind = KIND
    defaults = COMMON_DEFAULTS

    def setup_data(self) -> None:
        config, mc = self.config, self.model.config
        edb = self.open_batcher()
        shape = tuple(self.batcher.latents_file.array.shape[1:])
        if shape != (mc.latent_channels, mc.latent_size, mc.latent_size):
            raise DataError(f"{self.batcher.latents_file.path}: latents {list(shape)}, the config expects "
                            f"[{mc.latent_channels}, {mc.latent_size}, {mc.latent_size}] (model.latent_channels, latent_size).")
        if config.get("vqgan_hash") is not None:
            edb.db.check_vqgan(config["vqgan_hash"], "the config")
        self.data_vqgan(edb.db.checkpoint_hash, f"the embedding database {edb.path}")
        config["vqgan_hash"] = edb.db.checkpoint_hash
        if "scale_factor" not in config:
            config["scale_factor"] = 1.0 / latents_std(self.batcher.latents_file.array, self.batcher.rows)
        self.scale = float(config["scale_factor"])
        self.schedule = NoiseSchedule.from_dict(config.get("diffusion", {}))
        config["diffusion"] = self.schedule.to_dict()
        self.loss_fn = RDMLoss(self.schedule, self.tc["cond_dropout"])
        self.pairs = None
        if mc.edit:
            from rissole.heads.rdm.edit_pairs import EditPairs

            self.pairs = EditPairs(self.batcher, config["data"])

    def on_resume(self, ckpt: Checkpoint) -> None:
        self.config["scale_factor"] = ckpt.config["scale_factor"]
        self.scale = float(ckpt.config["scale_factor"])

    def loss(self, ids: np.ndarray) -> torch.Tensor:
        if self.pairs is not None:  # kNN-Diffusion's manipulation pairs: restore the original from the edited one
            x0, source, emb = self.pairs.batch(ids, self.gen)
            scale = np.float32(self.scale)
            return self.loss_fn(self.model, torch.from_numpy(x0 * scale).to(self.device), emb.to(self.device), self.gen,
                                torch.from_numpy(source * scale).to(self.device))
        x0 = torch.from_numpy(self.batcher.latents(ids) * np.float32(self.scale)).to(self.device)
        return self.loss_fn(self.model, x0, self.batcher.neighbours(ids).to(self.device), self.gen)


def train_rdm(config: dict[str, Any], run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None,
              progress: bool = True) -> RDMTrainer:
    """Train (or resume) an RDM run; `stop_after` ends this invocation early, with a checkpoint."""
    return train_head(RDMTrainer, config, run_dir, resume, stop_after, progress)  # type: ignore[return-value]
