"""Shared fixtures: small real data (Fashion-MNIST) and a tiny VQ-GAN config the tests train themselves."""

from __future__ import annotations

import copy
import os
from typing import Any

import numpy as np
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "2")
torch.set_num_threads(2)

TINY_VQGAN: dict[str, Any] = {
    "model": {
        "ddconfig": {
            "double_z": False,
            "z_channels": 4,
            "resolution": 32,
            "in_channels": 1,
            "out_ch": 1,
            "ch": 32,
            "ch_mult": [1, 1],
            "num_res_blocks": 1,
            "attn_resolutions": [],
            "dropout": 0.0,
        },
        "embed_dim": 4,
        "n_embed": 64,
        "beta": 0.25,
        "legacy": False,
    },
    "data": {"source": "fmnist:train", "val_source": "fmnist:test", "limit": 256},
    "train": {
        "steps": 40,
        "batch_size": 16,
        "lr": 1.0e-3,
        "betas": [0.9, 0.99],
        "warmup_steps": 5,
        "seed": 3,
        "ema_decay": 0.9,
        "disc_start": 20,
        "disc_weight": 0.5,
        "disc_ndf": 8,
        "disc_layers": 2,
        "restart_dead_codes_every": 7,
        "ckpt_every": 1000,
        "val_every": 1000,
        "val_images": 64,
    },
}


@pytest.fixture
def tiny_vqgan_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_VQGAN)


@pytest.fixture(scope="session")
def fmnist_test_300() -> np.ndarray:
    from rissole.data import load_source

    return load_source("fmnist:test", limit=300).images
