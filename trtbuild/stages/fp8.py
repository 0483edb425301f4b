"""FP8 stage (--fp8): float8 E4M3 Q/DQ for Ada/Hopper/Blackwell engines, placed where INT8
goes (trtbuild.quant.qdq.plan: Conv/Gemm/MatMul inputs and weights), activations scaled by
their calibration max (E4M3 keeps 3 significant bits over 17 binades, so a range search
gains little; ModelOpt's FP8 default), weights per channel; written to out/model.fp8.onnx
and checked against FP32 on the evaluation data by ONNX Runtime's CPU kernels, which
quantize to E4M3 as QuantizeLinear-19 says (saturating, round to nearest even)."""

from __future__ import annotations

import logging

from ..calib import merge
from ..context import Context
from ..errors import TrtBuildError
from ..onnx import io
from ..progress import bar
from ..quant.mixed import at_opset
from ..quant.qdq import insert_qdq, plan
from ..records import Fp8Record
from . import validate
from .calibrate import required_tensors

log = logging.getLogger(__name__)
FP8_OPSET = 19  # QuantizeLinear/DequantizeLinear with float8 types


def has_fp8(arch: str) -> bool:
    """FP8 tensor cores: compute capability 8.9 (Ada) and newer; 'ampere+' is not."""
    return arch.startswith("sm_") and arch[3:].isdigit() and int(arch[3:]) >= 89


def run(ctx: Context) -> Fp8Record:
    source = ctx.settings.calib.data
    model = at_opset(ctx.clean_model(), FP8_OPSET, "FP8 Q/DQ")
    qplan = plan(model)
    if not qplan.activations and not qplan.weights:
        raise TrtBuildError(f"{ctx.artifacts.clean}: nothing to quantize to FP8: no Conv, "
                            "ConvTranspose, Gemm, MatMul or pooling node with float inputs")
    data = ctx.dataset(source)
    with bar("FP8 ranges", len(data) or None) as progress:
        result, _ = merge.calibrate(model, required_tensors(model, qplan), data, "max",
                                    ctx.settings.calib.percentile, progress.advance)
    if result.samples == 0:
        raise TrtBuildError(f"{source}: the data loader yielded no samples")
    written = insert_qdq(model, qplan, result.amaxes, fmt="fp8")
    out = ctx.out / "model.fp8.onnx"
    io.check_model(written, out, ours=True)
    io.save(written, out)
    ctx.artifacts.fp8 = out
    record = validate.check(ctx, out, "fp8", basic=True)
    record.update(
        quantized_activations=sum(a in result.amaxes for a in qplan.activations),
        quantized_weights=len(qplan.weights), calib=str(source), calib_method="max",
        samples_calibrated=result.samples, output=str(out),
        cpu_check="FP8 E4M3 Q/DQ in ONNX Runtime's CPU kernels (QuantizeLinear-19: "
                  "saturating, round to nearest even; basic graph optimizations), FP32 "
                  "elsewhere")
    return Fp8Record.of(record)
