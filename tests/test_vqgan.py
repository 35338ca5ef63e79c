"""VQ-GAN training on real images: loss goes down, checkpoints round-trip, resume is bit-exact, imports are safe."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from rissole.autoencoder import VQGANConfig, VQModel, load_vqgan
from rissole.autoencoder.convert import import_taming_checkpoint
from rissole.autoencoder.train import train_vqgan
from rissole.training import batch_indices
from rissole.checkpoint import load_checkpoint, save_checkpoint
from rissole.data import to_model_range
from rissole_runtime.errors import CheckpointError


def _losses(run: Path) -> list[float]:
    with open(run / "log.csv") as f:
        return [float(r["rec_l1"]) for r in csv.DictReader(f)]


def test_loss_goes_down_on_real_images(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    cfg = tiny_vqgan_config
    cfg["data"]["limit"] = 320
    cfg["train"].update(steps=60, disc_start=None, ema_decay=None)
    trainer = train_vqgan(cfg, tmp_path / "run", progress=False)
    l1 = _losses(tmp_path / "run")
    assert len(l1) == 60
    assert np.mean(l1[-10:]) < 0.6 * np.mean(l1[:5]), (l1[:5], l1[-10:])
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert trainer.step == 60


def test_resume_matches_uninterrupted_run(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    """Interrupt at step 13 (before the GAN starts at 20, between dead-code restarts), resume to 30."""
    cfg = tiny_vqgan_config
    cfg["train"]["steps"] = 30
    straight = train_vqgan(cfg, tmp_path / "a", progress=False)
    train_vqgan(cfg, tmp_path / "b", stop_after=13, progress=False)
    assert load_checkpoint(tmp_path / "b" / "checkpoint").step == 13
    resumed = train_vqgan(cfg, tmp_path / "b", resume=True, progress=False)
    for name, ref in straight.model.state_dict().items():
        assert torch.equal(ref, resumed.model.state_dict()[name]), name
    for name, ref in straight.disc.state_dict().items():
        assert torch.equal(ref, resumed.disc.state_dict()[name]), name
    for name, ref in straight.ema.state_dict().items():
        assert torch.equal(ref, resumed.ema.state_dict()[name]), name
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # the log was truncated and rewritten, not duplicated
    with open(tmp_path / "b" / "log.csv") as f:
        seconds = [float(r["seconds"]) for r in csv.DictReader(f)]
    assert seconds[12] > 0 and all(b >= a for a, b in zip(seconds, seconds[1:]))  # the wall clock continues


def test_new_run_refuses_to_overwrite_existing_checkpoint(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    cfg = tiny_vqgan_config
    cfg["train"]["steps"] = 2
    train_vqgan(cfg, tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="pass --resume"):
        train_vqgan(cfg, tmp_path / "run", progress=False)


def test_batch_order_depends_only_on_seed_and_step() -> None:
    a = [batch_indices(1, s, 16, 100) for s in range(12)]
    b = [batch_indices(1, s, 16, 100) for s in range(12)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    epoch0 = np.concatenate(a[:6])
    assert len(set(epoch0.tolist())) == 96  # no repeats within an epoch
    assert not np.array_equal(a[0], a[6])  # a new permutation each epoch


def _tiny_model(cfg: dict[str, Any]) -> VQModel:
    torch.manual_seed(0)
    return VQModel(VQGANConfig.from_dict(cfg["model"])).eval()


def test_checkpoint_round_trip_identical_outputs(tmp_path: Path, tiny_vqgan_config: dict[str, Any], fmnist_test_300: np.ndarray) -> None:
    model = _tiny_model(tiny_vqgan_config)
    save_checkpoint(tmp_path / "ck", "vqgan", 0, {"model": tiny_vqgan_config["model"]}, {"model": model.state_dict()})
    loaded = load_vqgan(tmp_path / "ck")
    x = to_model_range(fmnist_test_300[:16])
    with torch.no_grad():
        a, _, ia = model(x)
        b, _, ib = loaded(x)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert a.shape == (16, 1, 32, 32) and model.encode(x).shape == (16, 4, 16, 16)


def test_checkpoint_files_get_the_umask_mode(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    """safetensors writes 0600 files; a checkpoint shared with a team (or copied into a container) must not be."""
    import os

    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "ck", "vqgan", 0, {"model": tiny_vqgan_config["model"]},
                        {"model": _tiny_model(tiny_vqgan_config).state_dict()})
    finally:
        os.umask(old)
    assert {f.name: oct(f.stat().st_mode & 0o777) for f in (tmp_path / "ck").iterdir()} == {
        "config.yaml": "0o644", "model.safetensors": "0o644"}


def test_mismatched_checkpoint_names_keys(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    model = _tiny_model(tiny_vqgan_config)
    other = dict(tiny_vqgan_config["model"], n_embed=32)
    save_checkpoint(tmp_path / "ck", "vqgan", 0, {"model": other}, {"model": model.state_dict()})
    with pytest.raises(CheckpointError) as err:
        load_vqgan(tmp_path / "ck")
    msg = str(err.value)
    assert "quantize.embedding.weight: expected (32, 4), found (64, 4)" in msg and "model.safetensors" in msg


def test_failed_save_keeps_previous_checkpoint(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    model = _tiny_model(tiny_vqgan_config)
    cfg = {"model": tiny_vqgan_config["model"]}
    save_checkpoint(tmp_path / "ck", "vqgan", 1, cfg, {"model": model.state_dict()})
    with pytest.raises(Exception):
        save_checkpoint(tmp_path / "ck", "vqgan", 2, cfg, {"model": {"bad": "not a tensor"}})  # type: ignore[dict-item]
    assert load_checkpoint(tmp_path / "ck").step == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary left behind


def test_corrupt_weights_file_is_refused(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    model = _tiny_model(tiny_vqgan_config)
    save_checkpoint(tmp_path / "ck", "vqgan", 0, {"model": tiny_vqgan_config["model"]}, {"model": model.state_dict()})
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors: cannot read safetensors"):
        load_vqgan(tmp_path / "ck")


def test_import_taming_ckpt(tmp_path: Path, tiny_vqgan_config: dict[str, Any], fmnist_test_300: np.ndarray) -> None:
    """A latent-diffusion style .ckpt (state_dict with loss.* keys, plus metadata) imports with identical outputs."""
    model = _tiny_model(tiny_vqgan_config)
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.zeros(8, 1, 4, 4)
    state["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"state_dict": state, "global_step": 7, "epoch": 1}, tmp_path / "last.ckpt")
    cfg = VQGANConfig.from_dict(tiny_vqgan_config["model"])
    import_taming_checkpoint(tmp_path / "last.ckpt", cfg, tmp_path / "imported")
    loaded = load_vqgan(tmp_path / "imported")
    x = to_model_range(fmnist_test_300[:8])
    with torch.no_grad():
        assert torch.equal(model(x)[0], loaded(x)[0])


class _Payload:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (print, ("executed",))


def test_import_refuses_pickled_code(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    torch.save({"state_dict": {}, "callback": _Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        import_taming_checkpoint(tmp_path / "evil.ckpt", VQGANConfig.from_dict(tiny_vqgan_config["model"]), tmp_path / "o")
    assert not (tmp_path / "o").exists()
