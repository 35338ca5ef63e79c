"""Training the RISSOLE block denoiser; its ablations are flags of the same config, and grid 1 with
retrieval off is the plain LDM baseline.

Run directory (the VQ-GAN trainer's layout):
    RUN/checkpoint/  latest weights, EMA, optimizer and RNG state: `--resume` continues bit for bit
    RUN/final/       config + model + EMA, what sampling loads
    RUN/log.csv      one row per step: step, loss, lr, grad_norm, seconds
Data order is a function of (seed, step) and every other random draw comes from a generator whose
state is checkpointed, so an interrupted and resumed run ends with the weights of an uninterrupted one.

The saved config records what sampling needs besides the weights: model (grid, k, key and the
ablation flags), diffusion (the schedule), data.scale_factor, data.db (absolute path) with its
sha256 and data.checkpoint_hash, the VQ-GAN whose latents the database holds.
"""

from __future__ import annotations

import collections
import copy
import math
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from rissole.checkpoint import Checkpoint, flatten_optimizer, load_checkpoint, restore_optimizer, save_checkpoint
from rissole.config import require
from rissole.device import autocast, autocast_dtype, make_grad_scaler, pick_device
from rissole.diffusion.schedule import NoiseSchedule
from rissole.ema import EMA
from rissole.errors import CheckpointError, ConfigError, DataError
from rissole.heads.block_data import BlockBatcher, open_batcher
from rissole.heads.block_diffusion import BlockDiffusionLoss
from rissole.models.block_unet import BlockDenoiser, BlockDenoiserConfig
from rissole.models.params import format_counts, used_parameters
from rissole.training import (
    append_csv,
    batch_indices,
    check_fresh_run,
    learning_rate,
    restore_rng,
    rng_tensors,
    set_learning_rate,
    truncate_csv,
    with_defaults,
)

KIND = "rissole"
TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 10000,
    "batch_size": 64,  # images; the network sees batch_size * b block samples per step
    "lr": 2.0e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,  # AdamW's decoupled weight decay
    "lr_schedule": "cosine",  # constant | cosine (to 0 at the last step), after a linear warm-up
    "warmup_steps": 200,
    "grad_clip": 1.0,  # max global gradient norm; null = no clipping
    "seed": 0,
    "ema_decay": 0.999,  # null = no EMA
    "cond_dropout": 0.1,  # probability a block sample trains with all-zero neighbours (for guidance)
    "max_params": None,  # refuse a model whose forward uses more parameters than this
    "ckpt_every": 1000,
    "device": "auto",
}
DATA_DEFAULTS: dict[str, Any] = {
    "db": None,  # block database (rissole db build); its rows are the training set when the table's are
    "table": "train",  # neighbour table in <db>/neighbours (rissole db neighbours)
    "latents": None,  # training latents, when the table's queries are not the database rows
    "vqgan": None,  # optional VQ-GAN checkpoint: checked against the database, recorded for sampling
    "scale_factor": None,  # null = 1 / std of the training latents, computed at the start
    "db_sha256": None,  # written by the trainer; a config that carries them is tied to that data
    "checkpoint_hash": None,
}
Log = Callable[[str], None]


def schedule_from(config: dict[str, Any]) -> NoiseSchedule:
    return NoiseSchedule.from_dict(with_defaults(config.get("diffusion"), NoiseSchedule().to_dict(), "diffusion"))


def dummy_inputs(cfg: BlockDenoiserConfig, n: int = 2) -> dict[str, torch.Tensor | None]:
    """Zero inputs of the right shapes: enough to see which modules the forward pass uses."""
    c, s = cfg.latent_channels, cfg.block_size
    return {
        "x": torch.zeros(n, c, s, s),
        "t": torch.zeros(n, dtype=torch.int64),
        "neighbours": torch.zeros(n, cfg.k, c, s, s) if cfg.retrieval else None,
        "position": torch.zeros(n, dtype=torch.int64) if cfg.position else None,
        "previous": torch.zeros(n, c, s, s) if cfg.previous_block else None,
    }


def count_parameters(model: BlockDenoiser) -> dict[str, int]:
    """Parameters used by the forward pass, per component (dead modules excluded)."""
    dev = next(model.parameters()).device
    inputs = {k: None if v is None else v.to(dev) for k, v in dummy_inputs(model.config).items()}
    was_training = model.training
    model.eval()
    try:
        return used_parameters(model, lambda: model(**inputs))
    finally:
        model.train(was_training)


def check_budget(counts: dict[str, int], max_params: int | None) -> None:
    if max_params is not None and counts["total"] > max_params:
        raise ConfigError(
            f"the model uses {counts['total']:,} parameters, above the budget train.max_params = {max_params:,}:\n"
            f"{format_counts(counts)}\n"
            "Fix: lower model.model_channels, shorten model.channel_mult or model.num_res_blocks, "
            "or raise train.max_params."
        )


def _vqgan_hash(path: str | None) -> str | None:
    return None if not path else load_checkpoint(path, expect_kind="vqgan").weights_hash()


def _agree(name: str, a: str | None, b: str | None, a_from: str, b_from: str) -> str | None:
    """The one value two sources give for `name` (either may be unset); refuse if they differ."""
    if a is not None and b is not None and a != b:
        raise DataError(f"{name}: {a_from} says {str(a)[:12]}, {b_from} says {str(b)[:12]}. "
                        "They must describe the same VQ-GAN / database; fix the config or use the matching files.")
    return a if a is not None else b


class RissoleTrainer:
    """Owns the model, optimizer, EMA, data and RNG state of one run."""

    def __init__(self, config: dict[str, Any], run_dir: str | os.PathLike, resume: bool = False,
                 log: Log = print) -> None:
        config = copy.deepcopy(config)
        if config.get("kind", KIND) != KIND:
            raise ConfigError(f"expected a config of kind {KIND!r}, found {config.get('kind')!r}.")
        require(config, "config", ["model", "data"])
        self.run_dir = Path(run_dir)
        self.tc = tc = with_defaults(config.get("train"), TRAIN_DEFAULTS, "train")
        data = with_defaults(config.get("data"), DATA_DEFAULTS, "data")
        self.model_config = cfg = BlockDenoiserConfig.from_dict(config["model"])
        self.schedule = schedule_from(config)
        learning_rate(tc["lr"], 0, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])  # validates the name
        ckpt = None
        if resume:
            ckpt = load_checkpoint(self.run_dir / "checkpoint", expect_kind=KIND, with_trainer=True)
            self._check_same_run(ckpt)
            saved = ckpt.config.get("data", {})
            if data["scale_factor"] is not None and data["scale_factor"] != saved.get("scale_factor"):
                raise CheckpointError(f"{ckpt.path}: trained with data.scale_factor {saved.get('scale_factor')}, "
                                      f"the config sets {data['scale_factor']}; leave it null to resume.")
            data["scale_factor"] = saved.get("scale_factor")
            data["checkpoint_hash"] = _agree("VQ-GAN", data["checkpoint_hash"], saved.get("checkpoint_hash"),
                                             "the config", f"the checkpoint {ckpt.path}")
            data["db_sha256"] = data["db_sha256"] or saved.get("db_sha256")

        self.device = pick_device(tc["device"])
        self.amp = autocast_dtype(self.device)
        torch.manual_seed(tc["seed"])
        self.model = BlockDenoiser(cfg).to(self.device)
        self.param_counts = count_parameters(self.model)
        log(f"parameters used by the forward pass:\n{format_counts(self.param_counts)}")
        check_budget(self.param_counts, tc["max_params"])

        vq = _agree("VQ-GAN", data["checkpoint_hash"], _vqgan_hash(data["vqgan"]), "the config", f"data.vqgan {data['vqgan']}")
        self.batcher: BlockBatcher
        self.batcher, facts = open_batcher(cfg, data, data["scale_factor"], vq)
        if data["db_sha256"] and facts["db_sha256"] != data["db_sha256"]:
            raise DataError(
                f"{facts['db']}: database sha256 {str(facts['db_sha256'])[:12]}, but this run was trained on "
                f"{data['db_sha256'][:12]}. Fix: point data.db at the run's database, or start a new run."
            )
        data.update(facts, vqgan=str(Path(data["vqgan"]).resolve()) if data["vqgan"] else None)
        log(f"training rows: {len(self.batcher):,}; latent scale factor {data['scale_factor']:.6g}")
        self.config = {"model": cfg.to_dict(), "diffusion": self.schedule.to_dict(), "data": data, "train": tc}

        self.loss = BlockDiffusionLoss(self.schedule, tc["cond_dropout"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]),
                                     weight_decay=tc["weight_decay"])
        self.scaler = make_grad_scaler(self.device, self.amp)
        self.ema = EMA(self.model, tc["ema_decay"]) if tc["ema_decay"] else None
        self.gen = torch.Generator().manual_seed(tc["seed"] + 1)
        self.step = 0
        if ckpt is not None:
            self._restore(ckpt)

    # ---------------------------------------------------------------- state
    def _check_same_run(self, ckpt: Checkpoint) -> None:
        saved_model = BlockDenoiserConfig.from_dict(ckpt.config["model"]).to_dict()
        if saved_model != self.model_config.to_dict():
            diff = sorted(k for k, v in saved_model.items() if self.model_config.to_dict()[k] != v)
            raise CheckpointError(f"{ckpt.path}: model config differs from the given one in {diff}; resume with the run's config.")
        if schedule_from(ckpt.config) != self.schedule:
            raise CheckpointError(f"{ckpt.path}: diffusion schedule differs from the given one; resume with the run's config.")

    def _restore(self, ckpt: Checkpoint) -> None:
        ckpt.load_into(self.model, "model")
        if self.ema is not None:
            if "ema" not in ckpt.weights:
                raise CheckpointError(f"{ckpt.path}: no EMA weights, but train.ema_decay is set; resume with the run's config.")
            self.ema.load_state_dict(ckpt.weights["ema"])
        t, m = ckpt.trainer_tensors, ckpt.trainer_meta
        restore_optimizer(self.opt, "opt", t, m["opt"])
        restore_rng(t, self.gen)
        self.scaler.load_state_dict(m["scaler"])
        self.step = ckpt.step

    def _weights(self) -> dict[str, dict[str, torch.Tensor]]:
        w = {"model": self.model.state_dict()}
        if self.ema is not None:
            w["ema"] = self.ema.state_dict()
        return w

    def save(self) -> Path:
        tensors, meta = flatten_optimizer(self.opt, "opt")
        tensors.update(rng_tensors(self.gen))
        meta = {"opt": meta, "scaler": self.scaler.state_dict()}
        return save_checkpoint(self.run_dir / "checkpoint", KIND, self.step, self.config, self._weights(), tensors, meta)

    def save_final(self) -> Path:
        return save_checkpoint(self.run_dir / "final", KIND, self.step, self.config, self._weights())

    # ---------------------------------------------------------------- training
    def train_step(self, rows: Any) -> dict[str, float]:
        tc = self.tc
        self.model.train()
        batch = self.batcher(rows).to(self.device)
        draw = self.loss.draw(batch, self.gen)
        lr = learning_rate(tc["lr"], self.step, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])
        set_learning_rate([self.opt], lr)
        with autocast(self.device, self.amp):
            loss = self.loss(self.model, batch, draw)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        clip = tc["grad_clip"] if tc["grad_clip"] else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr, "grad_norm": float(grad_norm)}


def train_rissole(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
    log: Log = print,
) -> RissoleTrainer:
    """Train (or resume) a run; `stop_after` ends this invocation after that many steps, checkpointed."""
    run_dir = Path(run_dir)
    if not resume:
        check_fresh_run(run_dir)
    trainer = RissoleTrainer(config, run_dir, resume, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        truncate_csv(run_dir / "log.csv", trainer.step)
    tc = trainer.tc
    end = tc["steps"] if stop_after is None else min(tc["steps"], trainer.step + stop_after)
    recent: collections.deque[float] = collections.deque(maxlen=100)
    bar = tqdm(total=tc["steps"], initial=trainer.step, desc="rissole", unit="step", disable=not progress, mininterval=1.0)
    while trainer.step < end:
        rows = batch_indices(tc["seed"], trainer.step, tc["batch_size"], len(trainer.batcher))
        t0 = time.perf_counter()
        logs = trainer.train_step(rows)
        if not math.isfinite(logs["loss"]):
            raise RuntimeError(f"loss became {logs['loss']} at step {trainer.step}; lower train.lr or set train.grad_clip.")
        seconds = time.perf_counter() - t0
        append_csv(run_dir / "log.csv", {"step": trainer.step, **{k: f"{v:.6g}" for k, v in logs.items()},
                                         "seconds": f"{seconds:.4f}"})
        recent.append(logs["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", refresh=False)
        if trainer.step % tc["ckpt_every"] == 0 or trainer.step == end:
            trainer.save()
    bar.close()
    if trainer.step == tc["steps"]:
        trainer.save_final()
    return trainer
