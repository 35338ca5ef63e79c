"""A perceptual loss from a feature network trained here, on the first stage's own training data.

Why: LPIPS needs VGG16 weights trained on ImageNet, which do not exist offline here, and the
Inception network of the FID must never be a training signal (the model would be graded on what
it was trained to please). The LPIPS paper ("The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric") found that the features of any network trained for classification make a good
perceptual distance, even uncalibrated; so this module trains a small VGG-style classifier on the
training split's labels and uses its features the LPIPS way:

    d(x, y) = sum_l  mean_{h,w}  || n(F_l(x)) - n(F_l(y)) ||^2      (n: unit norm along channels)

with uniform layer weights (no human judgements to calibrate them on). Four taps, at 1, 1/2, 1/4
and 1/8 of the input size.

    rissole vqgan perceptual --source fmnist:train --out checkpoints/perceptual-fmnist
    # then in a VQ-GAN config: train.perceptual_net: checkpoints/perceptual-fmnist
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rissole.autoencoder.lpips import normalize_channels
from rissole.checkpoint import load_checkpoint, save_checkpoint
from rissole.data import to_model_range
from rissole_runtime.errors import DataError

KIND = "perceptual"
DEFAULTS: dict[str, Any] = {"in_channels": 1, "num_classes": 10, "widths": [32, 64, 128, 128]}
TRAIN_DEFAULTS: dict[str, Any] = {"epochs": 3, "batch_size": 128, "lr": 2.0e-3, "seed": 0}


class FeatureNet(nn.Module):
    """conv3x3 + ReLU at each of four scales (2x2 max-pool between them), global mean, linear head.

    `features` returns the four post-ReLU maps, the taps of the perceptual distance."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: list[int] | None = None) -> None:
        super().__init__()
        widths = list(widths or DEFAULTS["widths"])
        self.config = {"in_channels": in_channels, "num_classes": num_classes, "widths": widths}
        chans = [in_channels, *widths]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU()) for a, b in zip(chans[:-1], chans[1:])
        )
        self.head = nn.Linear(widths[-1], num_classes)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, stage in enumerate(self.stages):
            x = stage(x if i == 0 else nn.functional.max_pool2d(x, 2))
            taps.append(x)
        return taps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[-1].mean(dim=(2, 3)))


class PerceptualDistance(nn.Module):
    """Frozen LPIPS-style distance over a FeatureNet's taps; per image, shape (N, 1, 1, 1) like LPIPS."""

    def __init__(self, net: FeatureNet) -> None:
        super().__init__()
        self.net = net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> PerceptualDistance:
        """Always in eval mode: a fixed metric."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape:
            raise ValueError(f"perceptual distance: inputs differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}")
        total = torch.zeros(x.shape[0], 1, 1, 1, device=x.device)
        for a, b in zip(self.net.features(x), self.net.features(y)):
            with torch.autocast(a.device.type, enabled=False):
                diff = (normalize_channels(a.float()) - normalize_channels(b.float())) ** 2
            total = total + diff.sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        return total


def train_feature_net(images: np.ndarray, labels: np.ndarray | None, config: dict[str, Any] | None = None,
                      train: dict[str, Any] | None = None, progress: bool = True,
                      source: str = "the training source") -> tuple[FeatureNet, dict[str, float]]:
    """Train a FeatureNet as a classifier of uint8 images (N, C, H, W); Adam, cosine learning rate, seeded order."""
    if labels is None:
        raise DataError(f"{source} has no labels: the perceptual network learns its features by classifying the "
                        f"training images. Use a labelled source (fmnist:train, or a folder with one sub-folder per class).")
    labels = np.asarray(labels, dtype=np.int64)
    cfg = {**DEFAULTS, **(config or {}), "in_channels": int(images.shape[1]), "num_classes": int(labels.max()) + 1}
    tc = {**TRAIN_DEFAULTS, **(train or {})}
    torch.manual_seed(tc["seed"])
    net = FeatureNet(**cfg)
    opt = torch.optim.Adam(net.parameters(), lr=tc["lr"])
    per_epoch = int(np.ceil(len(labels) / tc["batch_size"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, tc["epochs"] * per_epoch)
    rng = np.random.default_rng(tc["seed"])
    y_all = torch.from_numpy(labels)
    from tqdm import tqdm

    bar = tqdm(total=tc["epochs"] * per_epoch, desc="perceptual net", unit="step", disable=not progress)
    loss_first = loss_last = float("nan")
    for _ in range(tc["epochs"]):
        order = rng.permutation(len(labels))
        for s in range(0, len(order), tc["batch_size"]):
            idx = np.sort(order[s : s + tc["batch_size"]])
            loss = nn.functional.cross_entropy(net(to_model_range(images[idx])), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_last = float(loss.detach())
            loss_first = loss_last if np.isnan(loss_first) else loss_first
            bar.update(1)
            bar.set_postfix(loss=f"{loss_last:.3f}")
    bar.close()
    return net.eval(), {"loss_first": loss_first, "loss_last": loss_last}


@torch.no_grad()
def accuracy(net: FeatureNet, images: np.ndarray, labels: np.ndarray) -> float:
    pred = np.concatenate([net(to_model_range(images[s : s + 512])).argmax(1).numpy() for s in range(0, len(images), 512)])
    return float((pred == np.asarray(labels)).mean())


def save_feature_net(net: FeatureNet, out: str | os.PathLike, info: dict[str, Any], force: bool = False) -> Path:
    return save_checkpoint(out, KIND, 0, {"model": net.config, **info}, {"model": net.state_dict()}, replace=force)


def load_perceptual(path: str | os.PathLike) -> PerceptualDistance:
    """The distance of a checkpoint written by `rissole vqgan perceptual`."""
    ckpt = load_checkpoint(path, expect_kind=KIND)
    net = FeatureNet(**ckpt.config["model"])
    ckpt.load_into(net)
    return PerceptualDistance(net)
