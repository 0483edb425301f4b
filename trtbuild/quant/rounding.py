"""INT8 weight rounding that minimises each layer's output error, not each weight's.

Nearest rounding on the per-channel grid keeps every weight within half a step, but where a
kernel subtracts neighbours (PP-OCRv4 rec's reparameterised depthwise convs) the small
errors add up in the output: one 3x3 depthwise conv rounded to nearest drops rec strings
from 1.00 to 0.68 with all else FP32 (GPTQ: 0.97; 100 full-width rendered lines). GPTQ
(Frantar et al., 2022, arXiv:2210.17323) rounds one input column at a time and moves each
rounding error onto the columns not yet rounded, weighted by the layer input's second moment
H = E[x x^T] from calibration data. The grid (per-channel max scale) stays as it is; only
which way each weight rounds changes, so the Q/DQ graph and what TensorRT builds are the
same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from ..data import rows as count_rows
from .qdq import QuantPlan, quantize_weight

MAX_SAMPLES = 64      # calibration rows the input statistics come from
MAX_COLUMNS = 4096    # output positions per batch a layer's statistics keep (evenly strided)
DAMP = 0.01           # GPTQ's dampening, a share of H's mean diagonal
# input vectors per weight of a row below which GPTQ fits the calibration rows rather than
# the data and nearest rounding is kept: a Gemm on a flattened image with 32 for 4608 got
# worse on held-out data; PP-OCRv4 rec's 1x3 convs at 0.44 gain (strings 0.94 -> 0.955)
MIN_COLUMNS = 0.25
BLOCK = 128           # columns rounded between two matrix-product updates of the rest


@dataclass
class Layer:
    """A weight GPTQ can round: its consumer's input, and how to lay both out as rows x K."""

    weight: str
    axis: int
    node: Any
    source: str                  # the activation the weight multiplies


def layers(model: Any, qplan: QuantPlan) -> list[Layer]:
    """The planned weights of Conv (1-D/2-D, explicit pads), Gemm and 2-D MatMul whose other
    input is an activation and that have one consumer; the rest keep nearest rounding."""
    inits = {i.name: i for i in model.graph.initializer}
    users: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    found = []
    for name, axis in qplan.weights:
        if len(users.get(name, [])) != 1:
            continue
        n = users[name][0]
        ndim = len(inits[name].dims)
        attrs = {a.name: a.i for a in n.attribute if a.type == a.INT}
        pad = next((a.s for a in n.attribute if a.name == "auto_pad"), b"NOTSET")
        ok = (n.op_type == "Conv" and n.input[1] == name and ndim in (3, 4)
              and pad in (b"NOTSET", b"VALID")) or \
             (n.op_type == "MatMul" and n.input[1] == name and ndim == 2) or \
             (n.op_type == "Gemm" and n.input[1] == name and not attrs.get("transA", 0))
        if ok and n.input[0] not in inits:
            found.append(Layer(name, axis, n, n.input[0]))
    return found


def round_weights(model: Any, qplan: QuantPlan, feeds: Iterable[dict[str, np.ndarray]],
                  session: Callable[[Any], Any], advance: Callable[[int], None] = lambda n: None
                  ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """GPTQ-rounded INT8 weights {name: (int8, scale)} for the layers it applies to, and a
    summary: layers rounded, rows used, the median ratio of estimated output error
    (d^T H d, d the weight error) against nearest rounding. `session(model)` makes an ONNX
    Runtime session; `feeds` are calibration batches (FP32 inputs); `advance` is told of
    each layer rounded."""
    from onnx import helper, numpy_helper

    found = layers(model, qplan)
    if not found:
        return {}, {"layers": 0, "rows": 0}
    taps = list(dict.fromkeys(layer.source for layer in found))
    tapped = type(model)()
    tapped.CopyFrom(model)
    known = {o.name for o in tapped.graph.output}
    tapped.graph.output.extend(helper.make_tensor_value_info(t, 1, None)  # 1: FLOAT
                               for t in taps if t not in known)
    sess = session(tapped)
    inits = {i.name: numpy_helper.to_array(i).astype(np.float32) for i in model.graph.initializer
             if i.name in {layer.weight for layer in found}}
    # H depends on the input and the layer's window only: Q, K and V projections share one
    stats: dict[tuple, np.ndarray] = {}   # float32: 32 rows sum without loss that matters
    seen: dict[tuple, int] = {}
    rows = 0
    for feed in feeds:
        if rows >= MAX_SAMPLES:
            break
        values = dict(zip(taps, sess.run(taps, feed)))
        rows += count_rows(feed)
        done = set()
        for layer in found:
            key = _window(layer, inits[layer.weight])
            if key not in done:
                done.add(key)
                cols = _columns(values[layer.source], inits[layer.weight], layer.node)
                stats[key] = stats.get(key, 0) + np.matmul(cols, cols.transpose(0, 2, 1))
                seen[key] = seen.get(key, 0) + cols.shape[2]
    out, ratios = {}, []
    for layer in found:
        w, key = inits[layer.weight], _window(layer, inits[layer.weight])
        if key not in stats or seen[key] < MIN_COLUMNS * stats[key].shape[1]:
            continue  # e.g. a Gemm on a flattened image: fewer samples than weights per row
        h = stats[key].astype(np.float64)
        nearest, scale = quantize_weight(w, layer.axis)
        rows_k = _as_rows(w, layer.node)                       # (groups, r, K)
        groups = rows_k.shape[0]
        s = scale.reshape(groups, -1)
        q = gptq(rows_k, h, s)
        before = _output_error(rows_k, _as_rows(nearest.astype(np.float32), layer.node), s, h)
        after = _output_error(rows_k, q.astype(np.float32), s, h)
        if after < before:  # the estimate on calibration data decides, per layer
            out[layer.weight] = (_from_rows(q, w.shape, layer.node), scale)
        ratios.append(min(after, before) / before if before > 0 else 1.0)
        advance(1)
    return out, {"layers": len(out), "candidates": len(found), "rows": rows,
                 "output_error_ratio_median": float(np.median(ratios))}


def gptq(w: np.ndarray, h: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Round (groups, r, K) weights onto the symmetric INT8 grid `scale` (groups, r), each
    group with its input second moment h (groups, K, K). Columns in order; each column's
    error is spread over the later ones through the upper Cholesky factor of H^-1, within a
    block of BLOCK columns at once and onto the columns after it by one matrix product (the
    paper's lazy batch updates: same result, BLAS-bound)."""
    w = w.astype(np.float64).copy()
    h = h.copy()
    k_dim = w.shape[2]
    diag = np.einsum("gkk->gk", h)
    dead = diag <= 0
    idx = np.nonzero(dead)
    h[idx[0], idx[1], idx[1]] = 1.0
    k_idx = np.arange(k_dim)
    h[:, k_idx, k_idx] += DAMP * np.maximum(diag.mean(axis=1), 1e-12)[:, None]
    u = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)   # upper: H^-1 = U^T U
    s = np.maximum(scale.astype(np.float64), 1e-30)
    q = np.empty(w.shape, np.int8)
    for b0 in range(0, k_dim, BLOCK):
        b1 = min(b0 + BLOCK, k_dim)
        errs = np.empty(w.shape[:2] + (b1 - b0,))
        for k in range(b0, b1):
            col = w[:, :, k]
            qk = np.clip(np.round(col / s), -127, 127)
            q[:, :, k] = qk
            err = (col - qk * s) / u[:, k, k][:, None]
            w[:, :, k + 1:b1] -= err[:, :, None] * u[:, None, k, k + 1:b1]
            errs[:, :, k - b0] = err
        w[:, :, b1:] -= np.matmul(errs, u[:, b0:b1, b1:])
    return q


def _window(layer: Layer, w: np.ndarray) -> tuple:
    """What H depends on: the input tensor and how the layer reads it."""
    if layer.node.op_type != "Conv":
        return (layer.source,)
    attrs = tuple((a.name, tuple(a.ints) or a.i) for a in sorted(layer.node.attribute,
                                                                 key=lambda a: a.name))
    return (layer.source, w.shape[1:], attrs)


def _output_error(w: np.ndarray, q: np.ndarray, s: np.ndarray, h: np.ndarray) -> float:
    """sum over rows of d^T H d, d the row's weight error; on every k-th row of large layers
    (an estimate that only decides GPTQ or nearest)."""
    step = max(1, w.shape[1] // 256)
    w, q, s = w[:, ::step], q[:, ::step], s[:, ::step]
    d = w.astype(np.float64) - q * s[:, :, None]
    return float(np.sum(np.matmul(d, h) * d))


def _conv_attrs(node: Any, spatial: int) -> tuple[int, list[int], list[int], list[int]]:
    from onnx import helper

    a = {x.name: helper.get_attribute_value(x) for x in node.attribute}  # VALID: no pads
    return (int(a.get("group", 1)), list(a.get("pads", [0] * 2 * spatial)),
            list(a.get("strides", [1] * spatial)), list(a.get("dilations", [1] * spatial)))


def _columns(x: np.ndarray, w: np.ndarray, node: Any) -> np.ndarray:
    """The layer input as (groups, K, P): K per output row, P positions (strided down to at
    most MAX_COLUMNS)."""
    x = x.astype(np.float32, copy=False)
    if node.op_type != "Conv":
        cols = x.reshape(-1, x.shape[-1])[None].transpose(0, 2, 1)
        return cols[:, :, ::max(1, -(-cols.shape[2] // MAX_COLUMNS))]
    if w.ndim == 3:                                  # 1-D conv as 2-D with height 1
        x, w = x[:, :, None], w[:, :, None]
        g, p, st, dil = _conv_attrs(node, 1)
        p, st, dil = [0, p[0], 0, p[1]], [1, st[0]], [1, dil[0]]
    else:
        g, p, st, dil = _conv_attrs(node, 2)
    cg, kh, kw = w.shape[1:]
    xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[2]), (p[1], p[3])))
    n, c, hp, wp = xp.shape
    oh = (hp - dil[0] * (kh - 1) - 1) // st[0] + 1
    ow = (wp - dil[1] * (kw - 1) - 1) // st[1] + 1
    cols = np.empty((n, c, kh, kw, oh, ow), np.float32)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xp[:, :, i * dil[0]: i * dil[0] + st[0] * (oh - 1) + 1: st[0],
                                  j * dil[1]: j * dil[1] + st[1] * (ow - 1) + 1: st[1]]
    cols = cols.reshape(n, g, cg * kh * kw, oh * ow).transpose(1, 2, 0, 3)
    cols = cols.reshape(g, cg * kh * kw, n * oh * ow)
    return cols[:, :, ::max(1, -(-cols.shape[2] // MAX_COLUMNS))]


def _as_rows(w: np.ndarray, node: Any) -> np.ndarray:
    """Weights as (groups, rows, K), rows being the output channels."""
    if node.op_type == "Conv":
        g = _conv_attrs(node, w.ndim - 2)[0]
        return w.reshape(g, w.shape[0] // g, -1)
    trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return (w if trans else w.T)[None]


def _from_rows(q: np.ndarray, shape: tuple[int, ...], node: Any) -> np.ndarray:
    if node.op_type == "Conv":
        return q.reshape(shape)
    trans = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return np.ascontiguousarray(q[0] if trans else q[0].T)
