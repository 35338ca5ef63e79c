"""Training RARM (RDM paper, Sec. 3.2.2): the code-index transformer with cross-attention to neighbour
embeddings, on the shared head trainer (rissole.heads.trainer).

Data: an embedding database and its `train` table, as for RDM; the training latents are turned into
code indices once at start (rissole.heads.rarm.codes) with the VQ-GAN named in data.vqgan, whose
hash must be the one the latents were encoded with.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from rissole import distributed
from rissole_runtime.errors import DataError
from rissole.heads.rarm.codes import code_indices, vqgan_codebook
from rissole.heads.rdm.train import NeighbourHeadTrainer
from rissole.heads.trainer import COMMON_DEFAULTS, train_head
from rissole.models.rarm_transformer import RARMTransformer

KIND = "rarm"



def synthetic_loss(model: RARMTransformer, images: int, generator: torch.Generator) -> torch.Tensor:
    """The training loss on random code sequences and neighbour embeddings (parameter counts, `rissole budget`)."""
    cfg = model.config
    dev = next(model.parameters()).device
    codes = torch.randint(0, cfg.vocab_size, (images, cfg.seq_len), generator=generator).to(dev)
    nb = torch.randn((images, cfg.vectors, cfg.context_tokens * cfg.context_token_dim), generator=generator).to(dev)
    logits = model(model.shift_right(codes), nb)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


class RARMTrainer(NeighbourHeadTrainer):
    kind = KIND
    defaults = COMMON_DEFAULTS

    def setup_data(self) -> None:
        config, mc = self.config, self.model.config
        edb = self.open_batcher()
        vq_path = self.data_vqgan(edb.db.checkpoint_hash, f"the embedding database {edb.path}")
        config["vqgan_hash"] = edb.db.checkpoint_hash
        lat = self.batcher.latents_file.array
        if mc.seq_len != lat.shape[2] * lat.shape[3]:
            raise DataError(f"{self.batcher.latents_file.path}: latents of {lat.shape[2]} x {lat.shape[3]} = "
                            f"{lat.shape[2] * lat.shape[3]} codes, the config says model.seq_len = {mc.seq_len}.")
        codebook = vqgan_codebook(vq_path)
        if codebook.shape[0] != mc.vocab_size:
            raise DataError(f"{vq_path}: {codebook.shape[0]} codes, the config says model.vocab_size = {mc.vocab_size}.")
        self.codes = torch.from_numpy(code_indices(self.batcher.all_latents(), codebook))

    def loss(self, ids: np.ndarray) -> torch.Tensor:
        codes = self.codes[torch.from_numpy(np.asarray(ids))].to(self.device)
        nb = self.batcher.neighbours(ids).to(self.device)
        drop = (distributed.rand(len(ids), self.gen) < self.tc["cond_dropout"]).to(self.device)
        logits = self.model(self.model.shift_right(codes), nb.masked_fill(drop.view(-1, 1, 1), 0.0))
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))


def train_rarm(config: dict[str, Any], run_dir: str | os.PathLike, resume: bool = False, stop_after: int | None = None,
               progress: bool = True) -> RARMTrainer:
    """Train (or resume) a RARM run; `stop_after` ends this invocation early, with a checkpoint."""
    return train_head(RARMTrainer, config, run_dir, resume, stop_after, progress)  # type: ignore[return-value]
