"""Calibrate stage: thresholds for every tensor the Q/DQ plan needs, streamed over the
calibration data with ONNX Runtime (trtbuild.calib), written to out/calib.cache; or reused
from an existing TensorRT calibration cache that covers the model."""

from __future__ import annotations

import logging
from typing import Any

from ..calib import cachefile, merge
from ..config import CalibSettings
from ..context import Context
from ..errors import TrtBuildError
from ..onnx import io
from ..onnx.inputs import model_inputs
from ..progress import bar
from ..quant.qdq import QuantPlan, plan
from ..report import Timer

log = logging.getLogger(__name__)


def required_tensors(model: Any, qplan: QuantPlan) -> list[str]:
    """Graph float inputs first (TensorRT asks for them), then the planned activations."""
    floats = [s.name for s in model_inputs(model) if s.dtype.kind == "f"]
    return floats + [t for t in qplan.activations if t not in floats]


def run(ctx: Context) -> dict[str, Any]:
    """Thresholds for the cleaned model's Q/DQ tensors -> ctx.int8.amaxes and out/calib.cache.

    Uses the given calibration cache when it covers every needed tensor; otherwise
    recalibrates from the data and says why. Raises TrtBuildError(2) when the model has
    nothing to quantize, or when neither cache nor data can provide thresholds.
    """
    s = ctx.settings.calib
    model = ctx.clean_model()
    qplan = plan(model)
    control_flow = [n.op_type for n in model.graph.node if io.subgraphs(n)]
    if not qplan.activations and not qplan.weights and not control_flow:
        raise TrtBuildError(f"{ctx.artifacts.clean}: nothing to quantize: no Conv, "
                            "ConvTranspose, Gemm, MatMul or pooling node with float inputs")
    needed = required_tensors(model, qplan)
    record: dict[str, Any] = {"method": s.method, "plan_activations": len(qplan.activations),
                              "plan_weights": len(qplan.weights)}
    if control_flow:
        record["left_float"] = (f"{len(control_flow)} control-flow node(s) "
                                f"({', '.join(sorted(set(control_flow)))}): their subgraphs "
                                "stay in float; Q/DQ goes in the main graph only")
        log.warning("%s: %s", ctx.artifacts.clean, record["left_float"])
    amaxes = _from_cache(s, needed, record)
    if amaxes is None:
        amaxes = _calibrate(ctx, model, qplan, needed, record)
    cache_path = ctx.out / "calib.cache"
    cachefile.write(cache_path, amaxes, s.method)
    ctx.artifacts.calib_cache = cache_path
    ctx.int8.amaxes = amaxes
    record.update(output=str(cache_path), tensors=len(amaxes))
    return record


def _calibrate(ctx: Context, model: Any, qplan: QuantPlan, needed: list[str],
               record: dict) -> dict[str, float]:
    s = ctx.settings.calib
    if not s.data:
        raise TrtBuildError(f"{s.cache}: calibration cache does not match this model "
                            f"({record['cache_status']}) and no --calib data was given")
    data = ctx.dataset(s.data)
    moments = None
    if s.weight_rounding == "gptq":  # the quantize stage's GPTQ statistics, in this pass
        from ..quant.rounding import Moments

        moments = Moments(model, qplan)
    with Timer() as t, bar("calibrating", len(data) or None) as progress:
        # sharded over workers only inside merge.sharding() (a Ray release), same thresholds
        result, shards = merge.calibrate(model, needed, data, s.method, s.percentile,
                                         progress.advance,
                                         (moments.taps, moments.add) if moments else None)
    ctx.int8.moments = moments
    if result.samples == 0:
        raise TrtBuildError(f"{s.data}: the data loader yielded no samples")
    if shards > 1:
        record["shards"] = shards
    record.update(result.record(), calib=str(s.data), calibrate_seconds=round(t.seconds, 3),
                  samples_per_second=round(result.samples / max(t.seconds, 1e-9), 1))
    return result.amaxes


def _from_cache(s: CalibSettings, needed: list[str], record: dict) -> dict | None:
    if not s.cache:
        return None
    cached = cachefile.read(s.cache)
    missing = [t for t in needed if t not in cached]
    if missing:
        record["cache_status"] = (f"{len(missing)} of {len(needed)} tensors missing, "
                                  f"e.g. '{missing[0]}'")
        if s.data:
            log.warning("%s: recalibrating: %s", s.cache, record["cache_status"])
        return None
    record.update(cache_status="reused", calib_cache=str(s.cache))
    return {t: cached[t] for t in needed}
