"""Block-wise INT4 weight-only quantization of MatMul/Gemm weights, for TensorRT's
weight-only INT4 GEMM (ONNX DequantizeLinear-21 with `block_size` on the weight, the
activations stay float), with an AWQ-style scale search.

A weight W [K, N] (K: the reduction axis) is cut into blocks of B rows along K; each
(block, output column) gets one symmetric scale s = max|W_block| / 7 and
q = clip(round(W / s), -8, 7): ModelOpt's INT4 block quantizer.

AWQ (Lin et al. 2023, arXiv:2306.00978): input channels that carry large activations
matter more. Scaling channel k of W up by a_k before rounding and the activation down by
1/a_k keeps the product and moves rounding error to channels that matter less:
    y = (x / a) Q(diag(a) W),   a = m^alpha / sqrt(max(m^alpha) min(m^alpha)),
m_k = mean |x_k| over the calibration rows. alpha comes from a grid, the one that minimises
||X W - (X / a) Q(diag(a) W)||_F^2 on calibration rows X; alpha = 0 (a = 1: plain rounding)
is always a candidate, so the choice is never worse than rounding on those rows. The 1/a
goes into the graph as a Mul before the MatMul (ModelOpt's pre-quant scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

QMIN, QMAX = -8, 7
ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # ModelOpt awq_lite's grid (step 0.1)
CLIPS = tuple(round(1 - 0.05 * i, 2) for i in range(11))  # max ratios 1.0 .. 0.5


def quantize_blocks(w: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """(q int8 in [-8, 7] shaped like w [K, N], scales float32 [K / block, N])."""
    k, n = w.shape
    blocks = w.reshape(k // block, block, n)
    amax = np.abs(blocks).max(axis=1)
    scale = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)  # all-zero block: q = 0
    q = np.clip(np.rint(blocks / scale[:, None, :]), QMIN, QMAX).astype(np.int8)
    return q.reshape(k, n), scale


def clipped_blocks(w: np.ndarray, x: np.ndarray, block: int,
                   ratios: tuple[float, ...] = CLIPS) -> tuple[np.ndarray, np.ndarray]:
    """quantize_blocks with each (block, column) scale clipped to the ratio of its max that
    minimises that block's share of the layer output error on the calibration rows `x`
    [R, K], ||x_block (W_block - deq(q_block))||^2 (AWQ's weight clipping search; ratio 1.0,
    no clipping, is a candidate); a column whose whole error grew keeps no clipping, so no
    column does worse than plain rounding on `x`."""
    k, n = w.shape
    g = k // block
    wb = w.reshape(g, block, n)
    amax = np.abs(wb).max(axis=1)
    best_err = np.full((g, n), np.inf)
    best = np.zeros((g, n), np.float32)
    for ratio in ratios:
        scale = np.where(amax > 0, amax * ratio / QMAX, 1.0).astype(np.float32)
        q = np.clip(np.rint(wb / scale[:, None, :]), QMIN, QMAX)
        diff = q * scale[:, None, :] - wb
        err = np.stack([np.square(x[:, j * block:(j + 1) * block] @ diff[j]).sum(axis=0)
                        for j in range(g)])
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = np.where(better, scale, best)
    # blocks were chosen one by one (cross-block terms ignored): a column whose whole output
    # error came out larger than unclipped keeps the unclipped scales
    plain = np.where(amax > 0, amax / QMAX, 1.0).astype(np.float32)

    def column_error(scale: np.ndarray) -> np.ndarray:
        q = np.clip(np.rint(wb / scale[:, None, :]), QMIN, QMAX)
        return np.square(x @ (q * scale[:, None, :] - wb).reshape(k, n)).sum(axis=0)
    best = np.where(column_error(best) > column_error(plain), plain, best)
    q = np.clip(np.rint(wb / best[:, None, :]), QMIN, QMAX).astype(np.int8)
    return q.reshape(k, n), best


def dequantize_blocks(q: np.ndarray, scale: np.ndarray, block: int) -> np.ndarray:
    """What DequantizeLinear(q, scale, axis=0, block_size=block) computes."""
    k, n = q.shape
    return (q.reshape(k // block, block, n) * scale[:, None, :]).reshape(k, n)


@dataclass
class Quantized:
    """One weight in INT4: q [K, N], scales [K / block, N], the activation's channel
    divisor a [K] (all ones: none), the alpha chosen and the output error on the calibration
    rows relative to plain rounding's (1.0 = no better)."""

    q: np.ndarray
    scale: np.ndarray
    divisor: np.ndarray
    alpha: float
    error_ratio: float


def awq(w: np.ndarray, x: np.ndarray, mean_abs: np.ndarray, block: int,
        alphas: tuple[float, ...] = ALPHAS, clip: bool = True) -> Quantized:
    """The scale search above, then (`clip`) the clipping search of clipped_blocks on the
    scaled weight. `x` [R, K]: calibration rows of the layer input; `mean_abs` [K]: mean |x|
    per channel over all calibration rows."""
    w = w.astype(np.float32)
    x = x.astype(np.float32)
    ref = x @ w
    m = mean_abs.astype(np.float64)
    m = np.maximum(m, max(1e-4 * m.max(), 1e-8))  # ModelOpt's floor: 1/a stays in FP16 range
    best: tuple | None = None  # (error, alpha, q, scale, a)
    plain = 0.0
    for alpha in (0.0, *(a for a in alphas if a)):  # plain rounding first: the yardstick
        a = m ** alpha
        a = (a / np.sqrt(a.max() * a.min())).astype(np.float32) if alpha else np.ones_like(
            a, np.float32)
        q, scale = quantize_blocks(w * a[:, None], block)
        error = output_error(x / a, q, scale, block, ref)
        plain = error if alpha == 0 else plain
        if best is None or error < best[0]:
            best = (error, alpha, q, scale, a)
    assert best is not None
    error, alpha, q, scale, a = best
    if clip:
        q, scale = clipped_blocks(w * a[:, None], x / a, block)
        error = output_error(x / a, q, scale, block, ref)
    return Quantized(q, scale, a, alpha, error / plain if plain > 0 else 1.0)


def output_error(x: np.ndarray, q: np.ndarray, scale: np.ndarray, block: int,
                 ref: np.ndarray) -> float:
    """||x deq(q) - ref||^2: a layer's output error on the rows `x`."""
    return float(np.square(x @ dequantize_blocks(q, scale, block) - ref).sum())


def gptq_blocks(w: np.ndarray, h: np.ndarray, x: np.ndarray, block: int) -> Quantized:
    """GPTQ (quant.rounding.gptq, columns = K) on the grid clipped_blocks chooses on the
    calibration rows `x` [R, K]; `h` [K, K]: the input's second moment over all calibration
    rows. error_ratio against plain rounding on `x`."""
    from .rounding import device, gptq

    w = w.astype(np.float32)
    _, scale = clipped_blocks(w, x, block)
    per_weight = np.repeat(scale, block, axis=0)  # [K, N]
    q = gptq(w.T[None], h[None], per_weight.T[None], device(), (QMIN, QMAX))[0].T
    plain = nearest(w, block)
    ref = x @ w
    error = output_error(x, q, scale, block, ref)
    base = output_error(x, plain.q, plain.scale, block, ref)
    return Quantized(np.ascontiguousarray(q), scale, plain.divisor, 0.0,
                     error / base if base > 0 else 1.0)


def nearest(w: np.ndarray, block: int) -> Quantized:
    """Plain rounding, no activation scaling."""
    q, scale = quantize_blocks(w.astype(np.float32), block)
    return Quantized(q, scale, np.ones(w.shape[0], np.float32), 0.0, 1.0)


INT4_OPSET = 21  # DequantizeLinear's block_size and the INT4 type
INT4_IR = 10


@dataclass(frozen=True)
class Target:
    """A MatMul/Gemm whose weight (an initializer) goes to INT4: node index and name, its
    activation input, the weight's name, K (reduction) and N, and whether it is stored
    [N, K] (Gemm transB=1)."""

    index: int
    node: str
    activation: str
    weight: str
    k: int
    n: int
    transposed: bool


def targets(model: Any, block: int) -> tuple[list[Target], list[dict[str, str]]]:
    """(the weights to quantize, [{node, reason}] for weight MatMul/Gemm nodes left float).
    A weight is a float32 rank-2 initializer in input 1 of a MatMul, or of a Gemm without
    transA; K must be a multiple of the block size."""
    from onnx import TensorProto

    inits = {i.name: i for i in model.graph.initializer}
    found, skipped = [], []
    for k, node in enumerate(model.graph.node):
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or init.data_type != TensorProto.FLOAT:
            continue
        attrs = {a.name: a.i for a in node.attribute if a.type == a.INT}
        if len(init.dims) != 2 or attrs.get("transA", 0):
            skipped.append({"node": node.name, "reason": f"weight of rank {len(init.dims)}"
                            if len(init.dims) != 2 else "transA"})
            continue
        transposed = bool(attrs.get("transB", 0))
        n, kk = init.dims if transposed else init.dims[::-1]
        if kk % block:
            skipped.append({"node": node.name, "reason": f"K={kk} is not a multiple of the "
                                                         f"block size {block}"})
            continue
        found.append(Target(k, node.name, node.input[0], node.input[1], int(kk), int(n),
                            transposed))
    return found, skipped


def weight(init: Any, t: Target) -> np.ndarray:
    """Target t's weight (its initializer `init`) as FP32 [K, N]."""
    from onnx import numpy_helper

    w = numpy_helper.to_array(init)
    return w.T if t.transposed else w


def insert(model: Any, chosen: dict[int, tuple[Target, Quantized]], block: int) -> Any:
    """A copy of `model` (opset >= 21) where each chosen node reads its weight through
    DequantizeLinear(q INT4, scales, block_size) and, where AWQ scaled it, its activation
    through Mul(x, 1/a). The FP32 weights no longer read are dropped."""
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    from ..onnx import io

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = max(m.ir_version, INT4_IR)
    g = m.graph
    before: dict[int, list] = {}
    for index, (t, qz) in chosen.items():  # by position: node names need not be unique
        node = g.node[index]
        q, scale = (qz.q.T, qz.scale.T) if t.transposed else (qz.q, qz.scale)
        base = f"{node.name or 'node'}_{index}_int4"
        g.initializer.append(numpy_helper.from_array(  # packed two to a byte
            np.ascontiguousarray(q).astype(ml_dtypes.int4), f"{base}_q"))
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(scale), f"{base}_scale"))
        new = [helper.make_node("DequantizeLinear", [f"{base}_q", f"{base}_scale"],
                                [f"{base}_w"], name=f"{base}_dq",
                                axis=1 if t.transposed else 0, block_size=block)]
        node.input[1] = f"{base}_w"
        if not np.all(qz.divisor == 1):
            g.initializer.append(numpy_helper.from_array(
                (1.0 / qz.divisor).astype(np.float32), f"{base}_awq_inv"))
            new.append(helper.make_node("Mul", [t.activation, f"{base}_awq_inv"],
                                        [f"{base}_awq_x"], name=f"{base}_awq"))
            node.input[0] = f"{base}_awq_x"
        before[index] = new
    nodes = [n for k, old in enumerate(g.node) for n in [*before.get(k, []), old]]
    del g.node[:]
    g.node.extend(nodes)
    io.drop_unused_initializers(g)
    return m
