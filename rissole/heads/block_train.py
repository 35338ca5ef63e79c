"""Training the RISSOLE block denoiser (and, with grid 1 and retrieval off, the plain LDM baseline).

Run directory (same layout as the VQ-GAN's):
    RUN/checkpoint/  latest weights, EMA, optimizer and RNG state (bit-exact --resume)
    RUN/final/       config + model + EMA: what `rissole sample` loads
    RUN/log.csv      step, loss, lr, seconds
The final config records what sampling needs: the latent scale factor, the database it was
trained with (path, grid, key mode) and the VQ-GAN hash that ties them together.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from rissole.checkpoint import flatten_optimizer, load_checkpoint, restore_optimizer, save_checkpoint
from rissole.config import require
from rissole.diffusion.schedule import NoiseSchedule
from rissole.device import autocast, autocast_dtype, make_grad_scaler, pick_device
from rissole.ema import EMA
from rissole.errors import CheckpointError, ConfigError
from rissole.heads.block_batches import BlockBatcher, check_pairing, latent_std
from rissole.heads.block_loss import BlockDiffusionLoss
from rissole.models.block_unet import BlockDenoiser, BlockDenoiserConfig
from rissole.models.params import format_counts, used_parameters
from rissole.retrieval import open_database
from rissole.retrieval.neighbours import open_table
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
    "batch_size": 64,  # images; the network sees batch_size * b blocks
    "lr": 2.0e-4,
    "betas": [0.9, 0.999],
    "weight_decay": 0.0,
    "lr_schedule": "cosine",
    "warmup_steps": 200,
    "grad_clip": 1.0,
    "seed": 0,
    "ema_decay": 0.999,
    "cond_dropout": 0.1,
    "max_params": None,  # refuse a model whose used parameters exceed this
    "ckpt_every": 1000,
    "device": "auto",
}


def build_model(model_cfg: dict[str, Any]) -> BlockDenoiser:
    return BlockDenoiser(BlockDenoiserConfig.from_dict(model_cfg))


def parameter_counts(model: BlockDenoiser) -> dict[str, int]:
    """Used parameters per component, from one forward pass on a dummy batch of two blocks."""
    cfg = model.config
    c, s, k = cfg.latent_channels, cfg.block_size, cfg.k
    dev = next(model.parameters()).device
    x = torch.zeros(2, c, s, s, device=dev)
    args = (
        x, torch.zeros(2, dtype=torch.long, device=dev),
        torch.zeros(2, k, c, s, s, device=dev) if cfg.retrieval else None,
        torch.zeros(2, dtype=torch.long, device=dev) if cfg.position else None,
        x if cfg.previous_block else None,
    )
    return used_parameters(model, lambda: model(*args))


class BlockDiffusionTrainer:
    """Owns the model, EMA, optimizer, RNG and data of one run."""

    def __init__(self, config: dict[str, Any], run_dir: str | os.PathLike) -> None:
        require(config, "config", ["model", "data"])
        self.config = config
        self.tc = tc = with_defaults(config.get("train"), TRAIN_DEFAULTS, "train")
        config["train"] = tc
        self.run_dir = Path(run_dir)
        self.device = pick_device(tc["device"])
        self.amp = autocast_dtype(self.device)  # None (fp32) on a CPU and on a GTX 1080 Ti
        self.scaler = make_grad_scaler(self.device, self.amp)
        torch.manual_seed(tc["seed"])
        self.model = build_model(config["model"]).to(self.device)
        self.counts = parameter_counts(self.model)
        if tc["max_params"] is not None and self.counts["total"] > tc["max_params"]:
            raise ConfigError(
                f"the model uses {self.counts['total']:,} parameters, above train.max_params = {tc['max_params']:,}:\n"
                f"{format_counts(self.counts)}\nShrink model.model_channels or channel_mult, or raise the budget."
            )
        dc = config["data"]
        self.db = open_database(dc["db"])
        mc = self.model.config
        self.table = open_table(self.db, dc.get("table", "train")) if mc.retrieval else None
        check_pairing(self.db, self.table, mc, config.get("vqgan_hash"), "the config")
        config["vqgan_hash"] = self.db.checkpoint_hash
        if "scale_factor" not in config:
            config["scale_factor"] = 1.0 / latent_std(self.db)
        latents = None
        if dc.get("latents"):
            from rissole.latents import open_latents

            lat = open_latents(dc["latents"])
            self.db.check_vqgan(lat.checkpoint_hash, f"the training latents {dc['latents']}")
            latents = lat.array
        self.batcher = BlockBatcher(self.db, self.table, mc.grid, mc.k, config["scale_factor"], latents)
        self.schedule = NoiseSchedule.from_dict(config.get("diffusion", {}))
        config["diffusion"] = self.schedule.to_dict()
        self.loss_fn = BlockDiffusionLoss(self.schedule, tc["cond_dropout"])
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]),
                                     weight_decay=tc["weight_decay"])
        learning_rate(tc["lr"], 0, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])  # validates the name
        self.ema = EMA(self.model, tc["ema_decay"]) if tc["ema_decay"] else None
        self.gen = torch.Generator().manual_seed(tc["seed"] + 1)
        self.step = 0

    def _cfg(self) -> dict[str, Any]:
        return {k: v for k, v in self.config.items() if k not in ("kind", "format_version", "step")}

    def _weights(self) -> dict[str, dict[str, torch.Tensor]]:
        w = {"model": self.model.state_dict()}
        if self.ema:
            w["ema"] = self.ema.state_dict()
        return w

    def save(self) -> None:
        tensors, meta = flatten_optimizer(self.opt, "opt")
        tensors.update(rng_tensors(self.gen))
        save_checkpoint(self.run_dir / "checkpoint", KIND, self.step, self._cfg(), self._weights(), tensors,
                        {"opt": meta, "scaler": self.scaler.state_dict()})

    def save_final(self) -> Path:
        return save_checkpoint(self.run_dir / "final", KIND, self.step, self._cfg(), self._weights())

    def resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir / "checkpoint", expect_kind=KIND, with_trainer=True)
        if ckpt.config["model"] != self.config["model"]:
            raise CheckpointError(f"{ckpt.path}: the checkpoint's model config differs from the one given; "
                                  "resume with the same config.")
        self.config["scale_factor"] = ckpt.config["scale_factor"]
        self.batcher.scale = ckpt.config["scale_factor"]
        ckpt.load_into(self.model, "model")
        if self.ema:
            self.ema.load_state_dict(ckpt.weights["ema"])
        restore_optimizer(self.opt, "opt", ckpt.trainer_tensors, ckpt.trainer_meta["opt"])
        restore_rng(ckpt.trainer_tensors, self.gen)
        if "scaler" in ckpt.trainer_meta:  # checkpoints written before mixed precision have none
            self.scaler.load_state_dict(ckpt.trainer_meta["scaler"])
        self.step = ckpt.step

    def train_step(self) -> dict[str, float]:
        tc = self.tc
        self.model.train()
        lr = learning_rate(tc["lr"], self.step, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])
        set_learning_rate([self.opt], lr)
        ids = batch_indices(tc["seed"], self.step, tc["batch_size"], len(self.batcher))
        batch = self.batcher.batch(ids)
        for name in ("x0", "neighbours", "previous"):
            if getattr(batch, name) is not None:
                setattr(batch, name, getattr(batch, name).to(self.device))
        with autocast(self.device, self.amp):
            loss = self.loss_fn(self.model, batch, self.gen)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        self.step += 1
        return {"loss": float(loss.detach()), "lr": lr}


def train_block_diffusion(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    progress: bool = True,
) -> BlockDiffusionTrainer:
    """Train (or resume) a run; `stop_after` ends this invocation early, with a checkpoint."""
    run_dir = Path(run_dir)
    if not resume:
        check_fresh_run(run_dir)
    trainer = BlockDiffusionTrainer(config, run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        trainer.resume()
        truncate_csv(run_dir / "log.csv", trainer.step)
    tc = trainer.tc
    if progress:
        print(f"parameters used by the forward pass:\n{format_counts(trainer.counts)}")
    end = tc["steps"] if stop_after is None else min(tc["steps"], trainer.step + stop_after)
    bar = tqdm(total=tc["steps"], initial=trainer.step, desc="rissole", unit="step", disable=not progress)
    t0 = time.time()
    while trainer.step < end:
        logs = trainer.train_step()
        if not math.isfinite(logs["loss"]):
            raise RuntimeError(f"loss became {logs['loss']} at step {trainer.step}; lower train.lr.")
        append_csv(run_dir / "log.csv", {"step": trainer.step, "loss": f"{logs['loss']:.6g}", "lr": f"{logs['lr']:.6g}",
                                         "seconds": f"{time.time() - t0:.1f}"})
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.4f}")
        if trainer.step % tc["ckpt_every"] == 0 or trainer.step == end:
            trainer.save()
    bar.close()
    if trainer.step == tc["steps"]:
        trainer.save_final()
    return trainer
