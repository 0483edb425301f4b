"""INT4 stage (--int4-weights): MatMul/Gemm weights to block-wise INT4 (trtbuild.quant.int4),
activations in float (FP16 with --fp16, converted as the fp16 stage converts the FP32 graph),
written to out/model.int4.onnx and checked against the FP32 model on the evaluation data,
running the written graph with its weights dequantized exactly (quant.emulate.dequantized),
as TensorRT's weight-only GEMM multiplies them, FP16 tensors emulated.

AWQ's statistics come from one ONNX Runtime pass over the --calib data: the mean |x| of
every input channel of each quantized layer, and a bounded uniform sample of its input rows
(ROWS, reservoir-sampled) on which each layer's scaling is chosen."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..context import Context
from ..errors import TrtBuildError
from ..onnx import io
from ..progress import bar
from ..quant import fp16, int4
from ..quant.emulate import dequantized, emulate_typed
from ..quant.fp16_range import range_keeps
from ..quant.mixed import at_opset
from ..records import Int4Record
from . import validate

log = logging.getLogger(__name__)
ROWS = 512  # calibration rows per layer that its scaling is judged on (R x K x N per alpha)
# GPTQ keeps one K x K second moment per distinct layer input, all at once: an input wider
# than this (an LLM's MLP down projection, K = 14336: 0.8 GB alone) gets AWQ instead; the
# rest is about 4 K^2 bytes per input (a 7B Llama's: about 6 GB)
MAX_GPTQ_K = 8192


def run(ctx: Context) -> Int4Record:
    s = ctx.settings.int4
    model = at_opset(ctx.clean_model(), int4.INT4_OPSET, "INT4 weights (DequantizeLinear "
                                                         "block_size)")
    found, skipped = int4.targets(model, s.block_size)
    if not found:
        why = f" ({skipped[0]['node']}: {skipped[0]['reason']})" if skipped else ""
        raise TrtBuildError(f"{ctx.artifacts.clean}: no MatMul/Gemm weight to quantize to "
                            f"INT4{why}")
    stats = _activations(ctx, model, found, s.method == "gptq") if s.method != "nearest" \
        else {}
    chosen, used = {}, {}
    inits = {i.name: i for i in model.graph.initializer}
    with bar("INT4 weights", len(found)) as progress:
        for t in found:
            w = int4.weight(inits[t.weight], t)
            mean_abs, rows, h = stats.get(t.activation, (None, None, None))
            how = "nearest" if rows is None else "gptq" if h is not None else "awq"
            chosen[t.index] = (t, int4.nearest(w, s.block_size) if how == "nearest" else
                              int4.gptq_blocks(w, h, rows, s.block_size) if how == "gptq" else
                              int4.awq(w, rows, mean_abs, s.block_size))
            used[how] = used.get(how, 0) + 1
            progress.advance(1)
    written = int4.insert(model, chosen, s.block_size)
    half = ctx.settings.fp16 and ctx.settings.fp16_options.mode == "graph"
    keeps: dict[int, str] = {}
    if half:  # FP16 activations and scales, as the fp16 stage converts the FP32 graph
        written = io.infer_shapes(written)
        keeps = range_keeps(written, ctx.settings.fp16_options, ctx.probe_feeds())
        written, _ = fp16.convert(written, ctx.settings.fp16_options, frozenset(keeps))
    out = ctx.out / "model.int4.onnx"
    io.check_model(written, out, ours=True)
    io.save(written, out)
    ctx.artifacts.int4 = out
    check = dequantized(written)
    record = validate.check(ctx, emulate_typed(check) if half else check, "int4")
    shapes = {t.weight: t.k * t.n for t in found}  # a weight two MatMuls share: once
    fp32_bytes = 4 * sum(shapes.values())
    int4_bytes = sum(t.k * t.n // 2 + 4 * t.k * t.n // s.block_size for t in found)  # each copy
    alphas = [q.alpha for _, q in chosen.values()]
    record.update(
        method=s.method, block_size=s.block_size, quantized_weights=len(found),
        layers_by_method=used,
        left_float=skipped, weight_mb_fp32=round(fp32_bytes / 2**20, 2),
        weight_mb_int4=round(int4_bytes / 2**20, 2), output=str(out),
        activations="fp16" if half else "fp32",
        **({"auto_fp32": len(keeps)} if half else {}),
        cpu_check="INT4 weights dequantized exactly (q x scale)" + (
            ", FP16 tensors emulated (rounded, overflow to inf)" if half else "")
        + ", FP32 kernels",
        **({"awq_scaled": sum(a > 0 for a in alphas),
            "awq_alpha_median": float(np.median(alphas))} if s.method == "awq" else {}),
        **({"error_ratio_median": round(float(np.median(  # vs rounding, calibration rows
            [q.error_ratio for _, q in chosen.values()])), 4)} if stats else {}))
    return Int4Record.of(record)


def _activations(ctx: Context, model: Any, found: list,
                 moments: bool = False) -> dict[str, tuple]:
    """{activation: (mean |x| per channel [K], sampled rows [<= ROWS, K], with `moments`
    sum x x^T [K, K] over all rows (K <= MAX_GPTQ_K) else None)} over the --calib data, by
    one ONNX Runtime pass with every quantized layer's input as an output."""
    from ..calib.stream import layer_inputs, reservoir

    source = ctx.settings.calib.data
    if not source:
        raise TrtBuildError("--int4-method awq/gptq chooses each layer's weights on "
                            "calibration data: give --calib DIR (or --int4-method nearest)")
    k_of = {t.activation: t.k for t in found}  # one entry per distinct layer input
    names = list(k_of)
    rng = np.random.default_rng(0)
    sums = {n: np.zeros(k_of[n]) for n in names}
    second = {n: np.zeros((k_of[n], k_of[n]), np.float32) for n in names
              if moments and k_of[n] <= MAX_GPTQ_K}
    seen = dict.fromkeys(names, 0)
    kept: dict[str, np.ndarray] = {}
    data = ctx.dataset(source)
    with bar("INT4 statistics", len(data) or None) as progress:
        for samples, values in layer_inputs(model, k_of, data, ctx.artifacts.clean, source):
            for n, x in values.items():
                sums[n] += np.abs(x).sum(axis=0)
                if n in second:
                    second[n] += x.T @ x
                kept[n] = reservoir(kept.get(n), x, seen[n], rng, ROWS)
                seen[n] += len(x)
            progress.advance(samples)
    if not all(seen.values()):
        raise TrtBuildError(f"{source}: the data loader yielded no samples")
    return {n: (sums[n] / seen[n], kept[n], second.get(n)) for n in names}
