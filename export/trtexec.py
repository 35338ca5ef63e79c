"""The engine plan of a bundle (profile shapes, fp32 layers) and the equivalent `trtexec` command line.

The same plan drives the TensorRT Python API builder (rissole_export.tensorrt_build) and the
command printed where TensorRT or a GPU is missing, so both build the same engine on the device.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from rissole_export.bundle_writer import DECODER_FP32_SCOPES, DENOISER_FP32_ROOTS
from rissole_export.onnx_io import fp32_nodes, trt_fp32_layers
from rissole_export.rarm_parts import RARM_FP32_ROOTS
from rissole_runtime.bundle import BUNDLE_KINDS, CONTEXT, DECODER, DENOISER, STEP, model_kind

DEFAULT_WORKSPACE_MB = 1024  # leaves room on an 8 GB Jetson shared between CPU and GPU


@dataclass
class EnginePlan:
    """Everything a TensorRT build of one ONNX file needs."""

    onnx_path: Path
    engine_path: Path
    shapes: dict[str, tuple[list[int], list[int], list[int]]]  # input -> (min, opt, max)
    fp16: bool
    fp32_layers: list[str] = field(default_factory=list)
    workspace_mb: int = DEFAULT_WORKSPACE_MB
    timing_cache: Path | None = None
    # an int8 (QDQ) graph from `rissole-export --int8`: TensorRT takes its scales from the Q/DQ nodes
    # (explicit quantization), so no calibration cache is needed, only the INT8 flag
    int8: bool = False


def _shape(spec: list[Any], batch: int, vectors: int) -> list[int]:
    """A manifest shape at a batch size; an RDM denoiser's free neighbour axis ("vectors") at `vectors`."""
    return [batch if d == "batch" else vectors if d == "vectors" else int(d) for d in spec]


def engine_plans(bundle: Path, manifest: dict[str, Any], fp16: bool = True, workspace_mb: int = DEFAULT_WORKSPACE_MB,
                 timing_cache: Path | None = None) -> list[EnginePlan]:
    """Plans for the sampling networks (denoiser: batch b .. max_samples * b * 2; RARM's context and step:
    1 .. max_samples * 2) and the decoder (1 .. max_samples)."""
    batch = manifest["batch"]
    sampling = (batch["min"], batch["opt"], batch["max"])
    model = manifest["model"]
    vectors = (1, int(model["k"]) + int(bool(model.get("own_embedding"))))  # a prompt's text alone .. the model's own
    if not BUNDLE_KINDS[model_kind(manifest)].diffusion:
        parts = [(CONTEXT, "context", sampling, (RARM_FP32_ROOTS, ())), (STEP, "step", sampling, (RARM_FP32_ROOTS, ()))]
    else:
        parts = [(DENOISER, "denoiser", sampling, (DENOISER_FP32_ROOTS, ()))]
    parts.append((DECODER, "decoder", (1, batch["max_samples"], batch["max_samples"]), (("",), DECODER_FP32_SCOPES)))
    plans = []
    for name, section, (lo, opt, hi), (roots, extra) in parts:
        shapes = {k: (_shape(v["shape"], lo, vectors[0]), _shape(v["shape"], opt, vectors[1]),
                      _shape(v["shape"], hi, vectors[1])) for k, v in manifest[section]["inputs"].items()}
        layers: list[str] = []
        if fp16:
            graph = onnx.load(str(bundle / name), load_external_data=False)
            layers = trt_fp32_layers(graph, fp32_nodes(graph, roots, extra))
        int8 = str(manifest[section].get("precision", "")).startswith("int8")
        plans.append(EnginePlan(bundle / name, bundle / name.replace(".onnx", ".engine"), shapes, fp16, layers,
                                workspace_mb, timing_cache or bundle / "timing.cache", int8))
    return plans


def _dims(shapes: dict[str, tuple[list[int], list[int], list[int]]], which: int) -> str:
    return ",".join(f"{k}:{'x'.join(str(d) for d in v[which])}" for k, v in shapes.items())


def trtexec_command(plan: EnginePlan) -> list[str]:
    """argv of the trtexec call that builds `plan` (TensorRT >= 8.6 flags)."""
    cmd = ["trtexec", f"--onnx={plan.onnx_path}", f"--saveEngine={plan.engine_path}",
           f"--minShapes={_dims(plan.shapes, 0)}", f"--optShapes={_dims(plan.shapes, 1)}",
           f"--maxShapes={_dims(plan.shapes, 2)}", f"--memPoolSize=workspace:{plan.workspace_mb}M"]
    if plan.timing_cache is not None:
        cmd.append(f"--timingCacheFile={plan.timing_cache}")
    if plan.int8:
        cmd.append("--int8")  # explicit quantization: the graph's Q/DQ scales, no --calib cache
    if plan.fp16:
        cmd.append("--fp16")
        if plan.fp32_layers:
            cmd += ["--precisionConstraints=obey",
                    "--layerPrecisions=" + ",".join(f"{n}:fp32" for n in plan.fp32_layers),
                    "--layerOutputTypes=" + ",".join(f"{n}:fp32" for n in plan.fp32_layers)]
    return cmd


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
