"""A small CNN image classifier trained on the spot, to label generated samples (database-swap benchmark).

Why here: the database-swap measurement (RDM paper, Sec. 4.3) asks "which class / which domain does
this sample look like?". Inception features answer "how ImageNet-like", not "is this a T-shirt", and
no Fashion-MNIST classifier ships offline on this machine, so the benchmark trains one: two conv
layers and a linear head on 32 x 32 uint8 images, seeded and deterministic on the CPU, a few epochs
(~90% test accuracy on Fashion-MNIST, the usual figure for a net this size). `cached_classifier`
keys the weights by the SHA-256 of the training pixels, labels and hyperparameters, so a rerun of a
benchmark loads them instead of training again.

    clf, info = cached_classifier(x_train, y_train, 10, "runs/classifiers", epochs=3, seed=0)
    acc = accuracy(clf, x_test, y_test);  labels = predict(clf, samples)
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rissole_runtime.errors import DataError
from rissole_runtime.fileio import atomic_path, write_json_atomic


class SmallCNN(nn.Module):
    """conv3x3(c->w) ReLU maxpool, conv3x3(w->2w) ReLU maxpool, flatten, linear (32 x 32 input: 2w x 8 x 8 -> classes)."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 16, size: int = 32) -> None:
        super().__init__()
        self.config = {"num_classes": num_classes, "in_channels": in_channels, "width": width, "size": size}
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * w * (size // 4) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def _as_input(images: np.ndarray) -> torch.Tensor:
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"classifier input: expected uint8 images (N, C, H, W), found {x.dtype} {x.shape}.")
    return torch.from_numpy(x.astype(np.float32) / 127.5 - 1.0)


def train_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int = 3,
                     batch_size: int = 128, lr: float = 2e-3, width: int = 16, seed: int = 0,
                     progress: bool = False) -> SmallCNN:
    """Adam with a cosine learning rate, seeded shuffling; returns the model in eval mode."""
    labels = np.asarray(labels, dtype=np.int64)
    if np.asarray(images).ndim != 4 or images.shape[-1] != images.shape[-2] or images.shape[-1] % 4:
        raise DataError(f"classifier: expected square uint8 images (N, C, S, S) with S a multiple of 4, found {images.shape}.")
    if len(images) != len(labels) or not len(labels):
        raise DataError(f"classifier: {len(images)} images and {len(labels)} labels; expected equal, non-zero.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"classifier: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}.")
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, images.shape[1], width, images.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * int(np.ceil(len(labels) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    rng = np.random.default_rng(seed)
    y_all = torch.from_numpy(labels)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        total = 0.0
        for s in range(0, len(order), batch_size):
            idx = np.sort(order[s : s + batch_size])
            loss = nn.functional.cross_entropy(model(_as_input(images[idx])), y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        if progress:
            print(f"classifier epoch {epoch + 1}/{epochs}: loss {total / len(order):.4f}", flush=True)
    return model.eval()


@torch.no_grad()
def predict_proba(model: SmallCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N, num_classes) float32 softmax probabilities of uint8 images."""
    model.eval()
    out = [torch.softmax(model(_as_input(images[s : s + batch_size])), dim=1).numpy()
           for s in range(0, len(images), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, model.config["num_classes"]), np.float32)


def predict(model: SmallCNN, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """(N,) int64 predicted labels of uint8 images."""
    return predict_proba(model, images, batch_size).argmax(1).astype(np.int64)


def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray) -> float:
    return float((predict(model, images) == np.asarray(labels)).mean())


def training_key(images: np.ndarray, labels: np.ndarray, **hparams: Any) -> str:
    """SHA-256 of the training pixels (with shape), labels and hyperparameters: the cache key."""
    h = hashlib.sha256(str(images.shape).encode())
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).data)
    h.update(json.dumps(hparams, sort_keys=True).encode())
    return h.hexdigest()


def cached_classifier(images: np.ndarray, labels: np.ndarray, num_classes: int, cache_dir: str | os.PathLike,
                      name: str = "classifier", epochs: int = 3, batch_size: int = 128, lr: float = 2e-3,
                      width: int = 16, seed: int = 0, progress: bool = False) -> tuple[SmallCNN, dict[str, Any]]:
    """Train (or load from `cache_dir/NAME-HASH12.pt`) a classifier; info holds the key, path, seconds and
    whether it came from the cache. Weights are loaded with weights_only=True."""
    hp = {"arch": "SmallCNN-v2", "num_classes": num_classes, "epochs": epochs, "batch_size": batch_size, "lr": lr, "width": width,
          "seed": seed, "torch": torch.__version__.split("+")[0]}
    key = training_key(images, labels, **hp)
    path = Path(cache_dir) / f"{name}-{key[:12]}.pt"
    info: dict[str, Any] = {"key": key, "path": str(path), "hparams": hp, "train_images": int(len(labels))}
    if path.is_file():
        model = SmallCNN(num_classes, images.shape[1], width, images.shape[-1])
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        meta = json.loads(path.with_suffix(".json").read_text()) if path.with_suffix(".json").is_file() else {}
        return model.eval(), {**info, "from_cache": True, "train_seconds": meta.get("train_seconds")}
    t0 = time.perf_counter()
    model = train_classifier(images, labels, num_classes, epochs, batch_size, lr, width, seed, progress)
    seconds = time.perf_counter() - t0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)
    write_json_atomic(path.with_suffix(".json"), {**info, "train_seconds": seconds})
    return model, {**info, "from_cache": False, "train_seconds": seconds}
