"""Quantize stage: the calibrated thresholds -> out/model.int8.onnx with explicit Q/DQ
(placement in trtbuild.quant.qdq), weights rounded against their layer's calibration inputs
unless --weight-rounding nearest (trtbuild.quant.rounding), its float parts in FP16 unless
--high-precision fp32 (trtbuild.quant.mixed), checked with onnx.checker; the validate stage
runs it."""

from __future__ import annotations

import logging
from typing import Any

from ..context import Context
from ..errors import MISSING_CAPABILITY, TrtBuildError
from ..onnx import io
from ..progress import bar
from ..quant.qdq import insert_qdq, plan
from ..records import QuantizeRecord

log = logging.getLogger(__name__)


def run(ctx: Context) -> QuantizeRecord:
    model = base_model(ctx)
    qplan = plan(model)
    rounding = _round_weights(ctx, model, qplan)
    qmodel = insert_qdq(model, qplan, ctx.int8.amaxes, ctx.int8.weights)
    parts = with_float_parts(ctx, qmodel)
    corrected = correct_biases(ctx, parts)
    record = write_int8(ctx, qmodel, parts)
    record["weight_rounding"] = rounding
    record["bias_correction"] = corrected
    ops = [n.op_type for n in qmodel.graph.node]
    record.update(quantized_activations=ops.count("QuantizeLinear"),
                  quantized_weights=len(qplan.weights),
                  dequantize_nodes=ops.count("DequantizeLinear"))
    return QuantizeRecord.of(record)


def base_model(ctx: Context) -> Any:
    """The clean model Q/DQ goes into (SmoothQuant's scales applied): at the opset FP16 Q/DQ
    scales need when the float parts are FP16 (converted once per build, not for every
    model the sensitivity search tries), else as cleaned."""
    if ctx.int8.qdq_base is not None:
        return ctx.int8.qdq_base
    from .calibrate import smoothed_model

    model = smoothed_model(ctx)
    if ctx.settings.calib.high_precision == "fp16":
        from ..quant.mixed import FP16_QDQ_OPSET, at_opset

        # no second shape inference: smoothed_model inferred the shapes, a bump keeps them
        # and the converter infers its own (onnx's pass held 1.3 GB more on vit_b_16)
        try:
            model = at_opset(model, FP16_QDQ_OPSET)
        except TrtBuildError:  # with_float_parts says so, and keeps FP32
            pass
    ctx.int8.qdq_base = model
    ctx.int8.smoothed = None  # held as qdq_base (or its converted copy) from here on
    return model


def _round_weights(ctx: Context, model: Any, qplan: Any) -> dict[str, Any]:
    """GPTQ-rounded weights into ctx.int8.weights; the record's weight_rounding entry."""
    ctx.int8.weights = {}
    method, source = ctx.settings.calib.weight_rounding, ctx.settings.calib.data
    if method == "nearest":
        return {"method": "nearest"}
    if not source:  # a reused calibration cache brings thresholds, not layer inputs
        return {"method": "nearest", "note": "no calibration data (--calib-cache only)"}
    from ..quant.rounding import round_weights

    data = ctx.dataset(source)
    feeds = data.batches()
    with bar("weight rounding: layer inputs", None) as progress:
        ctx.int8.weights, summary = round_weights(model, qplan, feeds, io.session, progress,
                                                  ctx.int8.moments)
    ctx.int8.moments = None  # large (fcn_resnet50: hundreds of MB), and used
    return {"method": "gptq", **summary}


def correct_biases(ctx: Context, parts: tuple) -> dict[str, Any]:
    """--bias-correction on: the biases of the model to write and of its CPU check (`parts`
    of with_float_parts), corrected in place (quant/bias.py); the record's entry."""
    if ctx.settings.calib.bias_correction != "on":
        return {"applied": False}
    source = ctx.settings.calib.data
    if not source:
        return {"applied": False, "note": "no calibration data (--calib-cache only)"}
    import time

    from ..data import named_batches, rows
    from ..quant.bias import BIAS_SAMPLES, apply, corrections

    model, check, _ = parts
    start = time.perf_counter()
    feeds = [feed for _, feed in named_batches(ctx.dataset(source), BIAS_SAMPLES)]
    with bar("bias correction", None) as progress:
        found = corrections(check, ctx.clean_model(), feeds, io.session,
                            on_step=progress.advance)
    for graph in {id(m): m for m in (model, check)}.values():
        apply(graph, found.biases)
    return {"applied": found.kept > 0, "layers": found.kept,
            "layers_tried": max(len(found.errors) - 1, 0),
            "output_error": [round(e, 6) for e in found.errors],
            "samples": sum(rows(f) for f in feeds),
            "seconds": round(time.perf_counter() - start, 2)}


def write_int8(ctx: Context, qdq: Any, parts: tuple | None = None) -> dict[str, Any]:
    """Write the INT8 Q/DQ model (float parts per --high-precision, `parts` when
    with_float_parts already made them) to out/model.int8.onnx and set what the CPU check
    runs; returns record fields."""
    out = ctx.out / "model.int8.onnx"
    model, check, record = parts or with_float_parts(ctx, qdq)
    if "high_precision_note" in record:
        log.warning("%s: float parts stay FP32: %s", out, record["high_precision_note"])
    # bytes, or past 2 GiB the ModelProto itself (io.session and validate.check take both)
    ctx.int8.check = None if check is qdq or check is model else (
        check if io.is_large(check) else check.SerializeToString())
    io.check_model(model, out, ours=True)
    io.save(model, out)
    ctx.artifacts.int8 = out
    return {"output": str(out), **record}


def with_float_parts(ctx: Context, qdq: Any) -> tuple[Any, Any, dict[str, Any]]:
    """(the model to write, what the CPU check runs for it, record fields) for a Q/DQ model:
    its float parts in FP16 with that graph's emulation as the check (--high-precision
    fp16), else FP32 and the model itself, also when FP16 conversion is not possible."""
    record: dict[str, Any] = {"high_precision": ctx.settings.calib.high_precision}
    if ctx.settings.calib.high_precision != "fp16":
        return qdq, qdq, record
    from ..quant.mixed import to_fp16

    try:
        model, emulation, info = to_fp16(qdq, ctx.settings.fp16_options, ctx.probe_feeds(),
                                         ctx.int8.fp16_ranges)
    except TrtBuildError as e:
        if e.code != MISSING_CAPABILITY:
            raise
        record.update(high_precision="fp32", high_precision_note=str(e))
        return qdq, qdq, record
    record.update(fp16_nodes=info.get("fp16_nodes"), fp32_nodes=info.get("fp32_nodes"),
                  auto_fp32=info["auto_fp32"])
    if "not_emulated" in info:  # validate runs the written file on ONNX Runtime's kernels
        record["not_emulated"] = info["not_emulated"]
        log.warning("INT8 model's FP16 parts not emulated (%s): checked on ONNX Runtime's "
                    "FP16 kernels", info["not_emulated"])
    return model, emulation, record
