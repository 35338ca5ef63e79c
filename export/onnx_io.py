"""Tracing a torch module into one ONNX file (opset >= 17, dynamic batch), and naming its fp32 nodes.

The TorchScript exporter (dynamo=False) is used: it needs no onnxscript, and it names every node
after the module scope it was traced in (`/down.0/norm1/InstanceNormalization`). Those scopes are
how the normalisation layers are found again for the fp16 conversion and for TensorRT's
per-layer precision constraints.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Iterable, Sequence

import onnx
import torch

from rissole_runtime.fileio import atomic_path

MIN_OPSET = 17
NORM_OPS = ("LayerNormalization", "InstanceNormalization", "GroupNormalization", "BatchNormalization")
_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum")
PROTOBUF_LIMIT = 2 * 1024**3


def export_onnx(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], path: str | os.PathLike,
                input_names: Sequence[str], output_names: str | Sequence[str], opset: int = MIN_OPSET,
                dynamic: dict[str, dict[int, str]] | None = None) -> onnx.ModelProto:
    """Trace `module` on `inputs` with axis 0 of every input and output dynamic (and the axes `dynamic`
    names, e.g. a text encoder's token axis); write `path` atomically."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (LayerNormalization), found {opset}")
    outputs = [output_names] if isinstance(output_names, str) else list(output_names)
    dynamic = {**{name: {0: "batch"} for name in [*input_names, *outputs]}, **(dynamic or {})}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation and tracer warnings say nothing here
        torch.onnx.export(module.eval(), inputs, buf, dynamo=False, opset_version=opset, input_names=list(input_names),
                          output_names=outputs, dynamic_axes=dynamic, do_constant_folding=True)
    model = onnx.load_from_string(buf.getvalue())
    save_onnx(model, path)
    return model


def save_onnx(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """One self-contained file (weights inline, no external-data side files), written atomically."""
    data = model.SerializeToString()
    if len(data) >= PROTOBUF_LIMIT:
        raise ValueError(f"{path}: the model is {len(data) / 2**30:.2f} GiB, above protobuf's 2 GiB single-file limit")
    path = Path(path)
    with atomic_path(path, suffix=".onnx") as tmp:
        tmp.write_bytes(data)
    return path


def scope(node_name: str) -> str:
    """'/down.0/norm1/Mul' -> '/down.0/norm1'; '/Mul' and unscoped names -> ''."""
    return node_name.rsplit("/", 1)[0] if "/" in node_name else ""


def norm_scopes(model: onnx.ModelProto) -> list[str]:
    """Module scopes that hold a normalisation op and no conv/matmul: the whole norm layer (GroupNorm
    exports as Reshape-InstanceNormalization-Reshape-Mul-Add, all in the module's scope)."""
    by_scope: dict[str, set[str]] = {}
    for n in model.graph.node:
        by_scope.setdefault(scope(n.name), set()).add(n.op_type)
    out = []
    for sc, ops in by_scope.items():
        if sc and ops & set(NORM_OPS) and not ops & set(_COMPUTE_OPS):
            out.append(sc)
    return sorted(out)


def fp32_nodes(model: onnx.ModelProto, root_scopes: Iterable[str] = ("",), extra_scopes: Iterable[str] = ()) -> set[str]:
    """Names of the nodes to keep in fp32 under --fp16 / TensorRT fp16.

    - every node of a normalisation layer (fp16 overflows in their variance)
    - every normalisation op even outside such a scope
    - the plain tensor ops of the listed root scopes (the timestep embedding: cos/sin of t * f with
      t up to 999 lose the phase in fp16; the v -> eps conversion)
    - everything under `extra_scopes` (e.g. the VQ codebook search, whose argmin must not flip)
    """
    scopes = norm_scopes(model)
    roots, extras = set(root_scopes), tuple(extra_scopes)
    keep = set()
    for n in model.graph.node:
        sc = scope(n.name)
        if (n.op_type in NORM_OPS or sc in roots or any(sc == s or sc.startswith(s + "/") for s in scopes)
                or any(sc == s or sc.startswith(s + "/") for s in extras)):
            keep.add(n.name)
    return keep


def trt_fp32_layers(model: onnx.ModelProto, keep: set[str]) -> list[str]:
    """The kept nodes that become TensorRT layers with arithmetic (constants and shape ops fold away)."""
    skip = {"Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast", "Reshape"}
    return [n.name for n in model.graph.node if n.name in keep and n.op_type not in skip]
