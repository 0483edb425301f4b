"""The INT8 model's float parts in FP16 (ModelOpt's high_precision_dtype="fp16"): one
strongly typed graph of INT8 Q/DQ regions, FP16 elsewhere, FP32 where FP16 cannot hold
the values (measured: trtbuild.quant.fp16_range) or where precision-sensitive ops are.

Q/DQ nodes take FP16 scales, so a DequantizeLinear feeds its FP16 consumer directly (no
Cast between, which would stop TensorRT fusing the Q/DQ into the layer).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..config import Fp16Settings
from ..errors import MISSING_CAPABILITY, TrtBuildError
from . import fp16
from .emulate import emulate_typed
from .fp16_range import FP16_MAX, FP16_TINY, range_keeps


def to_fp16(qdq: Any, s: Fp16Settings, feeds: list[dict[str, np.ndarray]],
            known: dict[str, str | None] | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(FP16 graph to build, FP32 emulation of that graph for the CPU check, record fields).
    `known`: ranges measured before, reused and added to (fp16_range.range_keeps)."""

    from ..onnx import io

    qdq = io.infer_shapes(at_opset(qdq, FP16_QDQ_OPSET))
    keeps = {**range_keeps(qdq, s, feeds, known), **_scale_keeps(qdq)}
    keeps = _keep_dq_consumers(qdq, keeps)
    keep_at = frozenset(keeps)
    model, info = fp16.convert(qdq, s, keep_at)
    nodes = qdq.graph.node
    info["auto_fp32"] = [{"node": nodes[k].name or f"#{k}", "op": nodes[k].op_type,
                          "reason": why} for k, why in sorted(keeps.items())]
    try:
        emulation = emulate_typed(model)
    except ValueError as e:  # an op shape inference cannot type (a com.microsoft one), or
        # control flow over FP16: the check runs the written graph on ONNX Runtime's kernels
        emulation, info["not_emulated"] = model, str(e)
    return model, emulation, info


FP16_QDQ_OPSET = 19  # QuantizeLinear/DequantizeLinear take float16 scales from opset 19


# between opsets 17 and 19 the ops changed by more types, or by attributes and inputs whose
# defaults keep the old meaning, except these: their axes moved from attribute to input
# (the converter rewrites them), and Split, which needs num_outputs without a split input
AXES_INPUT_18 = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
                           "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd",
                           "ReduceSumSquare"})


def at_opset(model: Any, version: int, purpose: str = "FP16 Q/DQ scales") -> Any:
    """`model` converted to at least `version` (onnx.version_converter). From opset 17 to
    19 without the ops of AXES_INPUT_18 the converter only bumps the opset, gives a Split
    without a split input its num_outputs (its adapter Split_17_18) and infers shapes, so
    that is all done here: it took 0.5 s on resnet18 and held four copies of the weights.
    Raises TrtBuildError(3) when the converter cannot (the caller may fall back to FP32)."""
    from contextlib import nullcontext

    import onnx
    from onnx import version_converter

    from ..onnx import io
    from ..onnx.io import weights_aside

    if io.opset(model) >= version:
        return model
    if io.opset(model) >= 17 and version <= 19 and not any(
            n.op_type in AXES_INPUT_18 for g in io.graphs(model.graph) for n in g.node):
        bumped = onnx.ModelProto()  # what the converter gives, less its shape inference
        bumped.CopyFrom(model)
        for entry in bumped.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version
        for g in io.graphs(bumped.graph):  # Split-18: a split input or num_outputs
            for n in g.node:
                sized = (len(n.input) > 1 and n.input[1]) or any(
                    a.name == "num_outputs" for a in n.attribute)
                if n.op_type == "Split" and n.domain in ("", "ai.onnx") and not sized:
                    n.attribute.append(onnx.helper.make_attribute("num_outputs", len(n.output)))
        return bumped
    try:
        with weights_aside(model) if io.is_large(model) else nullcontext({}) as held:
            converted = version_converter.convert_version(model, version)
    except Exception as e:  # noqa: BLE001 - the converter raises many types
        raise TrtBuildError(f"cannot raise opset {io.opset(model)} to {version} for "
                            f"{purpose} ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                            MISSING_CAPABILITY)
    for init in converted.graph.initializer:  # the converted copy gets the weights too
        if init.name in held:
            init.raw_data = held[init.name]
    return converted


def _scale_keeps(model: Any) -> dict[int, str]:
    """Q/DQ nodes whose scales FP16 cannot hold as normal numbers (a weight channel with
    max |w| < 0.0078 has a scale below 6.1e-5; in FP16 it rounds towards 0, which TensorRT
    rejects): they stay FP32."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    keeps = {}
    for k, n in enumerate(model.graph.node):
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and n.input[1] in inits:
            scale = np.abs(numpy_helper.to_array(inits[n.input[1]]).astype(np.float64))
            if scale.size and (scale.min() < FP16_TINY or scale.max() > FP16_MAX):
                keeps[k] = (f"scale {n.input[1]} in [{scale.min():.3g}, {scale.max():.3g}]: "
                            "not a normal FP16 number")
    return keeps


def _keep_dq_consumers(model: Any, keeps: dict[int, str]) -> dict[int, str]:
    """No Cast between a DequantizeLinear and the layer it quantizes (TensorRT would not
    fuse them): a DQ kept FP32 (a scale FP16 cannot hold) keeps its consumers FP32, and a
    layer kept FP32 keeps the DQs it reads and their Qs FP32."""
    kept_out = {o: model.graph.node[k].name for k in keeps
                if model.graph.node[k].op_type == "DequantizeLinear"
                for o in model.graph.node[k].output}
    out = dict(keeps)
    nodes = model.graph.node
    for k, n in enumerate(nodes):
        for i in n.input:
            if i in kept_out and k not in out:
                out[k] = f"reads {kept_out[i]}, kept FP32"
    # and a layer kept FP32 keeps the Q/DQ pairs it reads (one scale, one precision)
    producer = {o: k for k, n in enumerate(nodes) for o in n.output}
    for k in list(out):
        for i in nodes[k].input:
            dq = producer.get(i)
            if dq is None or nodes[dq].op_type != "DequantizeLinear" or dq in out:
                continue
            out[dq] = f"feeds {nodes[k].name or k}, kept FP32"
            q = producer.get(nodes[dq].input[0])
            if q is not None and nodes[q].op_type == "QuantizeLinear" and q not in out:
                out[q] = f"pairs with {nodes[dq].name or dq}, kept FP32"
    return out
