"""The one training loop of the generator heads (RISSOLE, RDM, RARM): AdamW, EMA, gradient clipping,
mixed precision where the device makes it fast, atomic checkpoints, bit-exact --resume, CSV log, tqdm.

A head subclasses HeadTrainer and supplies its model, its data and its loss on a batch of row ids:

    class MyTrainer(HeadTrainer):
        kind = "rdm"; defaults = {...}
        def build_model(self) -> nn.Module: ...
        def count_parameters(self) -> dict[str, int]: ...
        def setup_data(self) -> None: ...          # after the model, before the optimizer
        def num_rows(self) -> int: ...
        def loss(self, ids: np.ndarray) -> torch.Tensor: ...

Run directory: RUN/checkpoint/ (weights, EMA, optimizer, RNG), RUN/final/ (what sampling loads),
RUN/log.csv (step, loss, lr, seconds).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from rissole import distributed
from rissole.checkpoint import Checkpoint
from rissole.config import require, require_data
from rissole.device import autocast, autocast_dtype, make_grad_scaler, pick_device
from rissole.ema import EMA
from rissole_runtime.errors import ConfigError, DataError
from rissole.models.params import format_counts
from rissole.training import (
    RunTrainer,
    batch_indices,
    check_fresh_run,
    learning_rate,
    set_learning_rate,
    with_defaults,
)

COMMON_DEFAULTS: dict[str, Any] = {
    "steps": 10000,
    "batch_size": 64,
    "lr": 2.0e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "warmup_steps": 200,
    "grad_clip": 1.0,
    "seed": 0,
    "ema_decay": 0.999,
    "cond_dropout": 0.1,  # share of samples trained with all-zero conditioning (what guidance contrasts with)
    "max_params": None,  # refuse a model whose used parameters exceed this
    "accumulate": 1,  # micro-batches per step (rissole.distributed): batch_size is the global batch
    "ckpt_every": 1000,
    "device": "auto",
}


class HeadTrainer(RunTrainer):
    """Owns the model, EMA, optimizer, RNG and data of one run."""

    kind: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = COMMON_DEFAULTS
    # data keys every config of this trainer must name (paths: strings); None: the trainer checks its own
    required_data: ClassVar[list[str] | None] = ["db"]

    def __init__(self, config: dict[str, Any], run_dir: str | os.PathLike) -> None:
        require(config, "config", ["model", "data"])
        if self.required_data is not None:
            require_data(config, self.required_data)
        self.config = config
        self.tc = tc = with_defaults(config.get("train"), self.defaults, "train")
        config["train"] = tc
        self.run_dir = Path(run_dir)
        self.world = distributed.init(tc["device"])
        self.parts = distributed.check_parts(tc["batch_size"], self.world, tc["accumulate"])
        self.device = pick_device(distributed.rank_device(tc["device"]))
        self.amp = autocast_dtype(self.device)  # None (fp32) on a CPU and on a GTX 1080 Ti
        self.scaler = make_grad_scaler(self.device, self.amp)
        torch.manual_seed(tc["seed"])
        self.model = self.build_model().to(self.device)
        self.counts = self.count_parameters()
        if tc["max_params"] is not None and self.counts["total"] > tc["max_params"]:
            raise ConfigError(
                f"the model uses {self.counts['total']:,} parameters, above train.max_params = {tc['max_params']:,}:\n"
                f"{format_counts(self.counts)}\nShrink the model section of the config, or raise the budget."
            )
        self.setup_data()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]),
                                     weight_decay=tc["weight_decay"])
        learning_rate(tc["lr"], 0, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])  # validates the name
        self.ema = EMA(self.model, tc["ema_decay"]) if tc["ema_decay"] else None
        self.gen = torch.Generator().manual_seed(tc["seed"] + 1)
        self.step = 0

    # --- what a head supplies ---
    def build_model(self) -> torch.nn.Module:
        """The registered head's model (rissole.heads.registry); a diffusion head's prediction is written into
        the config explicitly, so the checkpoint keeps sampling the same if the default changes again."""
        from rissole.heads.registry import head

        model = head(self.kind).build_model(self.config["model"])
        if hasattr(model.config, "prediction"):
            self.config["model"].setdefault("prediction", model.config.prediction)
        return model

    def count_parameters(self) -> dict[str, int]:
        from rissole.heads.registry import head

        return head(self.kind).parameter_counts(self.model)

    def setup_data(self) -> None:
        raise NotImplementedError

    def num_rows(self) -> int:
        raise NotImplementedError

    def loss(self, ids: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def data_vqgan(self, db_hash: str, what: str) -> str:
        """The path of the VQ-GAN the config's data.vqgan names (default: the shipped one, as sampling uses),
        refused before the first step when its weights are not the ones that encoded the database's latents
        (`what`): sampling and export would refuse the trained model only afterwards."""
        from rissole.checkpoint import load_checkpoint
        from rissole.heads.neighbour_data import resolve_path
        from rissole.paths import REPO_ROOT, SHIPPED_VQGAN

        vq_path = str(resolve_path(self.config["data"].get("vqgan") or str(SHIPPED_VQGAN), REPO_ROOT))
        vq_hash = load_checkpoint(vq_path).weights_hash()
        if vq_hash != db_hash:
            raise DataError(f"{vq_path}: data.vqgan is VQ-GAN {vq_hash[:12]}, but {what} holds latents of VQ-GAN "
                            f"{db_hash[:12]}. Set data.vqgan to the VQ-GAN that encoded them, or rebuild the database "
                            "from this VQ-GAN's latents.")
        return vq_path

    def on_resume(self, ckpt: Checkpoint) -> None:
        """Restore run state that lives in the config (e.g. a latent scale factor measured at the start)."""

    # --- the save / resume skeleton's hooks (rissole.training.RunTrainer) ---
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt}

    def restore_extra(self, ckpt: Checkpoint) -> None:
        self.on_resume(ckpt)

    def train_step(self) -> dict[str, float]:
        """One step on the global batch of self.step: this rank's parts of it (train.accumulate of them, each
        with the generator at the step's start, so the draws are the global batch's), the gradients averaged
        over every part of every rank (rissole.distributed)."""
        tc = self.tc
        self.model.train()
        lr = learning_rate(tc["lr"], self.step, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])
        set_learning_rate([self.opt], lr)
        ids = batch_indices(tc["seed"], self.step, tc["batch_size"], self.num_rows())
        self.opt.zero_grad(set_to_none=True)
        start, total = self.gen.get_state(), 0.0
        for m in range(tc["accumulate"]):
            p = m * self.world.size + self.world.rank
            self.gen.set_state(start)
            with distributed.batch_part(p, self.parts), autocast(self.device, self.amp):
                loss = self.loss(ids[p :: self.parts])
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        distributed.all_reduce_gradients(self.model.parameters(), self.parts)
        loss = distributed.mean_over_ranks(total / tc["accumulate"])
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": loss, "lr": lr}


def train_head(
    trainer_cls: type[HeadTrainer],
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> HeadTrainer:
    """Train (or resume) a run; `stop_after` ends this invocation early, with a checkpoint."""
    if not resume:
        check_fresh_run(Path(run_dir))  # before the trainer opens any data
    trainer = trainer_cls(config, run_dir)
    if progress and trainer.world.main:
        print(f"parameters used by the forward pass:\n{format_counts(trainer.counts)}")
    trainer.fit(resume, stop_after, progress)
    return trainer
