"""FP16 at the graph level: weights and activations in float16, float32 where FP16 breaks.

TensorRT 11 and TensorRT-RTX take precision from the graph, so `--fp16` rewrites the model:
every float node runs in FP16 except the keep-FP32 ops (reductions and range-sensitive math)
and nodes named with `--fp16-keep`; Casts are inserted on each edge between the two regions.
Graph inputs and outputs stay FP32 unless `fp16_io`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Fp16Settings
from ..onnx import io

# Inputs that the ONNX type constraints pin to float32 whatever the data type.
FLOAT32_INPUTS = {"Resize": {1, 2}, "Upsample": {1}}
TYPE_AGNOSTIC = frozenset({"Shape", "Size"})


def convert(model: Any, s: Fp16Settings = Fp16Settings(),
            keep_at: frozenset[int] = frozenset()) -> tuple[Any, dict[str, Any]]:
    """A float16 copy of a shape-inferred ModelProto, and what was converted. `keep_at`:
    positions of more nodes to keep in FP32 (fp16_range.range_keeps)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    floats = io.float_tensors(m)
    inits = {i.name: i for i in g.initializer}
    half = half_nodes(g, floats, s, keep_at)
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    inputs = {i.name for i in g.input}
    outputs = {o.name for o in g.output}

    def tensor_half(name: str) -> bool:
        if name in inputs:
            return s.io
        p = producer.get(name)
        return p is not None and half[p] and name in floats

    new_nodes, casts, half_inits = [], {}, {}

    def cast(name: str, to_half: bool) -> str:
        key = (name, to_half)
        if key not in casts:
            out = f"{name}_{'fp16' if to_half else 'fp32'}"
            casts[key] = out
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"{out}_Cast",
                                              to=TensorProto.FLOAT16 if to_half else TensorProto.FLOAT))
        return casts[key]

    rebuilt = []
    for index, node in enumerate(g.node):
        pinned = FLOAT32_INPUTS.get(node.op_type, set())
        for k, name in enumerate(node.input):
            if not name or name not in floats or node.op_type in TYPE_AGNOSTIC:
                continue
            want_half = half[index] and k not in pinned
            if name in inits:
                if want_half:
                    if name not in half_inits:
                        arr = _to_half(numpy_helper.to_array(inits[name]))
                        half_inits[name] = numpy_helper.from_array(arr, f"{name}_fp16")
                    node.input[k] = f"{name}_fp16"
            elif tensor_half(name) != want_half:
                node.input[k] = cast(name, want_half)
        if half[index] and node.op_type == "Cast" and \
                node.attribute[0].i == TensorProto.FLOAT:
            node.attribute[0].i = TensorProto.FLOAT16
        rebuilt.extend(new_nodes)  # casts feed this node: they go first
        new_nodes.clear()
        rebuilt.append(node)
    # graph outputs keep their names and (unless fp16_io) FP32; nodes that also read an
    # output read its FP16 tensor (reading the Cast added last broke topological order)
    renamed = {}
    for node in rebuilt:
        for k, name in enumerate(node.output):
            if name in outputs and tensor_half(name) and not s.io:
                node.output[k] = renamed[name] = f"{name}_fp16_out"
    for node in rebuilt if renamed else ():
        node.input[:] = [renamed.get(i, i) for i in node.input]
    rebuilt += [helper.make_node("Cast", [half_name], [name], name=f"{name}_to_fp32",
                                 to=TensorProto.FLOAT) for name, half_name in renamed.items()]
    if s.io:
        for vi in list(g.input) + list(g.output):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT:
                vi.type.tensor_type.elem_type = TensorProto.FLOAT16
    del g.node[:]
    g.node.extend(rebuilt)
    g.initializer.extend(half_inits.values())
    io.drop_unused_initializers(g)
    del g.value_info[:]
    m = io.infer_shapes(m)
    n_half = sum(half)
    return m, {"fp16_nodes": n_half, "fp32_nodes": len(half) - n_half,
               "statistics_fp32": len(statistics_nodes(model.graph)),
               "fp32_ops": sorted({n.op_type for n, h in zip(model.graph.node, half) if not h
                                   and n.output and n.output[0] in floats}),
               "casts": len(casts), "fp16_io": s.io,
               "control_flow_fp32": sum(bool(io.subgraphs(n)) for n in model.graph.node)}


def _to_half(arr: np.ndarray) -> np.ndarray:
    """float16, saturating: masking constants like -3.4e38 become -65504, not -inf."""
    big = np.finfo(np.float16).max
    return np.clip(arr, -big, big).astype(np.float16)


def half_nodes(g: Any, floats: set[str], s: Fp16Settings,
               keep_at: frozenset[int] = frozenset()) -> list[bool]:
    """Per node, by position (names may be empty or repeated): does it run in FP16?"""
    half = [_runs_half(n, floats, s) and k not in keep_at for k, n in enumerate(g.node)]
    for k in statistics_nodes(g):
        half[k] = False
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    for name in io.subgraph_reads(g):  # subgraphs read outer tensors by name: keep FP32
        if name in producer:
            half[producer[name]] = False
    return half


REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceSumSquare"})
# between a reduction and the difference of two statistics: scaling, squaring, reshaping
STAT_PATH = frozenset({"Mul", "Div", "Pow", "Reshape", "Expand", "Cast", "Identity",
                       "Squeeze", "Unsqueeze"})
# after the difference, up to the root: the epsilon, a clamp at 0, the root, its inverse
STAT_TAIL = frozenset({"Add", "Max", "Relu", "Clip", "Sqrt", "Reciprocal"})
STAT_DEPTH = 4


def statistics_nodes(g: Any) -> set[int]:
    """Positions of the nodes computing a variance as a difference of two statistics
    (E[x^2] - E[x]^2: both operands of a Sub reached from reductions through STAT_PATH
    ops), with the paths and the Add/Max/Sqrt/Reciprocal after it. In FP16 the two terms
    are rounded to 2^-11 of their size before they cancel: a layer norm written that way
    (Magika's, converted from JAX) lost 2.5 points of top-1 on binary files. TensorRT's own
    advice is to run normalisation in FP32; this keeps only the statistics, never the
    full-size tensors of the usual x - mean form."""
    producer = {o: k for k, n in enumerate(g.node) for o in n.output}
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(g.node):
        for i in n.input:
            readers.setdefault(i, []).append(k)

    def from_reduction(name: str, depth: int = 0) -> set[int]:
        k = producer.get(name)
        if k is None or depth > STAT_DEPTH:
            return set()
        n = g.node[k]
        if n.op_type in REDUCTIONS:
            return {k}
        if n.op_type not in STAT_PATH:
            return set()
        found = set().union(*(from_reduction(i, depth + 1) for i in n.input if i))
        return found | {k} if found else set()

    out: set[int] = set()
    for k, n in enumerate(g.node):
        if n.op_type != "Sub" or len(n.input) != 2:
            continue
        a, b = from_reduction(n.input[0]), from_reduction(n.input[1])
        if not (a and b):
            continue
        out |= a | b | {k}
        name = n.output[0]
        for _ in range(STAT_DEPTH):  # forward to the root, one reader at each step
            nxt = [r for r in readers.get(name, []) if g.node[r].op_type in STAT_TAIL]
            if len(nxt) != 1:
                break
            out.add(nxt[0])
            name = g.node[nxt[0]].output[0]
    return out


def _runs_half(node: Any, floats: set[str], s: Fp16Settings) -> bool:
    if node.op_type in s.keep_ops or node.name in s.keep_nodes or node.op_type in TYPE_AGNOSTIC:
        return False
    if io.subgraphs(node):  # If/Loop/Scan bodies stay FP32 (the record says how many)
        return False
    if node.op_type == "QuantizeLinear":  # FP16 input and scale, like its DequantizeLinear
        return node.input[0] in floats
    if node.op_type == "Cast" and node.input[0] not in floats:
        # integers made float (shape arithmetic: YOLOv8's anchor grid feeds Range): FP16
        # holds integers exactly only to 2048, and TensorRT-RTX refuses an FP16 Range limit
        return False
    return any(o in floats for o in node.output)


def emulated(model: Any, s: Fp16Settings = Fp16Settings(),
             keep_at: frozenset[int] = frozenset()) -> Any:
    """What an FP16 engine computes for `model` converted with these decisions, in FP32
    ONNX Runtime: emulate.emulate_typed (the one emulator) of convert's graph. ONNX
    Runtime's own FP16 run cannot be trusted for this: its CPU provider computes many FP16
    nodes in FP32 and drops the casts between them (an (x*x)/1000 with x = 300 gives 90
    there, inf on a GPU)."""
    from .emulate import emulate_typed

    return emulate_typed(convert(model, s, keep_at)[0])
