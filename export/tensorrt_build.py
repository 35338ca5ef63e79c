"""Building TensorRT engines with TensorRT's Python API, on the target device.

ONNX parser -> one optimization profile (min/opt/max batch) -> fp16 with the normalisation layers
constrained to fp32 -> workspace limit -> timing cache reused across builds. Where TensorRT cannot
be imported or no CUDA GPU is usable, `TensorRTUnavailable` carries the equivalent trtexec lines.
"""

from __future__ import annotations

from pathlib import Path

from rissole_runtime.errors import RissoleError
from rissole_runtime.fileio import atomic_path
from rissole_export.trtexec import EnginePlan, format_command, trtexec_command


class TensorRTUnavailable(RissoleError):
    """TensorRT or a CUDA GPU is missing here; the message holds the trtexec commands for the device."""


def unavailable(reason: str, plans: list[EnginePlan]) -> TensorRTUnavailable:
    lines = [f"cannot build TensorRT engines here: {reason}.",
             "The ONNX bundle is complete. Engines are built on the target device: copy the bundle there and run",
             *[f"  {format_command(trtexec_command(p))}" for p in plans]]
    return TensorRTUnavailable("\n".join(lines))


def import_tensorrt():  # noqa: ANN201 - the module, or TensorRTUnavailable's reason
    """(tensorrt module or None, reason)."""
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as exc:
        return None, f"TensorRT cannot be imported ({type(exc).__name__}: {exc}); install it on the device (JetPack ships it)"
    return trt, ""


def build_engines(plans: list[EnginePlan]) -> list[Path]:
    """Build every plan's engine with the Python API; raise TensorRTUnavailable where that cannot run."""
    trt, reason = import_tensorrt()
    if trt is None:
        raise unavailable(reason, plans)
    logger = trt.Logger(trt.Logger.WARNING)
    try:
        builder = trt.Builder(logger)
    except Exception as exc:  # noqa: BLE001 - TensorRT raises TypeError/RuntimeError without a CUDA device
        raise unavailable(f"no usable CUDA GPU ({exc})", plans) from exc
    if builder is None:
        raise unavailable("no usable CUDA GPU (trt.Builder returned None)", plans)
    return [_build_one(trt, builder, logger, p) for p in plans]


def _build_one(trt, builder, logger, plan: EnginePlan) -> Path:  # noqa: ANN001 - tensorrt objects
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(plan.onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RissoleError(f"{plan.onnx_path}: TensorRT's ONNX parser failed: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_mb << 20)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in plan.shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    if plan.int8:  # a QDQ graph (rissole-export --int8): explicit quantization, no calibrator
        config.set_flag(trt.BuilderFlag.INT8)
    if plan.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        fp32 = set(plan.fp32_layers)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            # the parser names layers after ONNX nodes, sometimes with a suffix when a node becomes several layers
            if layer.name in fp32 or any(layer.name.startswith(n + "_") for n in fp32):
                layer.precision = trt.float32
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.float32)
    cache_bytes = plan.timing_cache.read_bytes() if plan.timing_cache and plan.timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RissoleError(f"{plan.onnx_path}: TensorRT could not build an engine (see its log above); a larger "
                           f"--workspace-mb than {plan.workspace_mb} may help if memory allows.")
    with atomic_path(plan.engine_path, suffix=".engine") as tmp:
        tmp.write_bytes(bytes(serialized))
    if plan.timing_cache is not None:
        with atomic_path(plan.timing_cache) as tmp:
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan.engine_path
