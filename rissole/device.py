"""Device and precision policy: CUDA when present, mixed precision only where the GPU makes it fast."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from rissole_runtime.errors import RissoleError


def pick_device(preference: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cuda' without a GPU is an error that says so."""
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if preference.startswith("cuda") and not torch.cuda.is_available():
        raise RissoleError(
            f"--device {preference}: no CUDA GPU is visible to PyTorch (torch {torch.__version__}, "
            f"built with CUDA {torch.version.cuda}). Use --device cpu or auto."
        )
    return torch.device(preference)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on compute capability 8.0+, fp16 on 7.x (tensor cores), None (fp32) elsewhere.

    A GTX 1080 Ti (6.1) has no fast fp16 path, so it trains in fp32.
    """
    if device.type != "cuda":
        return None
    major, _ = torch.cuda.get_device_capability(device)
    if major >= 8:
        return torch.bfloat16
    if major == 7:
        return torch.float16
    return None


def autocast(device: torch.device, dtype: torch.dtype | None) -> ContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling is needed for fp16 only; disabled (a no-op) otherwise."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
