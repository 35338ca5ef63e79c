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

from rissole_runtime.errors import RissoleError

# fp16: weights and activations between fp32 norm layers rounded to fp16. int8: a bound that only catches a
# broken quantization (the shipped model's eps differs by up to 1.8 on real inputs); what int8 costs is
# reported at the sample level (pixel difference of fp32 vs int8 images, and FID in benchmarks/)
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5.0}


def scaled_tolerance(precision: str, reference: np.ndarray) -> float:
    """TOLERANCE[precision], widened in fp16 to 4 fp16 ulps of the largest |reference| value: unbounded
    outputs (RARM's logits reach 16, where one fp16 ulp is 0.016) cannot round closer than that. Outputs
    within |4| (eps, pixels) keep the plain tolerance."""
    tol = TOLERANCE[precision]
    if precision == "fp16":
        tol = max(tol, 4.0 * float(np.spacing(np.float16(np.abs(reference).max()))))
    return tol


class ParityError(RissoleError):
    """An exported model computes something else than the PyTorch model it came from."""


def cpu_session(path: str | os.PathLike, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_parity(path: str | os.PathLike, feeds: dict[str, np.ndarray], reference: Callable[[], np.ndarray],
                 tolerance: float, what: str) -> float:
    """Run onnx.checker and compare onnxruntime's outputs with `reference()` (one array, or a list for the
    first outputs in order); returns the max abs difference."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ParityError(f"{path}: onnx.checker rejects the exported {what}: {exc}") from exc
    ref = reference()
    refs = [np.asarray(r) for r in ref] if isinstance(ref, (list, tuple)) else [np.asarray(ref)]
    gots = cpu_session(path).run(None, feeds)[: len(refs)]
    diff = 0.0
    for got, want in zip(gots, refs):
        if got.shape != want.shape:
            raise ParityError(f"{path}: the exported {what} returns shape {list(got.shape)}, PyTorch {list(want.shape)}.")
        diff = max(diff, float(np.abs(got.astype(np.float64) - want.astype(np.float64)).max()))
    if not diff <= tolerance:
        raise ParityError(f"{path}: onnxruntime and PyTorch differ by {diff:.3g} (max abs) on real inputs for the "
                          f"{what}, above the tolerance {tolerance:g}. Report the model configuration; try another --opset.")
    return diff
