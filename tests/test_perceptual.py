"""The perceptual network trained here: it learns, its distance behaves like one, the VQ-GAN trains with it,
and bad input is refused with nothing written."""

from __future__ import annotations

import copy
import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rissole.autoencoder.perceptual import (
    PerceptualDistance,
    accuracy,
    load_perceptual,
    save_feature_net,
    train_feature_net,
)
from rissole.autoencoder.train import VQGANTrainer, train_vqgan
from rissole.data import load_source, to_model_range
from rissole_runtime.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], float]:
    train = load_source("fmnist:train", limit=2000)
    test = load_source("fmnist:test", limit=500)
    net, losses = train_feature_net(train.images, train.labels, config={"widths": [16, 32, 32, 32]},
                                    train={"epochs": 5, "batch_size": 64}, progress=False)
    out = tmp_path_factory.mktemp("perceptual") / "net"
    save_feature_net(net, out, {"train": {"epochs": 2}})
    return out, losses, accuracy(net, test.images, test.labels)


def test_feature_net_learns_the_classes(trained: tuple[Path, dict[str, float], float]) -> None:
    _, losses, acc = trained
    assert losses["loss_last"] < 0.7 * losses["loss_first"]  # ln 10 = 2.30 at the start
    assert acc > 0.6  # chance 0.1


def test_distance_zero_on_equal_and_grows_with_blur(trained: tuple[Path, dict[str, float], float],
                                                    fmnist_test_300: np.ndarray) -> None:
    dist = load_perceptual(trained[0])
    x = to_model_range(fmnist_test_300[:32])
    assert float(dist(x, x).abs().max()) < 1e-6
    kernel = torch.ones(1, 1, 3, 3) / 9
    blurred = [x]
    for _ in range(3):
        blurred.append(F.conv2d(blurred[-1], kernel, padding=1))
    d = [float(dist(b, x).mean()) for b in blurred[1:]]
    assert d[0] > 0 and d[0] < d[1] < d[2], d
    assert dist(x, blurred[1]).shape == (32, 1, 1, 1)


def test_gradients_reach_input_not_weights(trained: tuple[Path, dict[str, float], float],
                                           fmnist_test_300: np.ndarray) -> None:
    dist = load_perceptual(trained[0])
    dist.train()
    assert not dist.net.training  # a fixed metric stays in eval mode
    x = to_model_range(fmnist_test_300[:8])
    y = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    dist(y, x).sum().backward()
    assert y.grad is not None and float(y.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in dist.parameters())


def test_unlabelled_source_is_refused() -> None:
    with pytest.raises(DataError, match="no labels"):
        train_feature_net(np.zeros((4, 1, 32, 32), np.uint8), None, source="folder:x")


def test_vqgan_trains_with_the_perceptual_net(tmp_path: Path, tiny_vqgan_config: dict[str, Any],
                                              trained: tuple[Path, dict[str, float], float]) -> None:
    cfg = tiny_vqgan_config
    cfg["train"].update(steps=6, disc_start=None, perceptual_net=str(trained[0]), perceptual_weight=1.0)
    trainer = train_vqgan(copy.deepcopy(cfg), tmp_path / "run", progress=False)
    assert isinstance(trainer.lpips, PerceptualDistance)
    with open(tmp_path / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    # the logged loss holds the perceptual term: it exceeds L1 + codebook alone
    assert all(float(r["loss"]) > float(r["rec_l1"]) + float(r["codebook"]) + 1e-4 for r in rows)


def test_lpips_and_perceptual_net_together_are_refused(tmp_path: Path, tiny_vqgan_config: dict[str, Any]) -> None:
    cfg = tiny_vqgan_config
    cfg["train"].update(lpips_weights="vgg.pth", perceptual_net="net")
    with pytest.raises(ConfigError, match="one or the other"):
        VQGANTrainer(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_folder_it_did_not_write(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rissole.cli.main import main

    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")
    assert main(["vqgan", "perceptual", "--out", str(out), "--epochs", "1", "--force"]) != 0
    assert "never replaces" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "keep"
