"""onnxruntime sessions for a bundle's models: execution providers tried in order, the one used reported.

Order: TensorRT, CUDA, CPU (where the installed onnxruntime build has them). TensorRT keeps the
normalisation layers in fp32 and caches its engines beside the bundle.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import onnxruntime as ort

from rissole_runtime.errors import DataError, RissoleError

ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
ALIASES = {"auto": None, "tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
           "cpu": "CPUExecutionProvider"}


def providers_for(choice: str, cache_dir: Path | None = None, fp16: bool = False) -> list[Any]:
    """The provider list to hand to onnxruntime for --provider `choice` (auto: every available one, in ORDER)."""
    if choice not in ALIASES:
        raise RissoleError(f"--provider must be one of {sorted(ALIASES)}, found {choice!r}")
    available = ort.get_available_providers()
    wanted = [p for p in ORDER if p in available] if ALIASES[choice] is None else [ALIASES[choice]]
    if wanted[0] not in available:
        raise RissoleError(f"execution provider {wanted[0]} is not in this onnxruntime build (available: "
                           f"{', '.join(available)}). Install onnxruntime-gpu on a CUDA machine, or pass --provider cpu.")
    out: list[Any] = []
    for p in wanted:
        if p == "TensorrtExecutionProvider":
            opts = {"trt_fp16_enable": True, "trt_layer_norm_fp32_fallback": True}
            if cache_dir is not None:
                opts.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir),
                            trt_timing_cache_enable=True)
            out.append((p, opts))
        else:
            out.append(p)
    if "CPUExecutionProvider" not in wanted:
        out.append("CPUExecutionProvider")  # ops a GPU provider does not take fall back to the CPU
    return out


def open_session(path: Path, providers: list[Any], threads: int | None = None) -> ort.InferenceSession:
    """A session on `path`; threads=None lets onnxruntime pick (one per physical core)."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
        raise DataError(f"{path}: onnxruntime cannot load the model ({str(exc).splitlines()[0]}). "
                        "Re-export the bundle with `rissole-export`.") from exc


def check_inputs(session: ort.InferenceSession, path: Path, spec: dict[str, dict[str, Any]]) -> None:
    """The model's inputs must be the manifest's (names and non-batch dimensions)."""
    found = {i.name: i.shape[1:] for i in session.get_inputs()}
    want = {name: v["shape"][1:] for name, v in spec.items()}
    if found != want:
        raise DataError(f"{path}: model inputs {found}, the bundle manifest expects {want}: the model belongs to "
                        "another export. Re-export the bundle with `rissole-export`.")


def used_provider(session: ort.InferenceSession) -> str:
    return session.get_providers()[0]


def default_threads() -> int | None:
    """OMP_NUM_THREADS when set (the house rule on shared machines), else onnxruntime's choice."""
    value = os.environ.get("OMP_NUM_THREADS")
    return int(value) if value and value.isdigit() and int(value) > 0 else None
