"""SmoothQuant (Xiao et al., arXiv 2211.10438): per-channel activation outliers moved into
the weights of W8A8 MatMul/Gemm layers before calibration.

For a layer y = x W (x [..., K] an activation quantized per tensor, W [K, N] a constant
quantized per output channel) and any s > 0 of length K,

    y = (x diag(s)^-1) (diag(s) W),      s_j = max|x_j|^alpha / max_n |W_jn|^(1 - alpha)

so a channel j whose range is far above the others (LayerNorm and GELU outputs in BERTs)
is divided down before the per-tensor INT8 scale is chosen, and its weight row, quantized
with its output channel's scale, takes the factor up. alpha = 0 leaves x as it is.

Only x that a normalization produces are smoothed (LayerNormalization, RMSNorm, or their
decomposed form, see from_norm; reshapes in between): the inputs of attention's Q/K/V and
of the first FFN layer, where the paper applies it. Measured on
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
from typing import Any, Iterator

import numpy as np

from ..onnx import io
from .qdq import QuantPlan, channel_scales

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
PASSING = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Cast"}
# the statistics branch of a decomposed norm, from its ReduceMean to the divisor
STATISTICS = {"Sqrt", "Reciprocal", "Add", "Pow", "Div", "Cast"}


def from_norm(name: str, producers: dict[str, Any], constants: set[str]) -> bool:
    """Is tensor `name` a normalization's normalized output (through reshapes, casts and
    a constant affine gamma/beta)? Fused: output 0 of a NORMS op. Decomposed (torch's older
    exports): Div(data, d) or Mul(data, d) where the divisor d comes from a ReduceMean
    through STATISTICS ops only (LayerNorm: Sub(x, mean) / sqrt(var + eps); RMSNorm:
    x * 1/sqrt(mean(x^2) + eps)). A residual sum, a pooled mean or a centred activation
    are not."""
    node = producers.get(name)
    while node is not None and (node.op_type in PASSING or node.op_type in ("Mul", "Add")
                                and _one_constant(node, constants)):
        name = next(i for i in node.input if i not in constants) if node.op_type in (
            "Mul", "Add") else node.input[0]
        node = producers.get(name)
    if node is None:
        return False
    if node.op_type in NORMS:
        return node.output[0] == name
    if node.op_type == "Div":
        return _statistic(node.input[1], producers, constants)
    if node.op_type == "Mul" and len(node.input) == 2:
        return any(_statistic(i, producers, constants) for i in node.input)
    return False


def _one_constant(node: Any, constants: set[str]) -> bool:
    return len(node.input) == 2 and sum(i in constants for i in node.input) == 1


def _statistic(name: str, producers: dict[str, Any], constants: set[str]) -> bool:
    """Does `name` come from a ReduceMean through STATISTICS ops (each with at most one
    non-constant input)?"""
    node = producers.get(name)
    for _ in range(8):
        if node is None:
            return False
        if node.op_type == "ReduceMean":
            return True
        live = [i for i in node.input if i and i not in constants]
        if node.op_type not in STATISTICS or len(live) != 1:
            return False
        node = producers.get(live[0])
    return False


def subgraph_reads(graphs: list[Any]) -> set[str]:
    """Every tensor name a node inside these subgraphs (nested ones too) reads."""
    found: set[str] = set()
    while graphs:
        g = graphs.pop()
        for n in g.node:
            found.update(n.input)
            graphs.extend(io.subgraphs(n))
    return found


@dataclass(frozen=True)
class Maps:
    """A graph's lookups, built once per targets()/apply() call."""

    producers: dict[str, Any]
    readers: dict[str, list[str]]   # tensor -> names of the nodes reading it
    outputs: set[str]
    nested: set[str]                # tensors a subgraph reads (from the outer scope)


def maps(g: Any) -> Maps:
    readers: dict[str, list[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, []).append(n.name)
    return Maps({o: n for n in g.node for o in n.output}, readers, {o.name for o in g.output},
                subgraph_reads([s for n in g.node for s in io.subgraphs(n)]))


def targets(model: Any, qplan: QuantPlan) -> list[Group]:
    """Normalization outputs (from_norm) the plan quantizes that feed MatMul/Gemm layers with
    constant rank-2 FP32 weights read by no other node (subgraphs included), grouped by
    activation."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    constants = set(inits) | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    look = maps(g)  # a weight a subgraph also reads would change there too
    found: dict[str, list[Layer]] = {}
    widths: dict[str, int] = {}
    for n in g.node:
        if n.op_type not in ("MatMul", "Gemm") or len(n.input) < 2:
            continue
        x, w = n.input[0], n.input[1]
        if (n.name, x) not in qplan.consumers or w not in inits \
                or len(look.readers[w]) != 1 or w in look.nested \
                or not from_norm(x, look.producers, constants):
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
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inits = {i.name: i for i in m.graph.initializer}
    chosen = [gr for gr in groups if gr.activation in found]
    for group in chosen:
        s = found[group.activation]
        for layer in group.layers:
            init = inits[layer.weight]
            w = numpy_helper.to_array(init)
            w = w * (s[:, None] if layer.axis == 0 else s[None, :])
            init.CopyFrom(numpy_helper.from_array(w.astype(np.float32), layer.weight))
    _divide(m.graph, [(gr.activation, [layer.node for layer in gr.layers],
                      1.0 / found[gr.activation]) for gr in chosen])
    return m


def _divide(g: Any, items: list[tuple[str, list[str], np.ndarray]]) -> None:
    """In place: for each (activation x, reader nodes, 1/s shaped to broadcast on x), a
    Mul(x, 1/s) node before the first of those readers, which then read its output instead
    of x (other readers keep x)."""
    from onnx import helper, numpy_helper

    names = {o for n in g.node for o in n.output} | {i.name for i in g.initializer} \
        | {i.name for i in g.input}
    by_name = {n.name: n for n in g.node}
    position = {n.name: k for k, n in enumerate(g.node)}
    muls: list[tuple[int, Any]] = []
    for x, nodes, inv_s in items:
        base = f"{x}_smooth"
        while base in names or f"{base}_inv_s" in names:
            base += "_"
        names.update((base, f"{base}_inv_s"))
        g.initializer.append(numpy_helper.from_array(inv_s.astype(np.float32), f"{base}_inv_s"))
        mul = helper.make_node("Mul", [x, f"{base}_inv_s"], [base], name=f"{base}_mul")
        muls.append((min(position[n] for n in nodes), mul))
        for n in nodes:
            node = by_name[n]
            node.input[list(node.input).index(x)] = base
    for k, mul in sorted(muls, key=lambda t: -t[0]):  # before its first reader
        g.node.insert(k, mul)


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

    tried = []
    for alpha, s in _tried_scales(act_max, w_max, alphas):
        xq = fake_quant(x / s, act_max / s)  # the error written out here: through a
        err = 0.0                            # callback this default path measured 20% slower
        for w, ref in zip(weights, refs):
            d = xq @ fake_quant_weight(w * s[:, None], 1) - ref
            err += float(np.sum(d * d))
        tried.append((alpha, s, err / norm))
    return _least(tried)


def fake_quant(x: np.ndarray, top: np.ndarray) -> np.ndarray:
    """x through per-tensor symmetric INT8 with the step max(top) / 127."""
    step = max(float(np.max(top)), 1e-12) / 127
    return np.clip(np.round(x / step), -127, 127) * step


def fake_quant_weight(w: np.ndarray, axis: int) -> np.ndarray:
    """w through per-channel INT8 along `axis`, as the Q/DQ graph holds it (qdq's scales;
    no int8 copy: this runs per alpha and weight)."""
    scale, shape = channel_scales(w, axis, 127.0)
    step = scale.reshape(shape)
    return np.clip(np.round(w / step), -127, 127) * step


def best_alpha(act_max: np.ndarray, w_max: np.ndarray, error: Any,
               alphas: tuple[float, ...]) -> Choice:
    """The alpha of `alphas` whose s = scales(act_max, w_max, alpha) gives the least
    error(s); alpha 0 is s = 1. Ties keep the earlier alpha."""
    return _least([(alpha, s, error(s)) for alpha, s in _tried_scales(act_max, w_max, alphas)])


def _tried_scales(act_max: np.ndarray, w_max: np.ndarray,
                  alphas: tuple[float, ...]) -> Iterator[tuple[float, np.ndarray]]:
    for alpha in alphas:
        yield alpha, scales(act_max, w_max, alpha) if alpha else np.ones(len(act_max), np.float32)


def _least(tried: list[tuple[float, np.ndarray, float]]) -> Choice:
    """The Choice of least error among (alpha, s, error) in the order tried (ties keep the
    earlier), with alpha 0's error as the unsmoothed one."""
    plain = next((err for alpha, _, err in tried if alpha == 0), float("nan"))
    alpha, s, err = min(tried, key=lambda t: t[2])  # min keeps the first of equal errors
    return Choice(alpha, s, err, plain)
