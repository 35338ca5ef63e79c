"""Pieces every training loop shares: settings with defaults, learning-rate schedule, step-indexed
data order, RNG state for bit-exact resume, the run directory, CSV logs."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from rissole import distributed
from rissole.config import check_section_types
from rissole_runtime.errors import CheckpointError, ConfigError


POSITIVE_KEYS = ("steps", "batch_size", "ckpt_every", "val_every")  # train keys that must be at least 1
NULLABLE_KEYS = ("ema_decay", "max_params", "disc_start", "lpips_weights")  # null: off / no limit


def with_defaults(section: dict[str, Any] | None, defaults: dict[str, Any], name: str) -> dict[str, Any]:
    """`defaults` updated by `section`; an unknown key is refused (a typo must not be silently ignored), and every
    value is checked against its default's type and range (config.check_section_types)."""
    section = {} if section is None else section
    check_section_types(section, defaults, name, POSITIVE_KEYS, NULLABLE_KEYS)
    unknown = set(section) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {name} keys {sorted(unknown)}; known: {sorted(defaults)}")
    return {**defaults, **section}


def changed_keys(saved: Any, given: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose value in `given` (the config passed to --resume) differs from `saved` (the checkpoint's);
    keys only in `saved` are the defaults the run filled in, not a change."""
    if isinstance(given, dict) and isinstance(saved, dict):
        out = []
        for key, value in given.items():
            name = f"{prefix}.{key}" if prefix else str(key)
            out += changed_keys(saved[key], value, name) if key in saved else [name]
        return out
    return [] if saved == given else [prefix]


def check_resume_config(run_dir: str | os.PathLike, config: dict[str, Any], allow: bool) -> None:
    """--resume continues a run with the config it was started with: refuse a changed one, naming the keys, unless
    the user allows it (--allow-config-change; the model section must match in any case)."""
    import yaml

    saved_file = Path(run_dir) / "checkpoint" / "config.yaml"
    try:
        saved = yaml.safe_load(saved_file.read_text())
    except (OSError, yaml.YAMLError):
        return  # the trainer's resume reports a missing or broken checkpoint
    if not isinstance(saved, dict):
        return
    given = run_config(config)
    changed = changed_keys(saved, given)
    if changed and not allow:
        shown = ", ".join(f"{k} ({_at(saved, k)!r} -> {_at(given, k)!r})" for k in changed[:8])
        raise ConfigError(f"{saved_file}: --resume with a changed config: {shown}"
                          f"{f' (+{len(changed) - 8} more)' if len(changed) > 8 else ''}. Resume with the run's "
                          "config, or pass --allow-config-change to continue with the new values.")


def _at(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(cfg, dict) or part not in cfg:
            return "(absent)"
        cfg = cfg[part]
    return cfg


def learning_rate(base_lr: float, step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up, then constant or cosine decay to zero at the last step."""
    if schedule not in ("constant", "cosine"):
        raise ConfigError(f"lr_schedule must be 'constant' or 'cosine', found {schedule!r}.")
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if schedule == "constant":
        return base_lr * warm
    progress = min(1.0, step / max(1, total_steps))
    return base_lr * warm * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_learning_rate(optimizers: list[torch.optim.Optimizer | None], lr: float) -> None:
    for opt in optimizers:
        if opt is not None:
            for group in opt.param_groups:
                group["lr"] = lr


def rng_tensors(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The global torch RNG (dropout) and the run's own generator, as checkpoint tensors."""
    return {"rng.torch": torch.get_rng_state(), "rng.gen": generator.get_state()}


def restore_rng(tensors: dict[str, torch.Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    generator.set_state(tensors["rng.gen"])


def check_fresh_run(run_dir: Path) -> None:
    """A new run must not overwrite another one's checkpoint, final weights or log, nor write into a file."""
    if (run_dir / "checkpoint").exists():
        raise CheckpointError(
            f"{run_dir}/checkpoint exists: pass --resume to continue that run, or choose another --out."
        )
    if run_dir.exists() and not run_dir.is_dir():
        raise CheckpointError(f"{run_dir}: expected a run directory (or nothing), found a file. Choose another --out.")
    for name in ("final", "log.csv"):
        if (run_dir / name).exists():
            raise CheckpointError(f"{run_dir / name} exists: {run_dir} holds another run's files. Choose another "
                                  "--out, or move them away.")


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Indices of the batch at `step`: epoch-wise seeded permutations, last partial batch dropped.

    A function of (seed, step) only, so a resumed run sees exactly the batches an uninterrupted one would.
    """
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the training set ({n} rows).")
    epoch, pos = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[pos * batch_size : (pos + 1) * batch_size]


def append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path: Path, last_step: int) -> list[dict[str, str]]:
    """Drop log rows written after the checkpoint being resumed (they will be written again); the rows kept."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["step"]) <= last_step]
    if rows and len(keep) != len(rows):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)
        os.replace(tmp, path)
    return keep


def chunked_std(chunks: Iterable[np.ndarray]) -> float:
    """Standard deviation of every value in the chunks, accumulated in float64 chunk by chunk (the latent scale
    factor of the diffusion heads is 1 / this over their training latents)."""
    total = sq = 0.0
    count = 0
    for chunk in chunks:
        x = np.asarray(chunk, dtype=np.float64)
        total += x.sum()
        sq += (x**2).sum()
        count += x.size
    mean = total / count
    return float(np.sqrt(sq / count - mean**2))


CHECKPOINT_KEYS = ("kind", "format_version", "step")  # written by save_checkpoint itself, never part of a run config


def run_config(config: dict[str, Any]) -> dict[str, Any]:
    """The run config as a checkpoint stores it (without the entries save_checkpoint writes itself)."""
    return {k: v for k, v in config.items() if k not in CHECKPOINT_KEYS}


class RunTrainer:
    """The one training skeleton of every trainer (the VQ-GAN and the heads): the loop (`fit`: fresh-run
    check or resume, a progress bar with rate and ETA, one CSV row per step, a non-finite loss stopping the
    run, periodic atomic checkpoints, the final weights), and what it saves: model and EMA weights, the
    optimizers by name, the RNG stream, the grad scaler, and whatever state a subclass adds through the
    hooks, written to RUN/checkpoint (everything, for a bit-exact resume) and RUN/final (inference weights)."""

    log_files: tuple[str, ...] = ("log.csv",)  # CSVs cut back to the checkpoint's step on resume

    kind: str
    config: dict[str, Any]
    run_dir: Path
    model: torch.nn.Module
    ema: Any  # rissole.ema.EMA | None
    gen: torch.Generator
    scaler: Any  # torch.amp.GradScaler
    step: int

    # --- hooks ---
    def train_step(self) -> dict[str, float]:
        """One optimisation step on the batch of step self.step (rissole.training.batch_indices); returns
        the values to log, "loss" among them; advances self.step."""
        raise NotImplementedError

    def after_step(self, seconds: float, write: Any) -> None:
        """Run after every step's log row (the VQ-GAN validates here); `write` prints above the progress bar."""

    def postfix(self, logs: dict[str, float]) -> dict[str, str]:
        """What the progress bar shows beside rate and ETA."""
        return {"loss": f"{logs['loss']:.4f}"}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimizers, by the name their state is saved under."""
        raise NotImplementedError

    def extra_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        """Weights besides model and EMA that only a resume needs (e.g. the VQ-GAN's discriminator)."""
        return {}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Tensors of run state besides optimizers and RNG (e.g. code usage counts)."""
        return {}

    def restore_extra(self, ckpt: Any) -> None:
        """Restore what extra_weights / extra_state saved (and run state kept in the config)."""

    # --- shared ---
    def final_weights(self) -> dict[str, dict[str, torch.Tensor]]:
        w = {"model": self.model.state_dict()}
        if self.ema:
            w["ema"] = self.ema.state_dict()
        return w

    def save(self) -> None:
        from rissole.checkpoint import flatten_optimizer, save_checkpoint

        tensors: dict[str, torch.Tensor] = {}
        meta: dict[str, Any] = {}
        for name, opt in self.optimizers().items():
            t, meta[name] = flatten_optimizer(opt, name)
            tensors.update(t)
        tensors.update(rng_tensors(self.gen))
        tensors.update(self.extra_state())
        meta["scaler"] = self.scaler.state_dict()
        meta["world_size"] = distributed.world().size
        save_checkpoint(self.run_dir / "checkpoint", self.kind, self.step, run_config(self.config),
                        {**self.final_weights(), **self.extra_weights()}, tensors, meta)

    def save_final(self) -> Path:
        from rissole.checkpoint import save_checkpoint

        return save_checkpoint(self.run_dir / "final", self.kind, self.step, run_config(self.config),
                               self.final_weights())

    def resume(self) -> None:
        from rissole.checkpoint import load_checkpoint, restore_optimizer

        ckpt = load_checkpoint(self.run_dir / "checkpoint", expect_kind=self.kind, with_trainer=True)
        if ckpt.config["model"] != self.config["model"]:
            raise CheckpointError(f"{ckpt.path}: the checkpoint's model config differs from the one given; "
                                  "resume with the same config.")
        self.restore_extra(ckpt)
        ckpt.load_into(self.model, "model")
        if self.ema:
            self.ema.load_state_dict(ckpt.weights["ema"], num_updates=ckpt.step)
        for name, opt in self.optimizers().items():
            restore_optimizer(opt, name, ckpt.trainer_tensors, ckpt.trainer_meta[name])
        restore_rng(ckpt.trainer_tensors, self.gen)
        if "scaler" in ckpt.trainer_meta:  # checkpoints written before mixed precision have none
            self.scaler.load_state_dict(ckpt.trainer_meta["scaler"])
        self.step = ckpt.step
        saved_world, w = ckpt.trainer_meta.get("world_size", 1), distributed.world()
        if saved_world != w.size and w.main:
            print(f"{ckpt.path}: written by a run of {saved_world} process(es), resumed with {w.size}. The global batch "
                  "(train.batch_size) and its data order are kept, so training continues as before; only the order in "
                  "which gradients are summed changes, so the result is not bit-identical to an uninterrupted run. "
                  f"For that, resume with torchrun --nproc_per_node={saved_world} (or one process for 1).")

    def fit(self, resume: bool = False, stop_after: int | None = None, progress: bool = True) -> "RunTrainer":
        """Train to config train.steps (or `stop_after` more steps, ending with a checkpoint); with `resume`,
        continue RUN/checkpoint bit-exactly, else refuse a run directory that holds another run."""
        import time

        from tqdm import tqdm

        tc = self.config["train"]
        main = distributed.world().main  # under torchrun, rank 0 alone writes checkpoints, logs and the bar
        elapsed = 0.0  # wall seconds of the run so far: the log's clock continues across a resume
        if resume:
            self.resume()
            if main:
                for name in self.log_files:
                    kept = truncate_csv(self.run_dir / name, self.step)
                    if name == "log.csv" and kept and kept[-1].get("seconds"):
                        elapsed = float(kept[-1]["seconds"])
        else:
            check_fresh_run(self.run_dir)
        distributed.barrier()  # every rank has checked the run directory before rank 0 writes into it
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        end = tc["steps"] if stop_after is None else min(tc["steps"], self.step + stop_after)
        bar = tqdm(total=tc["steps"], initial=self.step, desc=self.kind, unit="step", disable=not (progress and main))
        t0 = time.time() - elapsed
        while self.step < end:
            logs = self.train_step()
            if not math.isfinite(logs["loss"]):
                raise RuntimeError(f"loss became {logs['loss']} at step {self.step}; lower train.lr or enable grad_clip.")
            if main:
                append_csv(self.run_dir / "log.csv", {"step": self.step, **{k: f"{v:.6g}" for k, v in logs.items()},
                                                       "seconds": f"{time.time() - t0:.1f}"})
                bar.update(1)
                bar.set_postfix(self.postfix(logs))
                self.after_step(time.time() - t0, bar.write)
                if self.step % tc["ckpt_every"] == 0 or self.step == end:
                    self.save()
        bar.close()
        if main and self.step == tc["steps"]:
            self.save_final()
        distributed.barrier()  # no rank leaves (and tears the group down) before rank 0 has written
        return self
