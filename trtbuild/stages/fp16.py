"""FP16 stage: the graph in float16 (trtbuild.quant.fp16), then its accuracy on the CPU
against the FP32 model. ONNX Runtime runs the FP16 model where it has FP16 kernels; where it
has none (NOT_IMPLEMENTED at session creation) the check runs the Cast round-trip simulation
instead and says so in the record."""

from __future__ import annotations

from typing import Any

from ..context import Context
from ..onnx import io
from ..quant import fp16
from . import validate


def run(ctx: Context) -> dict[str, Any]:
    s = ctx.settings.fp16_options
    clean = ctx.clean_model()
    model, info = fp16.convert(clean, s)
    out = ctx.out / "model.fp16.onnx"
    io.check_model(model, out)
    io.save(model, out)
    ctx.artifacts.fp16 = out
    check = out
    missing = _missing_kernel(model)
    if missing is None:
        info["cpu_check"] = "fp16 model"
    else:
        check = ctx.out / "model.fp16sim.onnx"
        io.save(fp16.simulated(clean, s), check)
        info["cpu_check"] = f"cast round-trip simulation ({missing})"
    record = validate.check(ctx, check, "fp16")
    record.update(info, output=str(out))
    return record


def _missing_kernel(model: Any) -> str | None:
    """ONNX Runtime's message when it lacks an FP16 kernel for some node, else None."""
    from onnxruntime.capi.onnxruntime_pybind11_state import NotImplemented as NotImpl

    try:
        io.session(model)
    except NotImpl as e:
        return str(e).splitlines()[0][:120]
    return None
