"""Q/DQ placement and insertion (TensorRT explicit quantization).

Placement (TensorRT's explicit-quantization guide; ModelOpt's output as the reference, see
../shared/design/peers.md):
- activation inputs of Conv, ConvTranspose, Gemm, MatMul (both inputs of activation x
  activation MatMuls, e.g. attention) and of pooling ops (max pooling only where its output
  is not quantized anyway): per-tensor symmetric INT8;
- their constant weights: per-output-channel symmetric INT8 (int8 initializer + DQ);
- in conv nets, the skip input of a residual Add (the one not produced by a Conv), so
  TensorRT fuses Conv+Add; transformers keep residual and mask Adds in float (their ranges
  hold masking sentinels and quantizing them costs accuracy);
- a Gemm/MatMul that produces a graph output (the classifier) stays in float;
- only float tensors: integer inputs (token ids, masks) pass untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..onnx import io

COMPUTE_OPS = {"Conv": 0, "ConvTranspose": 1, "Gemm": None, "MatMul": None}  # weight axis
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"}
PASS_THROUGH = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"}


@dataclass
class QuantPlan:
    """Tensors to quantize: activations (per tensor) and weights (per channel on `axis`)."""

    activations: list[str] = field(default_factory=list)
    weights: list[tuple[str, int]] = field(default_factory=list)  # (initializer name, axis)
    consumers: set[tuple[str, str]] = field(default_factory=set)  # (node name, input) to rewire


def plan(model: Any) -> QuantPlan:
    """Decide Q/DQ placement on a cleaned ONNX ModelProto (shape-inferred). Rewiring
    addresses nodes by name: a model the clean stage made has every node named
    (passes.name_nodes), others get names here, in place."""
    g = model.graph
    for k, n in enumerate(g.node):
        n.name = n.name or f"node_{k}"
    inits = {i.name: i for i in g.initializer}
    floats = io.float_tensors(model)
    outputs = {o.name for o in g.output}
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    has_conv = any(n.op_type in ("Conv", "ConvTranspose") for n in g.node)
    acts: list[str] = []
    weights: list[tuple[str, int]] = []
    consumers: set[tuple[str, str]] = set()

    def add_act(name: str, node: Any) -> None:
        if name and name not in inits and name in floats:
            if name not in acts:
                acts.append(name)
            consumers.add((node.name, name))

    for n in g.node:
        if n.op_type in COMPUTE_OPS:
            if n.op_type in ("Gemm", "MatMul") and _feeds_output(n, readers, outputs):
                continue
            for k, name in enumerate(n.input[:2]):
                if name in inits:
                    if np.issubdtype(_init_dtype(inits[name]), np.floating):
                        weights.append((name, _weight_axis(n, k, inits[name])))
                        consumers.add((n.name, name))
                else:
                    add_act(name, n)
        elif n.op_type in POOL_OPS:
            add_act(n.input[0], n)
        elif n.op_type == "Add" and has_conv and len(n.input) == 2:
            a, b = n.input
            conv_a, conv_b = _from_conv(a, producers), _from_conv(b, producers)
            if conv_a != conv_b and a not in inits and b not in inits:
                add_act(b if conv_a else a, n)
    _drop_commuting_pool_inputs(g, acts, consumers)
    return QuantPlan(acts, list(dict.fromkeys(weights)), consumers)


def _drop_commuting_pool_inputs(g: Any, acts: list[str], consumers: set) -> None:
    """Max pooling commutes with quantization: when its output is quantized anyway, TensorRT
    propagates that Q/DQ across it, so a second one on the input only costs calibration time
    (on resnet18 the stem MaxPool input is a third of all observed values)."""
    for n in g.node:
        if n.op_type in ("MaxPool", "GlobalMaxPool") and n.output[0] in acts and \
                (n.name, n.input[0]) in consumers:
            consumers.discard((n.name, n.input[0]))
            if not any(t == n.input[0] for _, t in consumers):
                acts.remove(n.input[0])


def _feeds_output(node: Any, readers: dict[str, list], outputs: set[str]) -> bool:
    """Does `node` produce a graph output through only shape ops, bias Adds and activations
    (the classifier head that ModelOpt leaves in float)?"""
    frontier, seen = list(node.output), set()
    while frontier:
        t = frontier.pop()
        if t in outputs:
            return True
        for c in readers.get(t, []):
            if c.op_type in PASS_THROUGH | {"Add", "Softmax", "Relu"} and c.name not in seen:
                seen.add(c.name)
                frontier.extend(c.output)
    return False


def _from_conv(name: str, producers: dict) -> bool:
    node = producers.get(name)
    while node is not None and node.op_type in ("BatchNormalization", "Relu", "Identity"):
        node = producers.get(node.input[0])
    return node is not None and node.op_type in ("Conv", "ConvTranspose")


def _weight_axis(node: Any, k: int, init: Any) -> int:
    if node.op_type in ("Conv", "ConvTranspose"):
        return COMPUTE_OPS[node.op_type]
    if node.op_type == "Gemm":
        attrs = {a.name: a.i for a in node.attribute}
        trans = attrs.get("transB", 0) if k == 1 else attrs.get("transA", 0)
        return (0 if trans else 1) if k == 1 else (1 if trans else 0)
    return len(init.dims) - 1 if k == 1 else 0  # MatMul weight (.., in, out): output on last


def _init_dtype(init: Any) -> np.dtype:
    import onnx

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type))


FP8_MAX = 448.0  # the largest finite float8 E4M3FN value


def insert_qdq(model: Any, plan_: QuantPlan, amaxes: dict[str, float],
               weights: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
               fmt: str = "int8") -> Any:
    """A copy of `model` with Q/DQ on planned activations and INT8+DQ weights.

    Scales: amax / 127 (symmetric, zero point 0). Tensors without an amax are skipped.
    `weights`: INT8 weights already rounded ({name: (int8, scale)}, trtbuild.quant.rounding);
    the others round to nearest. `fmt` "fp8": float8 E4M3FN (opset >= 19) instead, scales
    amax / 448, weights cast to the nearest E4M3 value.
    """
    import onnx
    from onnx import helper, numpy_helper

    top, zero = (FP8_MAX, _fp8_zero) if fmt == "fp8" else (127.0, _int8_zero)

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    # new nodes keyed by the tensor they follow (None: no producer, they go first)
    after: dict[str | None, list] = {}
    rename = {}
    for name in plan_.activations:
        if name not in amaxes:
            continue
        scale = np.float32(max(amaxes[name], 1e-12) / top)
        s, z = f"{name}_qscale", f"{name}_qzero"
        g.initializer.extend([numpy_helper.from_array(np.array(scale), s), zero(z, ())])
        q, dq = f"{name}_quantized", f"{name}_dequantized"
        after[name] = [helper.make_node("QuantizeLinear", [name, s, z], [q],
                                        name=f"{name}_QuantizeLinear"),
                       helper.make_node("DequantizeLinear", [q, s, z], [dq],
                                        name=f"{name}_DequantizeLinear")]
        rename[name] = dq
    for name, axis in plan_.weights:
        w_q, scale = fp8_weight(inits[name], axis) if fmt == "fp8" else \
            int8_weight(inits[name], axis, weights)
        qn, s, z = f"{name}_{fmt}", f"{name}_wscale", f"{name}_wzero"
        g.initializer.extend([numpy_helper.from_array(w_q, qn), numpy_helper.from_array(scale, s),
                              zero(z, scale.shape)])
        after.setdefault(None, []).append(helper.make_node(
            "DequantizeLinear", [qn, s, z], [f"{name}_dequantized"], axis=axis,
            name=f"{name}_DequantizeLinear"))
        rename[name] = f"{name}_dequantized"
    for node in g.node:
        for k, inp in enumerate(node.input):
            if inp in rename and (node.name, inp) in plan_.consumers:
                node.input[k] = rename[inp]
    # keep topological order: each activation's Q/DQ right after its producer; weight DQs
    # and graph-input Q/DQs first
    produced = {o for n in g.node for o in n.output}
    nodes = [n for t, group in after.items() if t is None or t not in produced for n in group]
    for node in g.node:
        nodes.append(node)
        for out in node.output:
            nodes.extend(after.get(out, []))
    del g.node[:]
    g.node.extend(nodes)
    io.drop_unused_initializers(g)
    return io.compacted(m)


def _int8_zero(name: str, shape: tuple) -> Any:
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(shape, np.int8), name)


def _fp8_zero(name: str, shape: tuple) -> Any:
    import ml_dtypes
    from onnx import numpy_helper

    return numpy_helper.from_array(np.zeros(shape, ml_dtypes.float8_e4m3fn), name)


def fp8_weight(init: Any, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(float8 E4M3FN weights, float32 scales): per channel along `axis`, amax / 448, each
    weight rounded to the nearest E4M3 value (ties to even), as QuantizeLinear does."""
    import ml_dtypes
    from onnx import numpy_helper

    w = numpy_helper.to_array(init).astype(np.float32)
    scale, shape = channel_scales(w, axis, FP8_MAX)
    q = np.clip(w / scale.reshape(shape), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
    return q, scale


def int8_weight(init: Any, axis: int, weights: dict | None = None) -> tuple[np.ndarray,
                                                                           np.ndarray]:
    """(int8, scale) of a planned weight initializer: from `weights` when rounded there,
    else nearest."""
    from onnx import numpy_helper

    if weights and init.name in weights:
        return weights[init.name]
    return quantize_weight(numpy_helper.to_array(init).astype(np.float32), axis)


def quantize_weight(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric INT8 along `axis`: (int8 weights, float32 scales)."""
    scale, shape = channel_scales(w, axis, 127.0)
    q = np.clip(np.round(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def channel_scales(w: np.ndarray, axis: int, top: float) -> tuple[np.ndarray, list[int]]:
    """(max |w| per channel along `axis` / `top` as float32, the shape that broadcasts them
    over `w`)."""
    reduce = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.max(np.abs(w), axis=reduce) if reduce else np.abs(w)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (np.maximum(amax, 1e-12) / top).astype(np.float32), shape
