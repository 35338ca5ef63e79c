"""Check an exported model: onnx.checker, then onnxruntime against PyTorch on real inputs.

The export fails when the maximum absolute difference exceeds the tolerance (1e-4 in fp32: the
two frameworks only reorder float sums; more means an op was exported wrongly).
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

from rissole.errors import RissoleError

TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}  # fp16: weights and activations between fp32 norm layers rounded to fp16


class ParityError(RissoleError):
    """An exported model computes something else than the PyTorch model it came from."""


def cpu_session(path: str | os.PathLike, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(path: str | os.PathLike, feeds: dict[str, np.ndarray], reference: Callable[[], np.ndarray],
                 tolerance: float, what: str) -> float:
    """Run onnx.checker and compare onnxruntime's output with `reference()`; returns the max abs difference."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ParityError(f"{path}: onnx.checker rejects the exported {what}: {exc}") from exc
    got = cpu_session(path).run(None, feeds)[0]
    ref = np.asarray(reference())
    if got.shape != ref.shape:
        raise ParityError(f"{path}: the exported {what} returns shape {list(got.shape)}, PyTorch {list(ref.shape)}.")
    diff = float(np.abs(got.astype(np.float64) - ref.astype(np.float64)).max())
    if not diff <= tolerance:
        raise ParityError(f"{path}: onnxruntime and PyTorch differ by {diff:.3g} (max abs) on real inputs for the "
                          f"{what}, above the tolerance {tolerance:g}. Report the model configuration; try another --opset.")
    return diff
