"""SmoothQuant (Xiao et al., arXiv 2211.10438): per-channel activation outliers moved into
the weights of W8A8 MatMul/Gemm layers before calibration.

For a layer y = x W (x [..., K] an activation quantized per tensor, W [K, N] a constant
quantized per output channel) and any s > 0 of length K,

    y = (x diag(s)^-1) (diag(s) W),      s_j = max|x_j|^alpha / max_n |W_jn|^(1 - alpha)

so a channel j whose range is far above the others (LayerNorm and GELU outputs in BERTs)
is divided down before the per-tensor INT8 scale is chosen, and its weight row, quantized
with its output channel's scale, takes the factor up. alpha = 0 leaves x as it is.

Only x that a normalization produces are smoothed (LayerNormalization, RMSNorm, or their
decomposed form: elementwise ops back to a ReduceMean, reshapes in between): the inputs of
attention's Q/K/V and of the first FFN layer, where the paper applies it. Measured on
all-MiniLM-L6-v2 calibrated on template sentences (bench/bench_smooth.py): smoothing GELU
outputs (the second FFN layer's input) and attention contexts as well was better on the
calibration generator's sentences and worse than no smoothing on sentences of other
generators; on normalization outputs it was better on both.

Every weight layer reading the same x shares one s (the max over all their rows) and one
Mul(x, 1/s) node in front of them; other readers of x (residual Adds) keep x, so the FP32
function of the graph is unchanged up to rounding. TensorRT fuses the Mul into the pointwise
kernel before its quantization. A weight another node also reads is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .qdq import QuantPlan

DEFAULT_ALPHA = 0.5  # the paper's default for BERT-size models
S_RANGE = (1e-3, 1e3)  # keeps 1/s and s W within FP16 when the float parts are FP16


@dataclass(frozen=True)
class Layer:
    node: str     # MatMul/Gemm node name
    weight: str   # its rank-2 FP32 initializer
    axis: int     # the weight's K axis (0: MatMul, Gemm; 1: Gemm transB=1)


@dataclass(frozen=True)
class Group:
    """The weight layers that read activation `activation` of width `k`."""

    activation: str
    k: int
    layers: tuple[Layer, ...]


NORMS = {"LayerNormalization", "SimplifiedLayerNormalization", "RMSNormalization",
         "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}
RESHAPES = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
# what a decomposed LayerNorm/RMSNorm is made of, between its output and its ReduceMean
NORM_PARTS = {"Mul", "Add", "Sub", "Div", "Sqrt", "Reciprocal", "Pow", "Cast"}


def from_norm(name: str, producers: dict[str, Any]) -> bool:
    """Is tensor `name` a normalization's output (through reshapes)? A decomposed one is
    elementwise ops (NORM_PARTS) that reach a ReduceMean without crossing anything else
    (a MatMul, an activation function)."""
    node = producers.get(name)
    while node is not None and node.op_type in RESHAPES:
        node = producers.get(node.input[0])
    if node is None:
        return False
    if node.op_type in NORMS:
        return True
    if node.op_type not in NORM_PARTS:
        return False
    frontier, seen = [node], set()
    while frontier:
        n = frontier.pop()
        for i in n.input:
            p = producers.get(i)
            if p is None or id(p) in seen:
                continue
            seen.add(id(p))
            if p.op_type == "ReduceMean":
                return True
            if p.op_type in NORM_PARTS and len(seen) < 32:
                frontier.append(p)
    return False


def targets(model: Any, qplan: QuantPlan) -> list[Group]:
    """Normalization outputs (from_norm) the plan quantizes that feed MatMul/Gemm layers with
    constant rank-2 FP32 weights read by no other node, grouped by activation."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1
    found: dict[str, list[Layer]] = {}
    widths: dict[str, int] = {}
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2:
            continue
        x, w = n.input[0], n.input[1]
        if (n.name, x) not in qplan.consumers or w not in inits or readers[w] != 1 \
                or not from_norm(x, producers):
            continue
        init = inits[w]
        if len(init.dims) != 2 or init.data_type != 1:  # FLOAT
            continue
        attrs = {a.name: a.i for a in n.attribute}
        if n.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        axis = 1 if n.op_type == "Gemm" and attrs.get("transB", 0) else 0
        k = int(init.dims[axis])
        if widths.setdefault(x, k) != k:
            continue
        found.setdefault(x, []).append(Layer(n.name, w, axis))
    return [Group(x, widths[x], tuple(layers)) for x, layers in found.items()]


def weight_max(model: Any, group: Group) -> np.ndarray:
    """max |W_jn| over n and over the group's layers, per input channel j (length K)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    rows = [np.abs(numpy_helper.to_array(inits[layer.weight])).max(axis=1 - layer.axis)
            for layer in group.layers]
    return np.max(rows, axis=0)


def scales(act_max: np.ndarray, w_max: np.ndarray, alpha: float) -> np.ndarray:
    """s_j = a_j^alpha / w_j^(1 - alpha), float32, within S_RANGE (dead channels: 1)."""
    a = np.asarray(act_max, np.float64)
    w = np.asarray(w_max, np.float64)
    s = np.ones_like(a)
    live = (a > 0) & (w > 0)
    s[live] = a[live] ** alpha / w[live] ** (1 - alpha)
    return np.clip(s, *S_RANGE).astype(np.float32)


def apply(model: Any, groups: list[Group], found: dict[str, np.ndarray]) -> Any:
    """A copy of `model` with each group's activation divided by its s (`found[activation]`)
    in a Mul node before its layers, and their weights' K rows multiplied by s."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    names = {o for n in g.node for o in n.output} | set(inits) | {i.name for i in g.input}
    by_name = {n.name: n for n in g.node}
    position = {n.name: k for k, n in enumerate(g.node)}
    muls: list[tuple[int, Any]] = []
    for group in groups:
        if group.activation not in found:
            continue
        s = found[group.activation]
        base = f"{group.activation}_smooth"
        while base in names or f"{base}_inv_s" in names:
            base += "_"
        names.update((base, f"{base}_inv_s"))
        g.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32),
                                                     f"{base}_inv_s"))
        mul = helper.make_node("Mul", [group.activation, f"{base}_inv_s"], [base],
                               name=f"{base}_mul")
        muls.append((min(position[layer.node] for layer in group.layers), mul))
        for layer in group.layers:
            by_name[layer.node].input[0] = base
            init = inits[layer.weight]
            w = numpy_helper.to_array(init)
            w = w * (s[:, None] if layer.axis == 0 else s[None, :])
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), layer.weight))
    for k, mul in sorted(muls, key=lambda t: -t[0]):  # before its first reader
        g.node.insert(k, mul)
    return m


COLUMNS = 256  # output channels per weight the error is measured on
ALPHAS = (0.0, 0.25, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)  # 0: no smoothing, always a candidate


@dataclass(frozen=True)
class Choice:
    alpha: float
    s: np.ndarray       # float32 [K]
    error: float        # relative output error of the chosen alpha on the sampled rows
    error_plain: float  # ... of alpha = 0 (no smoothing)


def choose(rows: np.ndarray, act_max: np.ndarray, weights: list[np.ndarray],
           alphas: tuple[float, ...] = ALPHAS) -> Choice:
    """The alpha whose W8A8 layer outputs are closest to FP32 on `rows` [R, K] (sampled
    calibration inputs), for the group's weights, each [K, N] (at most COLUMNS of its
    output channels, evenly spaced; s from all of them):

        error(alpha) = sum_W |Q(x / s) Q(diag(s) W) - x W|^2 / sum_W |x W|^2

    Q(x / s): per tensor, symmetric, the step max_j(act_max_j / s_j) / 127 (the maximum
    over all calibration data, not only the rows); Q(diag(s) W): per output channel, as
    qdq.quantize_weight. Ties keep the smaller alpha."""
    x = rows.astype(np.float32)
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    # output channels are quantized independently: the error over COLUMNS evenly spaced
    # ones estimates the whole layer's at a fraction of the cost
    weights = [w[:, np.unique(np.linspace(0, w.shape[1] - 1, min(COLUMNS, w.shape[1]))
                             .astype(int))] for w in weights]
    refs = [x @ w for w in weights]
    norm = sum(float(np.sum(r * r)) for r in refs) or 1.0
    best: Choice | None = None
    plain = 0.0
    for alpha in alphas:
        s = scales(act_max, w_max, alpha) if alpha else np.ones(len(act_max), np.float32)
        step = max(float(np.max(act_max / s)), 1e-12) / 127
        xq = np.clip(np.round(x / s / step), -127, 127) * step
        err = 0.0
        for w, ref in zip(weights, refs):
            ws = w * s[:, None]
            col = np.maximum(np.abs(ws).max(axis=0), 1e-12) / 127
            wq = np.clip(np.round(ws / col), -127, 127) * col
            d = xq @ wq - ref
            err += float(np.sum(d * d))
        err /= norm
        if alpha == 0:
            plain = err
        if best is None or err < best.error:
            best = Choice(alpha, s, err, plain)
    assert best is not None
    return Choice(best.alpha, best.s, best.error, plain)
