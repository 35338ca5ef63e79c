"""fp32 -> fp16 conversion of an ONNX graph that keeps chosen nodes (the normalisation layers) in fp32.

Written on the onnx API alone (no converter package): every node not in `keep` computes in fp16,
its fp32 weights stored as fp16; kept nodes compute in fp32. Where a value crosses between the
two, one Cast is inserted (shared by all consumers of that value). Graph inputs and outputs stay
fp32, so the runtime feeds and reads the same arrays whatever the precision.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, shape_inference

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)
# input slots an op needs in fp32 whatever its data type (Resize's roi and scales)
FP32_SLOTS: dict[str, tuple[int, ...]] = {"Resize": (1, 2)}
# ops whose float output type is set by an attribute rather than by their inputs
TYPED_BY_ATTRIBUTE = ("Cast", "Constant", "ConstantOfShape")
UNSUPPORTED = ("RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "EyeLike", "CastLike")


def _value_types(model: onnx.ModelProto) -> dict[str, int]:
    g = model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output, *g.value_info]}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def _half_tensor(t: TensorProto, name: str) -> TensorProto:
    arr = numpy_helper.to_array(t)
    if arr.size and float(np.abs(arr).max()) > FP16_MAX:
        raise ValueError(f"tensor {t.name!r} holds {float(np.abs(arr).max()):.3g}, beyond fp16's range: keep its consumer in fp32")
    return numpy_helper.from_array(arr.astype(np.float16), name)


def convert_to_fp16(model: onnx.ModelProto, keep: set[str]) -> onnx.ModelProto:
    """A new model: nodes outside `keep` in fp16, nodes in `keep` in fp32, fp32 inputs/outputs."""
    model = shape_inference.infer_shapes(model, strict_mode=True)
    g = model.graph
    types = _value_types(model)
    inits = {t.name: t for t in g.initializer}
    half = {n.name for n in g.node if n.name not in keep}
    bad = [n.op_type for n in g.node if n.name in half and n.op_type in UNSUPPORTED]
    if bad:
        raise ValueError(f"cannot convert ops {sorted(set(bad))} to fp16; add them to the fp32 set")

    home = {i.name: FLOAT for i in g.input if types.get(i.name) == FLOAT}  # precision each float value is made in
    for n in g.node:
        for o in n.output:
            if o not in types:
                raise ValueError(f"node {n.name!r}: the type of {o!r} is unknown after shape inference")
            if types[o] == FLOAT:
                home[o] = HALF if n.name in half else FLOAT

    nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    half_inits: dict[str, str] = {}

    def cast(value: str, to: int) -> str:
        key = (value, to)
        if key not in casts:
            out = f"{value}__{'fp16' if to == HALF else 'fp32'}"
            nodes.append(helper.make_node("Cast", [value], [out], to=to, name=out))
            casts[key] = out
        return casts[key]

    def half_init(name: str) -> str:
        if name not in half_inits:
            half_inits[name] = f"{name}__fp16"
            g.initializer.append(_half_tensor(inits[name], half_inits[name]))
        return half_inits[name]

    for n in list(g.node):
        is_half = n.name in half
        for i, v in enumerate(n.input):
            if not v or types.get(v) != FLOAT:
                continue
            want = FLOAT if not is_half or i in FP32_SLOTS.get(n.op_type, ()) else HALF
            if v in inits:
                if want == HALF:
                    n.input[i] = half_init(v)
            elif home[v] != want:
                n.input[i] = cast(v, want)
        if is_half and n.op_type in TYPED_BY_ATTRIBUTE:
            _retype_attributes(n)
        nodes.append(n)

    outputs = {o.name for o in g.output}
    for name in outputs:
        if home.get(name) == HALF:  # made in fp16: rename it inside the graph, cast back at the end
            inner = f"{name}__fp16_out"
            for n in nodes:
                n.output[:] = [inner if o == name else o for o in n.output]
                n.input[:] = [inner if i == name else i for i in n.input]
            nodes.append(helper.make_node("Cast", [inner], [name], to=FLOAT, name=f"{name}__to_fp32"))

    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    kept_inits = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept_inits)
    del g.value_info[:]
    onnx.checker.check_model(model, full_check=True)
    return model


def _retype_attributes(n: onnx.NodeProto) -> None:
    """A Cast to float / a float Constant computed on the fp16 side produces fp16 instead."""
    for a in n.attribute:
        if n.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = HALF
        elif a.name == "value" and a.t.data_type == FLOAT:
            a.t.CopyFrom(_half_tensor(a.t, a.t.name))


def count_by_precision(model: onnx.ModelProto) -> dict[str, int]:
    """Initializer elements per dtype (for the manifest): how much of the weight mass is fp16."""
    out: dict[str, int] = {}
    for t in model.graph.initializer:
        key = TensorProto.DataType.Name(t.data_type).lower()
        out[key] = out.get(key, 0) + int(np.prod(t.dims))
    return out
