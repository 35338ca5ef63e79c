"""LPIPS from local files: both weight layouts load exactly, the metric behaves like a distance, bad files are refused.

No real LPIPS weights exist on this machine, so every test builds a randomly initialised network
(fixed seed) and saves it in the layouts users have on disk.
"""

from __future__ import annotations

import copy
import csv
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from rissole.autoencoder import lpips as lpips_mod
from rissole.autoencoder.lpips import LPIPS, VGG16_CONVS
from rissole.autoencoder.train import train_vqgan
from rissole.data import to_model_range
from rissole_runtime.errors import CheckpointError

LIN_KEYS = [f"lin{k}.model.1.weight" for k in range(5)]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """VGG16 is the heaviest thing in the suite; conftest asks for 2 threads, which thrash when the other core is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def net() -> LPIPS:
    torch.manual_seed(1234)
    return LPIPS()


def _torchvision_backbone(model: LPIPS) -> dict[str, torch.Tensor]:
    """What torchvision's vgg16-397923af.pth holds (a tiny stand-in for the 4096-wide classifier)."""
    sd = model.state_dict()
    out = {f"features.{i}.{p}": sd[f"net.slice{s}.{i}.{p}"].clone() for i, (s, _, _) in VGG16_CONVS.items() for p in ("weight", "bias")}
    out["classifier.0.weight"] = torch.zeros(4, 4)
    out["classifier.0.bias"] = torch.zeros(4)
    return out


def _lin_file(model: LPIPS) -> dict[str, torch.Tensor]:
    """What the lpips package's weights/v0.1/vgg.pth (= taming's vgg.pth) holds."""
    return {k: v.clone() for k, v in model.state_dict().items() if k.startswith("lin")}


@pytest.fixture(scope="module")
def files(net: LPIPS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    d = tmp_path_factory.mktemp("lpips")
    full = {k: v.clone() for k, v in net.state_dict().items()}
    full["scaling_layer.shift"] = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)  # as the lpips package saves it
    full["scaling_layer.scale"] = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    paths = {"full": d / "lpips_vgg_full.pth", "vgg": d / "vgg16-397923af.pth", "lin": d / "vgg.pth"}
    torch.save(full, paths["full"])
    torch.save(_torchvision_backbone(net), paths["vgg"])
    torch.save(_lin_file(net), paths["lin"])
    yield paths
    shutil.rmtree(d)  # ~120 MB of random VGG weights


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def images(fmnist_test_300: np.ndarray) -> torch.Tensor:
    return to_model_range(fmnist_test_300[:16])  # (16, 1, 32, 32) real garments in [-1, 1]


def _noisy(x: torch.Tensor, std: float, seed: int = 0) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------ loading both layouts
def test_both_layouts_load_with_identical_outputs(net: LPIPS, files: dict[str, Path], images: torch.Tensor) -> None:
    y = _noisy(images, 0.3)
    with torch.no_grad():
        ref = net(images, y)
        for spec in (
            files["full"],
            str(files["full"]),
            [files["vgg"], files["lin"]],
            [str(files["lin"]), str(files["vgg"])],  # any order
            {"vgg": str(files["vgg"]), "lin": str(files["lin"])},
        ):
            loaded = LPIPS.from_files(spec)
            assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
            assert torch.equal(loaded(images, y), ref), spec
    assert ref.shape == (16, 1, 1, 1)


def test_other_saved_forms_load(net: LPIPS, scratch: Path, images: torch.Tensor) -> None:
    """A taming VQ-GAN .ckpt (its loss.perceptual_loss.*), safetensors, `lins.k` / use_dropout=False lin names."""
    sd = net.state_dict()
    state = {f"loss.perceptual_loss.{k}": v for k, v in sd.items()}
    state["encoder.conv_in.weight"] = torch.zeros(8, 3, 3, 3)
    state["loss.discriminator.main.0.weight"] = torch.zeros(8, 3, 4, 4)
    torch.save({"state_dict": state, "global_step": 7}, scratch / "last.ckpt")
    save_file(_torchvision_backbone(net), str(scratch / "vgg16.safetensors"))
    lins = {f"lins.{k}.model.1.weight": sd[f"lin{k}.model.1.weight"] for k in range(5)}
    torch.save({**_lin_file(net), **lins}, scratch / "lin_both_names.pth")  # newer lpips: lin0.* and lins.0.*
    torch.save({f"lin{k}.model.0.weight": sd[f"lin{k}.model.1.weight"] for k in range(5)}, scratch / "lin_nodrop.pth")
    y = _noisy(images[:4], 0.3)
    with torch.no_grad():
        ref = net(images[:4], y)
        for spec in (
            scratch / "last.ckpt",
            [scratch / "vgg16.safetensors", scratch / "lin_both_names.pth"],
            [scratch / "vgg16.safetensors", scratch / "lin_nodrop.pth"],
        ):
            assert torch.equal(LPIPS.from_files(spec)(images[:4], y), ref), spec


def test_matches_a_functional_reimplementation(files: dict[str, Path], images: torch.Tensor) -> None:
    """Re-derive LPIPS from the torchvision-layout tensors: relu1_2 ... relu5_3, scaling, unit norm, lin, mean."""
    vgg = torch.load(files["vgg"], weights_only=True)
    lin = torch.load(files["lin"], weights_only=True)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x: torch.Tensor) -> list[torch.Tensor]:
        h, out = (x.repeat(1, 3, 1, 1) - shift) / scale, []
        for block in ([0, 2], [5, 7], [10, 12, 14], [17, 19, 21], [24, 26, 28]):
            if block[0]:
                h = F.max_pool2d(h, 2)
            for i in block:
                h = F.relu(F.conv2d(h, vgg[f"features.{i}.weight"], vgg[f"features.{i}.bias"], padding=1))
            out.append(h)
        return out

    x, y = images[:4], _noisy(images[:4], 0.2)
    want = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        want = want + ((a - b) ** 2 * lin[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)).sum(1).mean((1, 2))
    with torch.no_grad():
        got = LPIPS.from_files([files["vgg"], files["lin"]])(x, y).flatten()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ metric properties
def test_distance_properties(net: LPIPS, images: torch.Tensor) -> None:
    x, y = images, _noisy(images, 0.2)
    with torch.no_grad():
        assert torch.equal(net(x, x), torch.zeros(16, 1, 1, 1))
        dxy, dyx = net(x, y), net(y, x)
        assert torch.equal(dxy, dyx)
        assert (dxy > 0).all()
        rgb = net(x.repeat(1, 3, 1, 1), y.repeat(1, 3, 1, 1))
    assert torch.equal(rgb, dxy)  # grey is the same image repeated to 3 channels


def test_more_noise_gives_larger_distance(net: LPIPS, images: torch.Tensor) -> None:
    """For every image, distance grows with the noise std (same noise direction, scaled).

    Empirically (3 seeds of the random network, 32 images) each step below at least doubles the
    distance, so the per-image ordering has a wide margin. At small noise the distance is quadratic
    in the std, since it is a sum of *squared* feature differences around its zero minimum at y = x:
    doubling a small std multiplies it by ~4 (an absolute difference would give ~2).
    """
    stds = [0.05, 0.1, 0.2, 0.4, 0.8]
    with torch.no_grad():
        d = torch.stack([net(images, _noisy(images, s)).flatten() for s in stds])  # (levels, images)
        small = [net(images[:4], _noisy(images[:4], s)).flatten() for s in (0.005, 0.01)]
    assert (d[1:] > d[:-1]).all(), d.mean(1)
    assert (d[1:].mean(1) > 1.5 * d[:-1].mean(1)).all(), d.mean(1)
    ratio = small[1] / small[0]
    assert ((ratio > 3.5) & (ratio < 4.5)).all(), ratio


def test_gradients_reach_input_not_weights(net: LPIPS, images: torch.Tensor) -> None:
    x = images[:4].clone().requires_grad_(True)
    y = _noisy(images[:4], 0.2)
    net(x, y).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training  # a fixed metric: stays in eval mode


def test_all_zero_features_under_fp16_autocast(net: LPIPS, images: torch.Tensor) -> None:
    """A layer whose ReLU output is all zero (here relu5_3, by zeroing its conv) normalises 0 / (0 + 1e-10).

    Under fp16 autocast (the trainer's mode on 7.x GPUs) 1e-10 underflows and that becomes 0 / 0 = NaN
    unless the normalisation runs in float32; the gradient must stay finite too.
    """
    dead = copy.deepcopy(net)
    with torch.no_grad():
        dead.net.slice5[-2].weight.zero_()
        dead.net.slice5[-2].bias.zero_()
    x, y = images[:2], _noisy(images[:2], 0.1)
    ref = dead(x, y).detach()
    for dtype in (torch.float16, torch.bfloat16):
        xg = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=dtype):
            d = dead(xg, y)
        d.sum().backward()
        assert torch.isfinite(d).all() and torch.isfinite(xg.grad).all(), dtype
        torch.testing.assert_close(d.float().detach(), ref, rtol=0.05, atol=0.0)


def test_rejects_bad_inputs(net: LPIPS) -> None:
    with pytest.raises(ValueError, match="at least 16x16"):
        net(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="1 or 3"):
        net(torch.zeros(1, 2, 32, 32), torch.zeros(1, 2, 32, 32))


# ------------------------------------------------------------------ bad files
def test_missing_file_says_no_download(scratch: Path) -> None:
    with pytest.raises(CheckpointError) as err:
        LPIPS.from_files(scratch / "nope" / "vgg.pth")
    msg = str(err.value)
    assert str(scratch / "nope" / "vgg.pth") in msg and "cannot be downloaded" in msg and "local file" in msg


def test_wrong_shape_and_missing_key_are_named(net: LPIPS, files: dict[str, Path], scratch: Path) -> None:
    backbone = _torchvision_backbone(net)
    backbone["features.5.weight"] = torch.zeros(128, 32, 3, 3)
    torch.save(backbone, scratch / "bad_vgg.pth")
    lin = _lin_file(net)
    del lin["lin3.model.1.weight"]
    torch.save(lin, scratch / "bad_lin.pth")
    with pytest.raises(CheckpointError) as err:
        LPIPS.from_files([scratch / "bad_vgg.pth", files["lin"]])
    msg = str(err.value)
    assert "features.5.weight in bad_vgg.pth: expected (128, 64, 3, 3), found (128, 32, 3, 3)" in msg
    assert "Fix:" in msg
    with pytest.raises(CheckpointError) as err:
        LPIPS.from_files([files["vgg"], scratch / "bad_lin.pth"])
    msg = str(err.value)
    assert "missing keys: lin3.model.1.weight" in msg and "bad_lin.pth" in msg


def test_half_of_layout_b_says_what_is_missing(files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="only the LPIPS lin layers; also give the VGG16 backbone"):
        LPIPS.from_files(files["lin"])
    with pytest.raises(CheckpointError, match="only the VGG16 backbone; also give the LPIPS v0.1 lin file"):
        LPIPS.from_files(files["vgg"])


def test_unknown_keys_are_refused(net: LPIPS, files: dict[str, Path], scratch: Path) -> None:
    lin = _lin_file(net)
    lin["lin5.model.1.weight"] = torch.zeros(1, 512, 1, 1)  # a squeezenet LPIPS file
    torch.save(lin, scratch / "squeeze.pth")
    with pytest.raises(CheckpointError, match=r"unexpected keys: lin5\.model\.1\.weight \(squeeze\.pth\)"):
        LPIPS.from_files([files["vgg"], scratch / "squeeze.pth"])


class _Payload:
    def __reduce__(self):  # would run code when unpickled without weights_only
        return (print, ("executed",))


def test_pickled_object_is_refused(net: LPIPS, scratch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.save({**_lin_file(net), "hook": _Payload()}, scratch / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        LPIPS.from_files(scratch / "evil.pth")
    assert "executed" not in capsys.readouterr().out


# ------------------------------------------------------------------ VQ-GAN training
def test_vqgan_training_uses_lpips(
    files: dict[str, Path], net: LPIPS, scratch: Path, tiny_vqgan_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[torch.Tensor] = []
    forward = lpips_mod.LPIPS.forward

    def spy(self: LPIPS, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = forward(self, x, y)
        seen.append(out)
        return out

    monkeypatch.setattr(lpips_mod.LPIPS, "forward", spy)
    cfg = tiny_vqgan_config
    cfg["data"] = {"source": "fmnist:train", "limit": 32}
    cfg["train"].update(
        steps=3, batch_size=4, disc_start=None, ema_decay=None, perceptual_weight=10.0,
        lpips_weights=[str(files["vgg"]), str(files["lin"])],
    )  # fmt: skip
    trainer = train_vqgan(cfg, scratch / "run", progress=False)
    assert trainer.step == 3 and len(seen) == 3
    assert all(s.requires_grad for s in seen)  # the term is part of the graph the decoder is trained through
    with open(scratch / "run" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    for row, lp in zip(rows, seen):
        perceptual = 10.0 * float(lp.detach().mean())
        assert perceptual > 0
        rest = float(row["loss"]) - float(row["rec_l1"]) - float(row["codebook"])
        assert rest == pytest.approx(perceptual, rel=1e-3, abs=1e-5), (row, perceptual)
    for k, v in net.state_dict().items():  # frozen: the optimizer never touched it
        assert torch.equal(trainer.lpips.state_dict()[k], v), k
