"""Quantized regions: a node that reads Q/DQ tensors (a Conv/Gemm/MatMul with its
activation and weight Q/DQ, a pooling node, a residual Add), its MACs, and the Q/DQ plan
with some regions returned to float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .qdq import QuantPlan


@dataclass
class Region:
    node: str
    op_type: str
    inputs: list[str]       # the planned tensors (activations and weights) it reads
    macs: int = 0


def regions(model: Any, qplan: QuantPlan) -> list[Region]:
    """One region per node with a planned Q/DQ input, in graph order."""
    reads: dict[str, list[str]] = {}
    for node, tensor in qplan.consumers:
        reads.setdefault(node, []).append(tensor)
    out = []
    for n in model.graph.node:
        if n.name in reads:
            inputs = [t for t in n.input if t in reads[n.name]]
            out.append(Region(n.name, n.op_type, list(dict.fromkeys(inputs))))  # x @ x: once
    return out


def without(qplan: QuantPlan, fallen: set[str]) -> QuantPlan:
    """The plan with the regions (node names) in `fallen` left in float: their consumer
    entries go, and so does every tensor no remaining node reads through a Q/DQ."""
    consumers = {(n, t) for n, t in qplan.consumers if n not in fallen}
    read = {t for _, t in consumers}
    return QuantPlan([t for t in qplan.activations if t in read],
                     [(w, axis) for w, axis in qplan.weights if w in read], consumers)


COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm", "LSTM", "GRU", "RNN")
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}  # weight blocks per hidden unit


def count_macs(model: Any, feed: dict[str, np.ndarray], found: list[Region]) -> int:
    """Fill each region's MACs for one sample, from the tensor shapes of one real run of
    the FP32 model (shape inference loses shapes after data-dependent reshapes). Returns
    the MACs of every compute node (COMPUTE_OPS), quantized or not: an LSTM, or a MatMul
    between two activations (attention scores), counts in the total though no region
    holds it."""
    from ..calib.stream import observed_model
    from ..data import rows
    from ..onnx import io

    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    compute = [n for n in model.graph.node if n.op_type in COMPUTE_OPS]
    wanted = list(dict.fromkeys(t for n in compute for t in list(n.input[:3]) + [n.output[0]]
                                if t and t not in inits))
    n = rows(feed)
    one = {k: (a[:1] if np.ndim(a) and len(a) == n else a) for k, a in feed.items()}
    values = io.session(observed_model(model, wanted)).run(wanted, one)
    shapes = {**inits, **{t: list(np.shape(v)) for t, v in zip(wanted, values)}}
    macs = [node_macs(node, shapes) for node in compute]
    by_name = {node.name: m for node, m in zip(compute, macs) if node.name}
    for r in found:
        r.macs = by_name.get(r.node, 0)
    return sum(macs)


def node_macs(n: Any, shapes: dict[str, Any]) -> int:
    """Multiply-accumulates of one compute node, from its tensors' shapes (0 if unknown)."""
    if n.op_type in GATES:  # X (seq, batch, in) or (batch, seq, in); W (dirs, g*H, in)
        x, w = shapes.get(n.input[0], []), shapes.get(n.input[1], [])
        if len(x) != 3 or len(w) != 3:
            return 0
        hidden = w[1] // GATES[n.op_type]
        return x[0] * x[1] * w[0] * w[1] * (w[2] + hidden)  # input and recurrent products
    out = shapes.get(n.output[0], [])
    if not out:
        return 0
    size = int(np.prod(out, dtype=np.int64))
    if n.op_type == "Conv":
        w = shapes.get(n.input[1], [])
        return size * int(np.prod(w[1:], dtype=np.int64)) if len(w) > 1 else 0
    if n.op_type == "ConvTranspose":
        w, x = shapes.get(n.input[1], []), shapes.get(n.input[0], [])
        if len(w) < 2 or not x:
            return 0
        return int(np.prod(x, dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if n.op_type in ("MatMul", "Gemm"):
        a = shapes.get(n.input[0], [])
        if not a:
            return 0
        trans_a = any(at.name == "transA" and at.i for at in n.attribute)
        return size * (a[0] if n.op_type == "Gemm" and trans_a else a[-1])
    return 0
