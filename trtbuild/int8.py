"""The INT8 stages as the driver and the CLI call them: calibrate -> quantize.

calibrate: dataset -> thresholds -> calib.cache (+ reuse of an existing cache)
quantize:  thresholds -> model.int8.onnx (Q/DQ), checked with onnx.checker and ONNX Runtime
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import calib_cache, onnxio
from .calibrate import CalibSettings, calibrate
from .data import Dataset, Preprocess, model_inputs
from .errors import TrtBuildError
from .progress import bar
from .quantize import QuantPlan, insert_qdq, plan
from .report import Timer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Settings:
    calib: str | None = None          # directory or file.py:fn
    calib_cache: Path | None = None
    method: str = "entropy"
    percentile: float = 99.99
    batch_size: int = 16
    max_samples: int = 0
    preprocess: dict | None = None    # flag overrides of preprocess.json


def required_tensors(model: Any, qplan: QuantPlan) -> list[str]:
    """Graph float inputs first (TensorRT asks for them), then the planned activations."""
    floats = [s.name for s in model_inputs(model) if s.dtype.kind == "f"]
    return floats + [t for t in qplan.activations if t not in floats]


def open_dataset(source: str, model: Any, s: Int8Settings) -> Dataset:
    inputs = model_inputs(model)
    pre = None
    if not str(source).endswith(".py") and ":" not in str(source):
        folder = Path(source)
        if folder.is_dir():
            pre = Preprocess.from_dir(folder, **(s.preprocess or {}))
    return Dataset(source, inputs, s.batch_size, s.max_samples, pre)


def run_calibrate(model: Any, out_dir: Path, s: Int8Settings) -> tuple[dict, dict[str, Any]]:
    """Thresholds for the model's Q/DQ tensors, written to out_dir/calib.cache.

    Uses `s.calib_cache` when it covers every needed tensor; otherwise recalibrates from
    `s.calib` and says why. Raises TrtBuildError (2) when neither can provide thresholds.
    `model`: a loaded ModelProto (the cleaned model).
    """
    qplan = plan(model)
    needed = required_tensors(model, qplan)
    record: dict[str, Any] = {"method": s.method, "plan_activations": len(qplan.activations),
                              "plan_weights": len(qplan.weights)}
    amaxes = _from_cache(s, needed, record)
    if amaxes is None:
        if not s.calib:
            raise TrtBuildError(f"{s.calib_cache}: calibration cache does not match this model "
                                f"({record['cache_status']}) and no --calib data was given")
        data = open_dataset(s.calib, model, s)
        with Timer() as t, bar("calibrating", len(data) or None) as advance:
            result = calibrate(model, needed, data, CalibSettings(s.method, s.percentile), advance)
        if result.samples == 0:
            raise TrtBuildError(f"{s.calib}: the data loader yielded no samples")
        amaxes = result.amaxes
        record.update(result.record(), calib=str(s.calib), calibrate_seconds=round(t.seconds, 3),
                      samples_per_second=round(result.samples / max(t.seconds, 1e-9), 1))
    cache_path = out_dir / "calib.cache"
    calib_cache.write(cache_path, amaxes, s.method)
    record.update(output=str(cache_path), tensors=len(amaxes))
    return amaxes, record


def _from_cache(s: Int8Settings, needed: list[str], record: dict) -> dict | None:
    if not s.calib_cache:
        return None
    cached = calib_cache.read(s.calib_cache)
    missing = [t for t in needed if t not in cached]
    if missing:
        record["cache_status"] = (f"{len(missing)} of {len(needed)} tensors missing, "
                                  f"e.g. '{missing[0]}'")
        if s.calib:
            log.warning("%s: recalibrating: %s", s.calib_cache, record["cache_status"])
        return None
    record.update(cache_status="reused", calib_cache=str(s.calib_cache))
    return {t: cached[t] for t in needed}


def run_quantize(model: Any, amaxes: dict[str, float], out: Path) -> dict[str, Any]:
    """Write the Q/DQ model to `out` (checked by onnx.checker; the validate stage runs it)."""
    qplan = plan(model)
    qmodel = insert_qdq(model, qplan, amaxes)
    onnxio.check_model(qmodel, out)
    onnxio.save(qmodel, out)
    ops = [n.op_type for n in qmodel.graph.node]
    return {"output": str(out), "quantized_activations": ops.count("QuantizeLinear"),
            "quantized_weights": len(qplan.weights),
            "dequantize_nodes": ops.count("DequantizeLinear")}
