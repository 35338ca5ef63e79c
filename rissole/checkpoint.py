"""The one checkpoint format of rissole, shared by the VQ-GAN and every generator head.

A checkpoint is a directory, written atomically (see `fileio.atomic_dir`):

    config.yaml              kind, format version, step, and the full run config (model, data, train)
    model.safetensors        the trained weights (taming / latent-diffusion key names where they exist)
    ema.safetensors          exponential moving average of the weights (optional; used for inference)
    <other>.safetensors      further weight groups, e.g. the VQ-GAN's discriminator
    trainer.safetensors      optimizer tensors and RNG states, for a bit-exact --resume (optional)
    trainer.json             the non-tensor part of the trainer state

Nothing here unpickles: safetensors and YAML/JSON only; foreign `.ckpt` files are read with
`torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rissole_runtime.errors import CheckpointError
from rissole_runtime.validate import DICT, INT, STR, Field, check_schema
from rissole_runtime.fileio import CHECKPOINT, atomic_dir, file_umask, sha256_file

FORMAT_VERSION = 1
CONFIG_SCHEMA = {"kind": Field(STR), "step": Field(INT, required=False, min=0), "model": Field(DICT)}


@dataclass
class Checkpoint:
    """A loaded checkpoint: config, weight groups, optional trainer state."""

    path: Path
    config: dict[str, Any]
    weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    trainer_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    trainer_meta: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        return str(self.config.get("kind"))

    @property
    def step(self) -> int:
        return int(self.config.get("step", 0))

    def inference_weights_name(self) -> str:
        return "ema" if "ema" in self.weights else "model"

    def weights_hash(self) -> str:
        """SHA-256 of the inference weights file: what databases and latents record as their source."""
        return sha256_file(self.path / f"{self.inference_weights_name()}.safetensors")

    def load_into(self, module: torch.nn.Module, group: str = "model") -> None:
        if group not in self.weights:
            raise CheckpointError(f"{self.path}: no weight group {group!r}; found {sorted(self.weights)}.")
        load_state_dict_checked(module, self.weights[group], self.path / f"{group}.safetensors")


def load_state_dict_checked(module: torch.nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Load `state` strictly; on any mismatch name the keys, the expected and the found shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: expected {tuple(own[k].shape)}, found {tuple(state[k].shape)}"
        for k in sorted(set(own) & set(state))
        if own[k].shape != state[k].shape
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(mismatch_report(
            f"{source}: weights do not match the model built from the config.", shapes, missing, unexpected,
            "use the config.yaml saved beside these weights, or a checkpoint of this architecture.",
        ))
    module.load_state_dict(state, strict=True)


def mismatch_report(header: str, shapes: list[str], missing: list[str], unexpected: list[str], fix: str) -> str:
    """A multi-line error naming mismatched shapes, missing and unexpected keys (8 of each), then the fix."""
    lines = [header]
    for title, items in (("shape mismatch", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
            lines.append(f"  {title}: {', '.join(items[:8])}{more}")
    lines.append(f"  Fix: {fix}")
    return "\n".join(lines)


def save_checkpoint(
    path: str | os.PathLike,
    kind: str,
    step: int,
    config: dict[str, Any],
    weights: dict[str, dict[str, torch.Tensor]],
    trainer_tensors: dict[str, torch.Tensor] | None = None,
    trainer_meta: dict[str, Any] | None = None,
    replace: bool = True,
) -> Path:
    """Write a checkpoint directory atomically; the previous one at `path` survives any failure.

    Only a checkpoint is ever replaced at `path`, and only with `replace` (a run's own checkpoint/ and final/;
    commands writing to a user's --out pass their --force)."""
    path = Path(path)
    full_config = {"kind": kind, "format_version": FORMAT_VERSION, "step": int(step), **config}
    with atomic_dir(path, CHECKPOINT, force=replace) as tmp:
        (tmp / "config.yaml").write_text(yaml.safe_dump(full_config, sort_keys=False))
        for name, state in weights.items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        if trainer_tensors is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in trainer_tensors.items()}, str(tmp / "trainer.safetensors"))
            (tmp / "trainer.json").write_text(json.dumps(trainer_meta or {}, indent=1))
        mode = 0o666 & ~file_umask()
        for f in tmp.glob("*.safetensors"):  # safetensors creates its files 0600; give them the umask's mode
            f.chmod(mode)
    return path


def load_checkpoint(path: str | os.PathLike, expect_kind: str | None = None, with_trainer: bool = False) -> Checkpoint:
    """Read a checkpoint directory; refuse one of another kind or format with a message that says which."""
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        olds = sorted(p for p in path.parent.glob(f".{path.name}.*.old") if (p / "config.yaml").is_file())
        hint = (f" An interrupted save left {olds[-1]}; the next save puts it back, or rename it to {path}."
                if olds else "")
        raise CheckpointError(f"{path}: not a rissole checkpoint (no config.yaml).{hint}")
    try:
        config = yaml.safe_load(cfg_file.read_text())
    except yaml.YAMLError as exc:
        raise CheckpointError(f"{cfg_file}: invalid YAML ({exc}).") from exc
    if not isinstance(config, dict) or config.get("format_version") != FORMAT_VERSION:
        found = config.get("format_version") if isinstance(config, dict) else type(config).__name__
        raise CheckpointError(f"{cfg_file}: expected format_version {FORMAT_VERSION}, found {found}.")
    check_schema(config, CONFIG_SCHEMA, cfg_file, error=CheckpointError)
    if expect_kind is not None and config.get("kind") != expect_kind:
        raise CheckpointError(
            f"{path}: expected a {expect_kind} checkpoint, found kind {config.get('kind')!r}. Pass the right directory."
        )
    ckpt = Checkpoint(path=path, config=config)
    for f in sorted(path.glob("*.safetensors")):
        if f.stem == "trainer":
            continue
        ckpt.weights[f.stem] = _load_safetensors(f)
    if "model" not in ckpt.weights:
        raise CheckpointError(f"{path}: model.safetensors is missing.")
    if with_trainer:
        tfile = path / "trainer.safetensors"
        if not tfile.is_file():
            raise CheckpointError(f"{path}: no trainer state to resume from (trainer.safetensors missing).")
        ckpt.trainer_tensors = _load_safetensors(tfile)
        ckpt.trainer_meta = _load_trainer_meta(path / "trainer.json")
    return ckpt


def _load_trainer_meta(f: Path) -> dict[str, Any]:
    try:
        meta = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing; the trainer state cannot be resumed. Start a new run.") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{f}: corrupt trainer state ({exc}); expected the JSON the trainer wrote. "
                              "Resume from an intact checkpoint or start a new run.") from exc
    check_schema(meta, {"opt": Field(DICT)}, f, error=CheckpointError, fix="Start a new run.")
    return meta


def _load_safetensors(f: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(f))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{f}: cannot read safetensors ({exc}); the file is truncated or corrupt.") from exc


def flatten_optimizer(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into safetensors-friendly tensors and JSON-friendly metadata."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": sd["param_groups"], "state": {}}
    for idx, st in sd["state"].items():
        meta["state"][str(idx)] = {}
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = val
            else:
                meta["state"][str(idx)][key] = val
    return tensors, meta


def restore_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in meta["state"].items()}
    for name, val in tensors.items():
        if name.startswith(prefix + "."):
            idx, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(idx), {})[key] = val
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def load_foreign_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a taming / latent-diffusion `.ckpt` (or `.pt`) safely: `torch.load(weights_only=True)`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found.")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for unsafe or corrupt files
        raise CheckpointError(
            f"{path}: cannot be loaded with weights_only=True ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "rissole never unpickles arbitrary objects; re-save the file as a plain state_dict or as safetensors."
        ) from exc
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state_dict (or a dict with 'state_dict') of tensors.")
    return state
