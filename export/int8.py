"""int8 denoiser: onnxruntime static quantization calibrated on real database rows at real timesteps.

Static quantization fixes every activation's int8 range ahead of time from calibration inputs, so
those inputs must look like what the sampler feeds the network: here, real rows of the bundle's
database (their blocks or latents, noised by q(x_t | x_0)) with their real table neighbours, at the
timesteps the bundle's default sampler visits, with the zero-conditioned half that guidance adds
(onnxruntime.quantization.CalibrationDataReader over real_denoiser_inputs). Weights are int8 per
output channel, activations uint8, QDQ format (Conv, MatMul and Gemm only: normalisation layers
and the rest stay float, as fp16 export keeps them fp32). A database with fewer rows than the
calibration needs is refused rather than calibrated on too little.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rissole.errors import DataError

QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


class RowCalibration:
    """CalibrationDataReader over real denoiser inputs: `rows` database rows, `batch` rows per feed."""

    def __init__(self, src: Any, rows: int, timesteps: np.ndarray, batch: int = 8, seed: int = 0) -> None:
        from rissole_export.sources import real_denoiser_inputs

        if src.db.rows < rows:
            raise DataError(f"{src.db.path}: int8 calibration needs {rows} real database rows, the database holds "
                            f"{src.db.rows}. Export from a database with at least {rows} rows, or lower "
                            "--int8-calibration-rows.")
        self.feeds = [real_denoiser_inputs(src, min(batch, rows - s), seed + s, timesteps)
                      for s in range(0, rows, batch)]
        self._it = iter(self.feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self.feeds)


def quantize_denoiser(fp32_path: Path, out_path: Path, calibration: RowCalibration) -> dict[str, Any]:
    """Write the int8 (QDQ) model of `fp32_path` to `out_path`; returns the manifest's precision facts."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def get_next(self) -> dict[str, np.ndarray] | None:
            return calibration.get_next()

    calibration.rewind()
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's advice to pre-process (shape inference) is logged at WARNING
    try:
        quantize_static(str(fp32_path), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS))
    finally:
        root.setLevel(level)
    return {"precision": "int8", "int8": {"method": "onnxruntime quantize_static, QDQ, MinMax calibration",
                                          "weights": "int8 per channel", "activations": "uint8",
                                          "ops": list(QUANTIZED_OPS),
                                          "calibration": f"{sum(len(f['x']) for f in calibration.feeds) // 2} real "
                                                         "denoiser inputs (database rows noised at the default "
                                                         "sampler's timesteps) and their zero-conditioned copies"}}


def sample_parity(bundle: Path, fp32_path: Path, n: int = 16, seed: int = 0) -> dict[str, Any]:
    """The same n samples (rows, noise, default sampler) through the fp32 and the int8 denoiser: pixel
    differences of the decoded uint8 images, the figure a user sees."""
    from rissole_runtime.bundle import open_bundle
    from rissole_runtime.sampler import EdgeSampler
    from rissole_runtime.session import open_session

    b = open_bundle(bundle)
    recorded = b.manifest["sampler"]
    edge = EdgeSampler(b, "cpu", threads=None)
    int8, _ = edge.generate(n, int(recorded["num_steps"]), seed, sampler=recorded["kind"])
    edge.denoiser = open_session(fp32_path, edge.providers, None)
    fp32, _ = edge.generate(n, int(recorded["num_steps"]), seed, sampler=recorded["kind"])
    d = np.abs(int8.astype(int) - fp32.astype(int))
    return {"images": n, "sampler": f"{recorded['kind']}-{recorded['num_steps']}", "seed": seed,
            "max_abs_pixel_diff": int(d.max()), "mean_abs_pixel_diff": float(d.mean()),
            "fraction_within_2_grey_levels": float((d <= 2).mean())}
