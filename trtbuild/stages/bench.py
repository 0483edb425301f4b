"""Bench stage: latency of every engine this machine can run (each with the runtime that
built it), else of the ONNX models with ONNX Runtime on the CPU; plus the PyTorch eager
baseline for torch SRCs; at each profile shape; compared with a baseline report."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np

from .. import timing
from ..context import Context
from ..onnx import io
from ..onnx.inputs import model_inputs, random_feed
from ..onnx.shapes import profile_shapes, shape_label
from ..records import BenchRecord

log = logging.getLogger(__name__)


def run(ctx: Context, models: dict[str, Path] | None = None) -> BenchRecord:
    """Runs, each with its runner and device; gate failures list the regressions beyond
    the baseline. An engine its runtime refuses is listed under `refused`. `models`
    ({label: ONNX file}, default: the build's precision models) are timed on the CPU when
    no engine can run here."""
    from ..trt import runtime

    s = ctx.settings.bench
    reference = ctx.clean_model()
    models = ctx.artifacts.precision_models() if models is None else models
    engines = [] if runtime.machine_refusal() else ctx.artifacts.engines
    refused: dict[str, str] = {}
    runs = []
    # once per model, not per shape: a model's file is parsed to find the pattern
    workarounds = functools.cache(io.ort_workarounds)
    for shapes in profile_shapes(model_inputs(reference), ctx.settings.engine.profiles):
        feeds = random_feed(reference, shapes=shapes)
        label = shape_label(shapes)
        timed = _engine_runs(engines, shapes, s, refused) if engines else []
        if not timed:  # no engine runs here (or every one was refused): the CPU models
            timed = [{**timing.bench_onnxruntime(path, feeds, s, workarounds(path)),
                      "model": precision} for precision, path in models.items()]
        if ctx.torch_module is not None:
            timed.append({**timing.bench_torch(ctx.torch_module, _torch_inputs(feeds), s),
                          "model": "fp32"})
        runs += [{**r, "shape": label} for r in timed]
    record: dict[str, Any] = {"runs": runs, "warmup": s.warmup, "iterations": s.iterations,
                              "duration_s": s.duration}
    if refused:
        record["refused"] = refused
    if s.baseline:
        rows = timing.compare(runs, timing.baseline_runs(s.baseline), s.max_regression)
        record.update(baseline=str(s.baseline), max_regression=s.max_regression, comparison=rows)
        record["gate_failures"] = [
            f"latency regressed beyond {100 * s.max_regression:g}%: {r['runner']} {r['model']} "
            f"{r['shape']} p50 {r['p50_ms']:.3f} ms is {100 * r['change']:+.1f}% vs "
            f"{r['baseline_p50_ms']:.3f} ms" for r in rows if r["regressed"]]
        if not rows:
            log.warning("%s: no bench run matches this build's runners and shapes", s.baseline)
    return BenchRecord.of(record)


def _engine_runs(engines: list, shapes: dict, s: Any, refused: dict[str, str]) -> list[dict]:
    from ..trt import runtime

    runs = []
    for e in engines:
        if str(e.path) in refused:
            continue
        try:
            runs.append({**runtime.time_engine(e, shapes, s), "model": e.precision,
                         "arch": e.arch})
        except runtime.EngineRefused as why:
            refused[str(e.path)] = str(why)
            log.warning("%s: not benchmarked: %s", e.path, why)
    return runs


def _torch_inputs(feeds: dict[str, np.ndarray]) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in feeds.values())


def engine_from_report(path: Path, builder: str, weight_budget: str = "auto") -> Any:
    """The Engine for an engine file: builder, version and, for a weight-stripped engine,
    the ONNX model to refit it from, from the report.json of the build that wrote it (two
    levels up), else the `builder` given."""
    import json

    from ..context import Engine
    from ..records import engine_records

    report = path.resolve().parents[2] / "report.json" if len(path.resolve().parents) > 2 \
        else None
    if report and report.is_file():
        try:
            stages = json.loads(report.read_text()).get("stages", [])
            build = next(st for st in stages if st.get("stage") == "build")
            for e in engine_records(build):
                if Path(e.path).resolve() == path.resolve():
                    return Engine(path, e.arch, e.precision, e.builder or builder,
                                  e.builder_version or "",
                                  Path(e.refit_from) if e.refit_from else None, weight_budget)
        except (OSError, ValueError, StopIteration, KeyError, AttributeError, TypeError):
            pass
    from ..trt.backend import load_backend

    found = load_backend(builder)
    return Engine(path, "native", path.stem.split(".")[-1], found.name, found.version,
                  weight_budget=weight_budget)
