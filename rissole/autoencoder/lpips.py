"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), VGG16 v0.1.

Plain torch, no torchvision, and no downloads: the weights are read from local files only.

    d(x, y) = sum_l  mean_{h,w}  w_l . ( n(F_l(s(x))) - n(F_l(s(y))) )^2

s     the scaling layer, (x - shift) / scale with shift = (-.030, -.088, -.188), scale = (.458, .448, .450);
F_l   VGG16 features at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (64, 128, 256, 512, 512 channels);
n     unit normalisation along channels, f / (||f||_2 + 1e-10);
w_l   the learned non-negative 1x1 "lin" weights of layer l (no bias; the dropout of training is absent).

Inputs are images in [-1, 1] with 1 (repeated to 3) or 3 channels, at least 16x16 (four 2x2 max-pools
come before relu5_3). The result has shape (N, 1, 1, 1), like the lpips package and taming.

Weight files (`LPIPS.from_files`), read with `torch.load(weights_only=True)` or as .safetensors:

(a) one file with the whole LPIPS state dict, as saved by the lpips package or taming
    (`net.slice{1..5}.{i}.{weight,bias}` + `lin{0..4}.model.1.weight`), optionally wrapped in
    {"state_dict": ...}; a taming / latent-diffusion VQ-GAN .ckpt works too (its `loss.perceptual_loss.*`).
(b) a torchvision VGG16 backbone (`vgg16-397923af.pth`: `features.{0,2,5,...,28}.{weight,bias}`;
    `classifier.*` is ignored) plus an LPIPS lin file (lpips' `weights/v0.1/vgg.pth` or taming's
    `vgg.pth`: `lin{0..4}.model.1.weight` only), given as a list of two paths in any order, or a dict
    of them, e.g. {"vgg": ..., "lin": ...}.

Also accepted for the lin layers: `lins.{k}.model.1.weight` (newer lpips keeps both names) and
`lin{k}.model.0.weight` (built with use_dropout=False). `scaling_layer.*` keys are ignored: the
constants are fixed by the method.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

import torch
from torch import nn

from rissole.checkpoint import load_foreign_state_dict, mismatch_report
from rissole_runtime.errors import CheckpointError

PathLike = Union[str, os.PathLike]
WeightsSpec = Union[PathLike, Sequence[PathLike], Mapping[str, PathLike]]

CHANNELS = (64, 128, 256, 512, 512)
# torchvision's vgg16().features: conv index -> (slice, in, out). A 2x2 max-pool sits at 4, 9, 16, 23, 30;
# each slice ends at the ReLU after its last conv (relu1_2 = 3, relu2_2 = 8, relu3_3 = 15, relu4_3 = 22, relu5_3 = 29).
VGG16_CONVS: dict[int, tuple[int, int, int]] = {
    0: (1, 3, 64), 2: (1, 64, 64),
    5: (2, 64, 128), 7: (2, 128, 128),
    10: (3, 128, 256), 12: (3, 256, 256), 14: (3, 256, 256),
    17: (4, 256, 512), 19: (4, 512, 512), 21: (4, 512, 512),
    24: (5, 512, 512), 26: (5, 512, 512), 28: (5, 512, 512),
}  # fmt: skip
SLICE_RANGES = {1: range(0, 4), 2: range(4, 9), 3: range(9, 16), 4: range(16, 23), 5: range(23, 30)}
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 16

_HINT_FILES = (
    "LPIPS needs the VGG16 backbone and the LPIPS v0.1 linear layers: either one file with the whole LPIPS "
    "state dict (net.slice*/lin*), or two files: torchvision's vgg16-397923af.pth and the lpips package's "
    "weights/v0.1/vgg.pth (= taming's vgg.pth), e.g. train.lpips_weights: [vgg16-397923af.pth, vgg.pth]."
)


def _vgg_slice(index_range: range) -> nn.Sequential:
    """Layers `index_range` of VGG16's feature stack, under their torchvision indices (as the lpips package names them)."""
    seq = nn.Sequential()
    for i in index_range:
        if i in VGG16_CONVS:
            _, cin, cout = VGG16_CONVS[i]
            seq.add_module(str(i), nn.Conv2d(cin, cout, kernel_size=3, padding=1))
        elif i - 1 in VGG16_CONVS:
            seq.add_module(str(i), nn.ReLU())
        else:
            seq.add_module(str(i), nn.MaxPool2d(kernel_size=2, stride=2))
    return seq


class VGG16Features(nn.Module):
    """VGG16 conv layers up to relu5_3, returning the five LPIPS taps."""

    def __init__(self) -> None:
        super().__init__()
        self.slice1 = _vgg_slice(SLICE_RANGES[1])
        self.slice2 = _vgg_slice(SLICE_RANGES[2])
        self.slice3 = _vgg_slice(SLICE_RANGES[3])
        self.slice4 = _vgg_slice(SLICE_RANGES[4])
        self.slice5 = _vgg_slice(SLICE_RANGES[5])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in (self.slice1, self.slice2, self.slice3, self.slice4, self.slice5):
            x = block(x)
            taps.append(x)
        return taps


class LinLayer(nn.Module):
    """A 1x1 conv to one channel without bias, stored as `model.1.weight` (index 0 was the training dropout)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential()
        self.model.add_module("1", nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def normalize_channels(f: torch.Tensor) -> torch.Tensor:
    """f / (||f||_2 over channels + eps), per sample and location."""
    return f / (f.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; differentiable w.r.t. its inputs, never trained.

    A freshly built instance has random backbone weights and random non-negative lin weights (for
    tests); use `LPIPS.from_files` for the real metric.
    """

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        self.lin0, self.lin1, self.lin2, self.lin3, self.lin4 = (LinLayer(c) for c in CHANNELS)
        with torch.no_grad():
            for lin, c in zip(self.lins, CHANNELS):  # trained lin weights are clamped >= 0
                lin.model[0].weight.uniform_(0.0, 2.0 / c)
        self.requires_grad_(False)
        self.eval()

    @property
    def lins(self) -> list[LinLayer]:
        return [self.lin0, self.lin1, self.lin2, self.lin3, self.lin4]

    def train(self, mode: bool = True) -> LPIPS:
        """Always in eval mode: LPIPS is a fixed metric."""
        return super().train(False)

    def _prepare(self, x: torch.Tensor, name: str) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS: {name} must be (N, 1 or 3, H, W) images in [-1, 1], got shape {tuple(x.shape)}")
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"LPIPS: images must be at least {MIN_SIZE}x{MIN_SIZE} (VGG16 pools 4 times), got {tuple(x.shape[-2:])}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return (x.to(self.shift.dtype) - self.shift) / self.scale

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image pair, shape (N, 1, 1, 1)."""
        if x.shape != y.shape:
            raise ValueError(f"LPIPS: inputs differ in shape, {tuple(x.shape)} vs {tuple(y.shape)}")
        fx = self.net(self._prepare(x, "x"))
        fy = self.net(self._prepare(y, "y"))
        total = None
        for a, b, lin in zip(fx, fy, self.lins):
            # normalise in float32 even under fp16 autocast, where eps = 1e-10 would underflow (0 / 0 = NaN)
            with torch.autocast(a.device.type, enabled=False):
                diff = (normalize_channels(a.float()) - normalize_channels(b.float())) ** 2
                d = lin(diff.to(lin.model[0].weight.dtype)).mean(dim=(2, 3), keepdim=True)
            total = d if total is None else total + d
        return total

    # ------------------------------------------------------------ loading
    @classmethod
    def from_files(cls, weights: WeightsSpec) -> LPIPS:
        """Build LPIPS from local weight files (see the module docstring for the layouts)."""
        paths = _as_paths(weights)
        model = cls()
        expected = model.state_dict()
        found: dict[str, torch.Tensor] = {}
        origin: dict[str, tuple[Path, str]] = {}  # canonical key -> (file, key in that file)
        unexpected: list[str] = []
        for path in paths:
            if not path.exists():
                raise CheckpointError(
                    f"{path}: LPIPS weights file not found. LPIPS weights cannot be downloaded here; they must be given "
                    f"as local files. {_HINT_FILES} Or set train.lpips_weights to null to train without LPIPS."
                )
            if not path.is_file():
                raise CheckpointError(f"{path}: is not a file. {_HINT_FILES}")
            state = _strip_prefix(load_foreign_state_dict(path))
            for key, tensor in state.items():
                canon = _canonical_key(key)
                if canon is None:
                    continue
                if canon not in expected:
                    unexpected.append(f"{key} ({path.name})")
                    continue
                if canon in found:
                    if found[canon].shape == tensor.shape and torch.equal(found[canon], tensor.to(found[canon].dtype)):
                        continue  # e.g. lin0.* and lins.0.* in the same file
                    prev_file, prev_key = origin[canon]
                    raise CheckpointError(
                        f"{path}: {key} conflicts with {prev_key} in {prev_file} (both give {canon}, with different "
                        f"values). Pass each part of the LPIPS weights once."
                    )
                found[canon] = tensor
                origin[canon] = (path, key)
        names = ", ".join(str(p) for p in paths)
        missing = [k for k in expected if k not in found]
        shapes = [
            f"{origin[k][1]} in {origin[k][0].name}: expected {tuple(v.shape)}, found {tuple(found[k].shape)}"
            + (f" (as {k})" if origin[k][1] != k else "")
            for k, v in expected.items()
            if k in found and found[k].shape != v.shape
        ]
        if missing or shapes or unexpected:
            raise CheckpointError(mismatch_report(
                f"{names}: not VGG16 LPIPS v0.1 weights.", shapes, missing, unexpected, _fix_hint(missing, expected)
            ))
        model.load_state_dict({k: found[k].to(v.dtype) for k, v in expected.items()}, strict=True)
        model.requires_grad_(False)
        return model.eval()


def _as_paths(weights: WeightsSpec) -> list[Path]:
    if isinstance(weights, (str, os.PathLike)):
        items: list[PathLike] = [weights]
    elif isinstance(weights, Mapping):
        items = list(weights.values())
    elif isinstance(weights, Sequence):
        items = list(weights)
    else:
        raise CheckpointError(f"lpips_weights must be a path, a list of paths or a dict of paths, got {type(weights).__name__}.")
    if not items or not all(isinstance(p, (str, os.PathLike)) for p in items):
        raise CheckpointError(f"lpips_weights must name one or two weight files, got {weights!r}. {_HINT_FILES}")
    return [Path(p).expanduser() for p in items]


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keep only the LPIPS part of a VQ-GAN training checkpoint; drop a DataParallel `module.` prefix."""
    for prefix in ("loss.perceptual_loss.", "perceptual_loss."):
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module.") :]: v for k, v in state.items()}
    return state


_FEATURES = re.compile(r"features\.(\d+)\.(weight|bias)")
_LIN = re.compile(r"(?:lin(\d)|lins\.(\d))\.model\.([01])\.weight")


def _canonical_key(key: str) -> str | None:
    """Map a file's key to this module's name; None for keys that are ignored; unknown keys unchanged."""
    if key.startswith(("classifier.", "scaling_layer.")):
        return None
    m = _FEATURES.fullmatch(key)
    if m and int(m.group(1)) in VGG16_CONVS:
        return f"net.slice{VGG16_CONVS[int(m.group(1))][0]}.{m.group(1)}.{m.group(2)}"
    m = _LIN.fullmatch(key)
    if m:
        return f"lin{m.group(1) or m.group(2)}.model.1.weight"
    return key


def _fix_hint(missing: list[str], expected: Mapping[str, torch.Tensor]) -> str:
    net_keys = {k for k in expected if k.startswith("net.")}
    lin_keys = set(expected) - net_keys
    if missing and set(missing) == net_keys:
        return (
            "these hold only the LPIPS lin layers; also give the VGG16 backbone (torchvision's vgg16-397923af.pth or "
            "a whole LPIPS state dict), e.g. train.lpips_weights: [vgg16-397923af.pth, vgg.pth]."
        )
    if missing and set(missing) == lin_keys:
        return (
            "these hold only the VGG16 backbone; also give the LPIPS v0.1 lin file (the lpips package's "
            "weights/v0.1/vgg.pth or taming's vgg.pth), e.g. train.lpips_weights: [vgg16-397923af.pth, vgg.pth]."
        )
    return _HINT_FILES + " Only the VGG16 variant of LPIPS is supported (not alex/squeeze, not vgg16_bn)."
