"""Plain PyTorch training loop for the VQ-GAN, resumable bit for bit.

Run directory layout:
    RUN/checkpoint/   latest full checkpoint (weights, EMA, discriminator, optimizer + RNG state)
    RUN/final/        inference weights only (config, model, EMA): what is shipped and loaded
    RUN/log.csv       one row per step;  RUN/val.csv  one row per validation
Data order depends only on (seed, step), so a resumed run sees exactly the batches an
uninterrupted run would; every other random draw uses a generator whose state is saved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rissole import distributed
from rissole.autoencoder.losses import adaptive_gan_weight, build_discriminator, grey_distance, hinge_d_loss, psnr
from rissole.autoencoder.vqgan import VQGANConfig, VQModel
from rissole.checkpoint import save_checkpoint
from rissole.config import require, require_data
from rissole.data import load_source, source_channels, to_model_range
from rissole.device import autocast, autocast_dtype, make_grad_scaler, pick_device
from rissole.ema import EMA
from rissole_runtime.errors import ConfigError
from rissole.training import (
    RunTrainer,
    run_config,
    append_csv,
    batch_indices,
    learning_rate,
    set_learning_rate,
    with_defaults,
)

TRAIN_DEFAULTS: dict[str, Any] = {
    "steps": 4000,
    "batch_size": 64,
    "lr": 3.0e-4,
    "betas": [0.5, 0.9],
    "lr_schedule": "cosine",  # constant | cosine (to 0 at the last step), after a linear warm-up
    "warmup_steps": 100,
    "grad_clip": 1.0,
    "seed": 0,
    "ema_decay": None,
    "codebook_weight": 1.0,
    "disc_start": None,  # step at which the PatchGAN term starts; None = never
    "disc_weight": 0.5,
    "disc_ndf": 32,
    "disc_layers": 2,
    "lpips_weights": None,  # local LPIPS file(s): one path, a list, or {"vgg": ..., "lin": ...} (rissole.autoencoder.lpips)
    "perceptual_net": None,  # a feature network trained here (rissole vqgan perceptual): LPIPS without ImageNet weights
    "perceptual_weight": 1.0,
    "restart_dead_codes_every": 200,  # re-seed codes unused over this many steps; 0 = off
    "restart_until": 0.8,  # fraction of training after which codes are left alone
    "ckpt_every": 500,
    "val_every": 500,
    "val_images": 1000,
    "device": "auto",
    "accumulate": 1,  # micro-batches per step; the VQ-GAN takes 1 (its adaptive GAN weight is per batch)
}


class VQGANTrainer(RunTrainer):
    """Owns the model, discriminator, optimizers, EMA and RNG state of one run."""

    kind = "vqgan"
    log_files = ("log.csv", "val.csv")

    def __init__(self, config: dict[str, Any], run_dir: str | os.PathLike) -> None:
        require(config, "config", ["model", "data"])
        require_data(config, ["source"])
        self.config = config
        self.train_cfg = with_defaults(config.get("train"), TRAIN_DEFAULTS, "train")
        self.config["train"] = self.train_cfg
        self.run_dir = Path(run_dir)
        tc = self.train_cfg
        if tc["accumulate"] != 1:
            raise ConfigError(f"train.accumulate {tc['accumulate']}: the VQ-GAN trains on whole batches (its adaptive GAN "
                              "weight, VQ-GAN paper Eq. 7, is a ratio of the batch's gradients); use more processes "
                              "(torchrun) or a smaller train.batch_size instead.")
        self.world = distributed.init(tc["device"])
        distributed.check_parts(tc["batch_size"], self.world)
        self.device = pick_device(distributed.rank_device(tc["device"]))
        self.amp = autocast_dtype(self.device)
        torch.manual_seed(tc["seed"])
        self.model_config = VQGANConfig.from_dict(config["model"])
        self.model = VQModel(self.model_config).to(self.device)
        dd = self.model_config.ddconfig
        self.use_disc = tc["disc_start"] is not None
        self.disc = build_discriminator(dd["out_ch"], tc["disc_ndf"], tc["disc_layers"]).to(self.device) if self.use_disc else None
        self.opt = torch.optim.Adam(self.model.parameters(), lr=tc["lr"], betas=tuple(tc["betas"]))
        self.opt_d = (
            torch.optim.Adam(self.disc.parameters(), lr=tc["lr"], betas=tuple(tc["betas"])) if self.disc else None
        )
        self.scaler = make_grad_scaler(self.device, self.amp)
        learning_rate(tc["lr"], 0, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])  # validates the schedule name
        self.ema = EMA(self.model, tc["ema_decay"]) if tc["ema_decay"] else None
        self.lpips = None  # the perceptual term: LPIPS from files, or the distance of a feature net trained here
        if tc["lpips_weights"] and tc["perceptual_net"]:
            raise ConfigError("train.lpips_weights and train.perceptual_net are both set: the perceptual term is one "
                              "or the other; set the one you do not want to null.")
        if tc["lpips_weights"]:
            from rissole.autoencoder.lpips import LPIPS

            self.lpips = LPIPS.from_files(tc["lpips_weights"]).to(self.device)
        elif tc["perceptual_net"]:
            from rissole.autoencoder.perceptual import load_perceptual

            self.lpips = load_perceptual(tc["perceptual_net"]).to(self.device)
        self.gen = torch.Generator().manual_seed(tc["seed"] + 1)
        self.code_usage = torch.zeros(self.model_config.n_embed, dtype=torch.int64)
        self.step = 0
        self.inference_choice = "ema" if self.ema else "live"  # set by validate()

    # ---------------------------------------------------------------- state (rissole.training.RunTrainer's hooks)
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"opt": self.opt, **({"opt_d": self.opt_d} if self.opt_d else {})}

    def extra_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        if not self.disc:
            return {}
        return {"discriminator": {f"loss.discriminator.{k}": v for k, v in self.disc.state_dict().items()}}

    def save_final(self) -> Path:
        """Inference weights: the EMA as well only when it validated at least as well as the live weights
        (loaders prefer ema.safetensors when present); without validation data the EMA is kept."""
        w = self.final_weights()
        if self.inference_choice != "ema":
            w.pop("ema", None)
        return save_checkpoint(self.run_dir / "final", self.kind, self.step, run_config(self.config), w)

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"code_usage": self.code_usage}

    def restore_extra(self, ckpt: Any) -> None:
        if self.disc:
            prefix = "loss.discriminator."
            self.disc.load_state_dict({k[len(prefix):]: v for k, v in ckpt.weights["discriminator"].items()})
        self.code_usage.copy_(ckpt.trainer_tensors["code_usage"])

    # ---------------------------------------------------------------- training
    def _restart_dead_codes(self, latents: torch.Tensor) -> int:
        """Re-seed codes unused since the last check with random encoder outputs of the current batch."""
        dead = (self.code_usage == 0).nonzero().flatten()
        self.code_usage.zero_()
        if dead.numel() == 0:
            return 0
        flat = latents.detach().permute(0, 2, 3, 1).reshape(-1, latents.shape[1]).float().cpu()
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), generator=self.gen)
        with torch.no_grad():
            self.model.quantize.embedding.weight[dead.to(self.device)] = flat[pick].to(self.device)
        return int(dead.numel())

    def load_data(self, data_dir: str | os.PathLike | None = None) -> None:
        """Training images (and validation images, when data.val_source is set) at the model's size and channels."""
        tc, dc = self.train_cfg, self.config["data"]
        size, channels = self.model_config.ddconfig["resolution"], self.model_config.ddconfig["in_channels"]
        data_dir = data_dir or dc.get("data_dir")
        self.images = load_source(dc["source"], data_dir=data_dir, size=size, channels=channels, limit=dc.get("limit")).images
        self.val_images = None
        if dc.get("val_source"):
            self.val_images = load_source(dc["val_source"], data_dir=data_dir, size=size, channels=channels,
                                          limit=tc["val_images"]).images

    def train_step(self) -> dict[str, float]:
        """One step on the batch of self.step (a function of seed and step only)."""
        tc = self.train_cfg
        idx = batch_indices(tc["seed"], self.step, tc["batch_size"], len(self.images))
        part = idx[self.world.rank :: self.world.size]  # this rank's share (rissole.distributed)
        return self.step_on(to_model_range(self.images[part]).to(self.device))

    def postfix(self, logs: dict[str, float]) -> dict[str, str]:
        return {"l1": f"{logs['rec_l1']:.4f}", "cb": f"{logs['codebook']:.4f}"}

    def after_step(self, seconds: float, write: Any) -> None:
        """Validation every val_every steps and at the last: live vs EMA PSNR into RUN/val.csv."""
        tc = self.train_cfg
        if self.val_images is None or not self.world.main or not (self.step % tc["val_every"] == 0 or self.step == tc["steps"]):
            return
        val = self.validate(self.val_images)
        append_csv(self.run_dir / "val.csv", {"step": self.step, "seconds": f"{seconds:.1f}", **val})
        ema = f", EMA {val['val_psnr_ema']:.2f} dB" if "val_psnr_ema" in val else ""
        write(f"step {self.step}: val PSNR live {val['val_psnr_live']:.2f} dB{ema} "
              f"(inference uses {self.inference_choice}), code usage {val['val_code_usage']:.1%}")

    def step_on(self, x: torch.Tensor) -> dict[str, float]:
        """One optimisation step on images x (model range)."""
        tc = self.train_cfg
        self.model.train()
        lr = learning_rate(tc["lr"], self.step, tc["steps"], tc["warmup_steps"], tc["lr_schedule"])
        set_learning_rate([self.opt, self.opt_d], lr)
        disc_on = self.use_disc and self.step >= tc["disc_start"]
        with autocast(self.device, self.amp):
            h = self.model.encode(x)
            z_q, qloss, idx = self.model.quantize_latent(h)
            xrec = self.model.decoder(self.model.post_quant_conv(z_q))
            rec = (x - xrec).abs().mean()
            nll = rec + (tc["perceptual_weight"] * self.lpips(xrec, x).mean() if self.lpips is not None else 0.0)
            loss = nll + tc["codebook_weight"] * qloss
            g_loss = d_weight = torch.zeros((), device=self.device)
            if disc_on:
                g_loss = -self.disc(xrec).mean()
                d_weight = adaptive_gan_weight(nll, g_loss, self.model.last_layer()) * tc["disc_weight"]
                if self.world.size > 1:  # one weight for the global batch: the ranks' mean
                    d_weight = torch.full_like(d_weight, distributed.mean_over_ranks(d_weight))
                loss = loss + d_weight * g_loss
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        distributed.all_reduce_gradients(self.model.parameters(), self.world.size)
        self.scaler.unscale_(self.opt)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
        self.scaler.step(self.opt)
        d_loss = torch.zeros(())
        if disc_on:
            with autocast(self.device, self.amp):
                d_loss = hinge_d_loss(self.disc(x), self.disc(xrec.detach()))
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler.scale(d_loss).backward()
            distributed.all_reduce_gradients(self.disc.parameters(), self.world.size)
            self.scaler.step(self.opt_d)
        self.scaler.update()
        if self.ema:
            self.ema.update(self.model)
        self.code_usage += distributed.sum_over_ranks(torch.bincount(idx.flatten().cpu(), minlength=self.model_config.n_embed))
        self.step += 1
        restarted = 0
        every = tc["restart_dead_codes_every"]
        if every and self.step % every == 0 and self.step <= tc["restart_until"] * tc["steps"]:
            restarted = self._restart_dead_codes(distributed.gather_parts(h.detach()))
        return {
            **distributed.means_over_ranks({"loss": loss.detach(), "rec_l1": rec.detach(), "codebook": qloss.detach(),
                                            "g_loss": g_loss.detach(), "d_loss": d_loss.detach()}),
            "d_weight": float(d_weight),
            "restarted_codes": restarted,
            "lr": lr,
        }

    @torch.no_grad()
    def validate(self, images: np.ndarray) -> dict[str, float]:
        """PSNR (dB) and codebook usage on held-out images, for the live and (if any) the EMA weights side by side.

        `val_psnr` / `val_code_usage` are those of the weights inference will use: the EMA unless the
        live weights validate better (early in a run, or with a decay too slow for the run's length).
        """
        out = {f"{k}_live": v for k, v in self._validate_model(self.model, images).items()}
        use = "live"
        if self.ema:
            ema_model = VQModel(self.model_config).to(self.device)
            ema_model.load_state_dict(self.ema.state_dict())
            out.update({f"{k}_ema": v for k, v in self._validate_model(ema_model, images).items()})
            use = "ema" if out["val_psnr_ema"] >= out["val_psnr_live"] else "live"
        self.inference_choice = use
        chosen = {k[: -len(use) - 1]: v for k, v in out.items() if k.endswith(f"_{use}")}
        return {**chosen, **out}

    def _validate_model(self, model: VQModel, images: np.ndarray) -> dict[str, float]:
        was_training = model.training
        model.eval()
        psnrs, colour, used = [], [], torch.zeros(self.model_config.n_embed, dtype=torch.bool)
        for start in range(0, len(images), 256):
            x = to_model_range(images[start : start + 256]).to(self.device)
            xrec, _, idx = model(x)
            psnrs.append(psnr(xrec.clamp(-1, 1), x).cpu())
            if x.shape[1] == 3:
                colour.append(grey_distance(xrec.clamp(-1, 1)).cpu())
            used[idx.flatten().cpu()] = True
        model.train(was_training)
        out = {"val_psnr": float(torch.cat(psnrs).mean()), "val_code_usage": float(used.float().mean())}
        if colour:  # colour kept vs steps: compare with grey_distance of the data (rissole fit's summary)
            out["val_colour"] = float(torch.cat(colour).mean())
        return out


def resolve_data_channels(config: dict[str, Any], data_dir: str | os.PathLike | None = None) -> int:
    """Take the autoencoder's channel count from its training data, in place.

    `in_channels` / `out_ch` left out (or "auto") are set to the data's; a count that disagrees with the
    data is refused: a grey config on a colour folder would otherwise train a grey model without a word.
    """
    spec = config["data"]["source"]
    channels = source_channels(spec, data_dir=data_dir)
    dd = config["model"].setdefault("ddconfig", dict(VQGANConfig().ddconfig))
    for key in ("in_channels", "out_ch"):
        if dd.get(key) in (None, "auto"):
            dd[key] = channels
        elif dd[key] != channels:
            kind = "colour" if channels == 3 else "grey"
            raise ConfigError(
                f"data.source {spec} holds {kind} images ({channels} channel{'s' * (channels > 1)}) but model.ddconfig.{key} "
                f"is {dd[key]}: set model.ddconfig.in_channels and out_ch to {channels} or to auto (the rgb32 and "
                f"rgb64-f8 presets take them from the data)."
            )
    return channels


def train_vqgan(
    config: dict[str, Any],
    run_dir: str | os.PathLike,
    resume: bool = False,
    stop_after: int | None = None,
    data_dir: str | None = None,
    progress: bool = True,
) -> VQGANTrainer:
    """Train (or resume) a VQ-GAN run; `stop_after` ends this invocation early (with a checkpoint)."""
    resolve_data_channels(config, data_dir or config["data"].get("data_dir"))
    trainer = VQGANTrainer(config, run_dir)
    trainer.load_data(data_dir)
    trainer.fit(resume, stop_after, progress)
    return trainer
