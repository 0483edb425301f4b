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


def count_macs(model: Any, feed: dict[str, np.ndarray], found: list[Region]) -> None:
    """Fill each region's MACs for one sample, from the tensor shapes of one real run of
    the FP32 model (shape inference loses shapes after data-dependent reshapes)."""
    from ..calib.stream import observed_model
    from ..data import rows
    from ..onnx import io

    nodes = {n.name: n for n in model.graph.node}
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    wanted = list(dict.fromkeys(t for r in found for t in list(nodes[r.node].input[:2])
                                + [nodes[r.node].output[0]] if t and t not in inits))
    n = rows(feed)
    one = {k: (a[:1] if np.ndim(a) and len(a) == n else a) for k, a in feed.items()}
    values = io.session(observed_model(model, wanted)).run(wanted, one)
    shapes = {**inits, **{t: list(np.shape(v)) for t, v in zip(wanted, values)}}
    for r in found:
        r.macs = _macs(nodes[r.node], shapes)


def _macs(n: Any, shapes: dict[str, list[int]]) -> int:
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
