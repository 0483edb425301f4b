"""What an FP16-typed ONNX model computes on an FP16 engine, as an FP32 model for ONNX
Runtime's CPU kernels: every float16 tensor (node outputs, Casts into FP16, graph inputs)
rounded through Cast(fp16)->Cast(fp32), so values past 65504 become inf and small ones lose
their bits as on the GPU; float16 weights and constants widened exactly.

The one emulator: the build's FP16 and INT8 checks run it on the very graph they write
(model.fp16.onnx, model.int8.onnx), `trtbuild validate` on any written model (trtbuild's, or
one from another tool), so every check sees what an engine computes rather than ONNX
Runtime's FP16 kernels, which compute in FP32 between casts. Control-flow nodes (If, Loop,
Scan) are kept as they are where neither they nor their bodies touch a float16 tensor
(trtbuild's FP16 graphs keep them FP32).
"""

from __future__ import annotations

from typing import Any

import numpy as np

FLOAT16_ATTRS = {"Constant": "value", "ConstantOfShape": "value"}


def has_fp16(model: Any) -> bool:
    """Does the graph hold a float16 tensor, weight or Cast into float16?"""
    from onnx import TensorProto

    f16 = TensorProto.FLOAT16
    g = model.graph
    return any(i.data_type == f16 for i in g.initializer) or \
        any(v.type.tensor_type.elem_type == f16 for v in [*g.input, *g.output, *g.value_info]) \
        or any(n.op_type == "Cast" and any(a.name == "to" and a.i == f16 for a in n.attribute)
               for n in g.node)


def emulate_typed(model: Any) -> Any:
    """The FP32 emulation of `model` (a ModelProto with float16 tensors). Raises
    ValueError where it cannot emulate: control flow that touches float16 (If/Loop/Scan
    bodies are not rewritten) or a tensor whose type shape inference cannot tell."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    f16, f32 = TensorProto.FLOAT16, TensorProto.FLOAT
    from ..onnx import io

    if io.is_large(model):  # io.infer_shapes types a large model in place: work on a copy
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        model = copy
    m = io.infer_shapes(model)
    g = m.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*g.value_info, *g.input, *g.output]}
    for node in g.node:
        bodies = [b for a in node.attribute for b in ([a.g] if a.type == a.GRAPH else a.graphs)
                  if a.type in (a.GRAPH, a.GRAPHS)]
        if bodies and (any(types.get(t) == f16 for t in [*node.input, *node.output])
                       or any(has_fp16(onnx.helper.make_model(b)) for b in bodies)):
            raise ValueError(f"control flow ({node.op_type}) over float16 tensors is not "
                             "emulated")
    for init in g.initializer:
        types[init.name] = init.data_type
        if init.data_type == f16:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float32), init.name))
    inits = {i.name for i in g.initializer}
    untyped = [o for n in g.node for o in n.output if o and o not in types]
    if untyped:
        raise ValueError(f"shape inference cannot type {untyped[0]!r}")
    rebuilt: list = []

    def round_trip(src: str, dst: str) -> None:
        rebuilt.extend([helper.make_node("Cast", [src], [f"{dst}__h"], to=f16),
                        helper.make_node("Cast", [f"{dst}__h"], [dst], to=f32)])

    entry = {}  # FP16 graph inputs: fed as FP32, rounded on the way in
    for v in g.input:
        if types.get(v.name) == f16:
            v.type.tensor_type.elem_type = f32  # initializer-backed ones are widened above
            if v.name not in inits:
                entry[v.name] = f"{v.name}__emulated"
                round_trip(v.name, entry[v.name])
    for v in g.output:
        if v.type.tensor_type.elem_type == f16:
            v.type.tensor_type.elem_type = f32
    for node in g.node:
        source = list(node.input)  # the names `types` knows
        for k, name in enumerate(node.input):
            if name in entry:
                node.input[k] = entry[name]
        for a in node.attribute:
            if FLOAT16_ATTRS.get(node.op_type) == a.name and a.t.data_type == f16:
                a.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(a.t).astype(np.float32), a.t.name))
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            if to == f16:  # the Cast into FP16 rounds; widen its result back
                rebuilt.append(node)
                o = node.output[0]
                node.output[0] = f"{o}__h"
                rebuilt.append(helper.make_node("Cast", [node.output[0]], [o], to=f32))
                continue
            if to == f32 and types.get(source[0]) == f16:
                # FP16 -> FP32 is now FP32 -> FP32: an Identity (ONNX Runtime 1.32's
                # optimizer crashes on such no-op Casts)
                node.op_type = "Identity"
                del node.attribute[:]
        half_outputs = [(k, o) for k, o in enumerate(node.output) if types.get(o) == f16]
        for k, o in half_outputs:
            node.output[k] = f"{o}__fp32"
        rebuilt.append(node)
        for _, o in half_outputs:
            round_trip(f"{o}__fp32", o)
    del g.node[:]
    g.node.extend(rebuilt)
    del g.value_info[:]
    return m


def has_int4(model: Any) -> bool:
    """Does the graph hold an INT4/UINT4 initializer (weight-only INT4)?"""
    from onnx import TensorProto

    return _has_initializer(model, {TensorProto.INT4, TensorProto.UINT4})


def _has_initializer(model: Any, types: set[int]) -> bool:
    return any(i.data_type in types for i in model.graph.initializer)


def dequantized(model: Any) -> Any:
    """A copy of `model` where each DequantizeLinear of an INT4/UINT4 initializer is its
    output, computed here (q - zero point) x scale, blocked or per axis, as an initializer of
    the scale's type (float16 scales: the product rounded once to float16): what
    TensorRT's weight-only INT4 GEMM multiplies by. ONNX Runtime's CPU
    provider would instead fuse DQ+MatMul into MatMulNBits, which by default rounds the
    activations to 8 bits as no engine does."""
    import onnx
    from onnx import TensorProto, numpy_helper

    from ..onnx import io

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    four = (TensorProto.INT4, TensorProto.UINT4)
    keep, values = [], []
    for node in g.node:
        x = inits.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if x is None or x.data_type not in four or not all(n in inits for n in node.input[1:]
                                                            if n):
            keep.append(node)
            continue
        arrays = [numpy_helper.to_array(inits[n]).astype(np.float32) if n else None
                  for n in [*node.input, ""][:3]]  # q, scale, zero point (optional)
        attrs = {a.name: a.i for a in node.attribute}
        out_type = numpy_helper.to_array(inits[node.input[1]]).dtype  # the scale's: FP16 too
        values.append(numpy_helper.from_array(
            dequantize_linear(*arrays, attrs.get("axis", 1), attrs.get("block_size", 0)).astype(
                out_type), node.output[0]))
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(values)
    io.drop_unused_initializers(g)
    return m


def dequantize_linear(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None = None,
                axis: int = 1, block: int = 0) -> np.ndarray:
    """DequantizeLinear-21: per tensor (scalar scale), per axis, or blocked along `axis`."""
    zero = np.zeros_like(scale) if zero is None else zero
    if scale.ndim == 0:
        return (q - zero) * scale
    axis = axis % q.ndim
    if block:
        scale, zero = (np.repeat(v, block, axis=axis).take(range(q.shape[axis]), axis=axis)
                       for v in (scale, zero))
    else:
        shape = [1] * q.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return ((q - zero) * scale).astype(np.float32)


def has_fp8(model: Any) -> bool:
    """Does the graph hold a float8 tensor (FP8 Q/DQ)?"""
    from onnx import TensorProto

    f8 = {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E4M3FNUZ, TensorProto.FLOAT8E5M2,
          TensorProto.FLOAT8E5M2FNUZ}
    return _has_initializer(model, f8)
