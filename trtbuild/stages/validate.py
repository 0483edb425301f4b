"""Validate stage: accuracy of a candidate (INT8 Q/DQ, FP16, engine) against the FP32
reference, through Polygraphy's Comparator with per-precision tolerances, plus the metrics
and gates in trtbuild.metrics.

run(ctx)          the INT8 Q/DQ model (build) or any precision's model (trtbuild validate)
check(ctx, ...)   one candidate ONNX model; the FP16 stage uses it too
run_engines(ctx)  every engine this machine can run, each with the runtime that built it
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..context import Context
from ..data import named_batches, read_labels
from ..metrics import batch_axes, compare, feature_outputs, gate_failures, stack
from ..records import EngineChecksRecord, ValidateRecord

log = logging.getLogger(__name__)
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (1e-2, 1e-2), "int8": (1e-1, 1e-1),
              "int4": (1e-1, 1e-1), "fp8": (1e-1, 1e-1)}  # atol, rtol


def run(ctx: Context, precision: str = "int8") -> ValidateRecord:
    """CPU accuracy of the `precision` model against the cleaned FP32 model (ONNX Runtime)."""
    if not ctx.settings.val:
        log.warning("no --val data: nothing held out checked the %s model (it was compared "
                    "with FP32 on %s); give --val DIR", precision.upper(),
                    "the calibration data" if ctx.settings.calib.data else "random inputs")
    if precision == "int8" and ctx.int8.check is not None:  # FP16 parts: the emulation
        record = check(ctx, ctx.int8.check, precision)
        record["cpu_check"] = "FP16 parts emulated (rounded, overflow to inf) in FP32 kernels"
        return ValidateRecord.of(record)
    return ValidateRecord.of(check(ctx, ctx.artifacts.precision_models()[precision], precision))


def check(ctx: Context, candidate: Any, precision: str, basic: bool = False) -> dict[str, Any]:
    """`candidate` (an ONNX file, a serialized model or a ModelProto) vs the reference on
    the evaluation data, with gates. `basic`: ONNX Runtime's basic graph optimizations only
    (FP8 Q/DQ: ORT 1.32's extended level changes the digits CNN's logits by up to 38, where
    basic and none agree)."""
    from ..onnx import io

    if not isinstance(candidate, (str, Path, bytes)):
        if not io.is_heavy(candidate):
            return check(ctx, candidate.SerializeToString(), precision, basic)
        with io.on_disk(candidate) as path:  # by path (weights beside it past 2 GiB): a
            return check(ctx, path, precision, basic)  # session from bytes keeps them
    from ..thirdparty import polygraphy

    polygraphy()
    import onnxruntime as ort
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    data, labels, label = ctx.eval_data()
    level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC if basic else None
    record = compare_runners(
        _reference_runner(ctx),
        OnnxrtRunner(SessionFromOnnx(candidate if isinstance(candidate, bytes) else
                                     str(candidate), providers=["cpu"],
                                     graph_optimization_level=level), name=precision),
        data, precision, labels, ctx)
    record["val"] = label
    record["gate_failures"] = gate_failures(record, ctx.settings.gates)
    return record


def run_engines(ctx: Context) -> EngineChecksRecord:
    """Each engine this machine can run against the FP32 ONNX model, loaded with the
    runtime that built it; an engine a runtime refuses is reported in its own entry."""
    from ..trt import runtime

    engines = ctx.artifacts.engines
    why = runtime.machine_refusal() if engines else "no engines were built"
    if why:
        return EngineChecksRecord(skipped=why)
    results = []
    data, labels, _ = ctx.eval_data()  # re-iterable: one pass per engine
    for e in engines:
        entry: dict[str, Any] = {"engine": str(e.path), "builder": e.builder, "arch": e.arch,
                                 "precision": e.precision}
        try:
            runner = runtime.polygraphy_runner(e)
            r = compare_runners(_reference_runner(ctx), runner, data, e.precision, labels, ctx)
        except runtime.EngineRefused as refused:
            results.append({**entry, "refused": str(refused)})
            continue
        results.append({**entry, **r, "gate_failures": gate_failures(r, ctx.settings.gates)})
    return EngineChecksRecord.of({
        "engines": results, "gate_failures": [f for r in results for f in r.get("gate_failures", [])]})


def _reference_runner(ctx: Context) -> Any:
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    return OnnxrtRunner(SessionFromOnnx(str(ctx.artifacts.clean), providers=["cpu"]),
                        name="reference")


class _Loader:
    """Re-iterable feeds for Polygraphy (it iterates once per runner); records file order."""

    def __init__(self, data: Any):
        self.data, self.origins = data, []

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        self.origins = []
        for names, batch in named_batches(self.data):
            self.origins += names
            yield batch


def compare_runners(ref_runner: Any, cand_runner: Any, data: Any, precision: str,
                    labels_dir: Path | None, ctx: Context) -> dict[str, Any]:
    """Polygraphy's Comparator runs both runners; then its CompareFunc.simple verdict
    (elementwise, per-precision tolerances), our metrics and the --metric-script plug-in on
    the results, each output's batch axis taken from the model. The verdict is computed here
    (tolerance_check): Polygraphy's compare_accuracy also computes and logs medians and
    quantiles of every output, a third of the validate stage on PP-OCRv4 rec."""
    from polygraphy.comparator import Comparator

    loader = _Loader(data)
    results = Comparator.run([ref_runner, cand_runner], data_loader=loader)
    atol, rtol = TOLERANCES[precision]
    ref_iters, cand_iters = results[0][1], results[1][1]
    labels = read_labels(labels_dir) if labels_dir else None
    clean = ctx.clean_model()
    axes = batch_axes(clean)
    ref = {n: stack([it[n] for it in ref_iters], axes.get(n, 0)) for n in ref_iters[0].keys()}
    cand = {n: stack([it[n] for it in cand_iters], axes.get(n, 0)) for n in ref}
    passed = all(tolerance_check(ref[n], cand[n], atol, rtol) for n in ref)
    record: dict[str, Any] = {"precision": precision, "samples": len(loader.origins),
                              "polygraphy": {"atol": atol, "rtol": rtol, "passed": passed,
                                             "check": "CompareFunc.simple elemwise"}}
    record.update(compare(ref, cand, loader.origins, labels, ctx.settings.gates.metric_script,
                          feature_outputs(clean)))
    return record


def tolerance_check(ref: np.ndarray, cand: np.ndarray, atol: float, rtol: float) -> bool:
    """Polygraphy's CompareFunc.simple with check_error_stat="elemwise": every element within
    `atol` absolutely or `rtol` relative to the candidate (zeros get 2.2e-16 added); NaN
    differences fail. Booleans: equal."""
    if ref.shape != cand.shape:
        return False
    if ref.dtype == bool and cand.dtype == bool:
        return bool(np.array_equal(ref, cand))
    up = np.float64 if np.float64 in (ref.dtype, cand.dtype) else np.float32
    a, b = ref.astype(up, copy=False), cand.astype(up, copy=False)
    diff = np.abs(a - b)
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = diff / np.abs(np.where(b == 0, np.finfo(np.float64).eps, b))
    bad = ((diff > atol) | np.isnan(diff)) & ((rel > rtol) | np.isnan(rel))
    return not bool(bad.any())
