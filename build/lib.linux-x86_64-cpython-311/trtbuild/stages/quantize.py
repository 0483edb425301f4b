"""Quantize stage: the calibrated thresholds -> out/model.int8.onnx with explicit Q/DQ
(placement in trtbuild.quant.qdq), checked with onnx.checker; the validate stage runs it."""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..onnx import io
from ..quant.qdq import insert_qdq, plan


def run(ctx: Context) -> dict[str, Any]:
    model = ctx.clean_model()
    qplan = plan(model)
    qmodel = insert_qdq(model, qplan, ctx.amaxes)
    out = ctx.out / "model.int8.onnx"
    io.check_model(qmodel, out)
    io.save(qmodel, out)
    ctx.artifacts.int8 = out
    ops = [n.op_type for n in qmodel.graph.node]
    return {"output": str(out), "quantized_activations": ops.count("QuantizeLinear"),
            "quantized_weights": len(qplan.weights),
            "dequantize_nodes": ops.count("DequantizeLinear")}
