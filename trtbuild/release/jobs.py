"""What a release's worker processes run: one model's shared CPU stages ("prepare"), or one
engine from what they prepared. Each job returns a plain dict (picklable, JSON-ready):

    {"status": "ok" | "failed" | "gate_failed", "error": one line or None, "exit_code",
     "seconds", "peak_rss_mb", "record": summary}

A prepare job is `pipeline.run` on the model's settings with target "onnx" into OUT/NAME/:
export, clean, [fp16], [calibrate, quantize, [sensitivity], validate], exactly the stages a
plain `trtbuild` run would (report.json records them). An engine job is the engines stage
(and validate_engines) on a Context whose artifacts hold only that precision's model and
whose settings name only that precision and one architecture: the same engine cache key as
a plain run, the engine at OUT/NAME/engines/ARCH/model.PRECISION.engine.
"""

from __future__ import annotations

import math
import resource
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from ..config import BuildSettings
from ..errors import GATE_FAILED, INTERNAL_ERROR, TrtBuildError, environment_error
from ..records import Accuracy, EngineChecksRecord, StageRecord, engine_records, parse_stages
from .manifest import ModelEntry

PREPARED = ("clean", "fp16", "int8", "calib_cache")  # Artifacts fields an engine job reads


def worker_init(driver: int | None = None) -> None:
    """In each worker process: die with the driver (kill -9 of the driver must not leave a
    worker writing into the output directory), quiet third-party loggers. `driver`: its
    pid; a driver killed while this worker was still starting (before the death signal was
    asked for) leaves it a child of another process: it exits at once."""
    import ctypes
    import os

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL (Linux)
    except (OSError, AttributeError):
        pass
    if driver is not None and os.getppid() != driver:
        os._exit(1)
    quiet()


def quiet() -> None:
    """No progress bars (the driver prints a line per job), quiet third-party loggers: in a
    pool worker, and in a Ray worker before each job (Ray's own workers live on)."""
    import contextlib
    import logging

    from .. import progress

    # bars drawn by several workers would overwrite each other
    progress.bar = lambda description, total: contextlib.nullcontext(progress.Bar())
    logging.basicConfig(level=logging.WARNING, format="trtbuild: %(levelname)s: %(message)s")
    for name in ("onnx_graphsurgeon", "polygraphy", "Polygraphy", "PIL", "torch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def prepare(entry: ModelEntry, out: str) -> dict[str, Any]:
    return _measured(lambda: _prepare(entry, Path(out)), lambda: _prepared_record(Path(out)))


def engine(entry: ModelEntry, out: str, precision: str, arch: str,
           artifacts: dict[str, str | None]) -> dict[str, Any]:
    records: dict[str, StageRecord] = {}
    return _measured(lambda: _engine(entry, Path(out), precision, arch, artifacts, records),
                     lambda: _engine_record(records))


# --- the jobs ---------------------------------------------------------------------------

def prepare_settings(entry: ModelEntry, out: Path) -> BuildSettings:
    s = entry.settings
    return replace(s, out=out, targets=replace(s.targets, target="onnx"),
                   bench=replace(s.bench, enabled=False))


def engine_settings(entry: ModelEntry, out: Path, precision: str, arch: str) -> BuildSettings:
    """The model's settings for one precision and one architecture (what a plain run with
    only that precision flag and --arch ARCH would have)."""
    s = entry.settings
    flag = precision == "fp16" and s.fp16_options.mode == "flag"
    return replace(s, out=out, fp32=precision == "fp32", fp16=precision == "fp16",
                   int8=precision == "int8", engine=replace(s.engine, fp16_flag=flag),
                   targets=replace(s.targets, archs=(arch,), target="engine"),
                   bench=replace(s.bench, enabled=False))


def _prepare(entry: ModelEntry, out: Path) -> dict[str, Any]:
    from .. import pipeline
    from ..files import file_sha256

    ctx = pipeline.run(prepare_settings(entry, out))
    a = ctx.artifacts
    paths = {k: str(getattr(a, k)) if getattr(a, k) else None for k in PREPARED}
    # resume reuses the files only while they hash to this (keyed by artifact: a Ray
    # worker's scratch paths are rewritten to OUT's in values only)
    return {"artifacts": paths, "sha256": {k: file_sha256(Path(p)) for k, p in paths.items() if p}}


def _engine(entry: ModelEntry, out: Path, precision: str, arch: str,
            artifacts: dict[str, str | None], records: dict[str, StageRecord]) -> dict[str, Any]:
    from .. import pipeline
    from ..context import Context
    from ..report import Report, Timer
    from ..stages import engines, validate

    settings = engine_settings(entry, out, precision, arch)
    pipeline.choose_engine_runtime(settings)
    ctx = Context(settings, out, Report(None, entry.src))
    ctx.set_clean(Path(artifacts["clean"]))
    if precision == "fp16":
        ctx.artifacts.fp16 = _path(artifacts.get("fp16"))
    if precision == "int8":
        ctx.artifacts.int8 = _path(artifacts.get("int8"))
        ctx.artifacts.calib_cache = _path(artifacts.get("calib_cache"))
    # Not pipeline.run_stages: on a failed stage it removes the files that appeared in the
    # output directory meanwhile, and a model's engine jobs share that directory at once.
    # Engines are written atomically at the end of the stage, so there is nothing to undo.
    for name, stage in (("build", engines.run), ("validate_engines", validate.run_engines)):
        with Timer() as t:
            record = stage(ctx)
        records[name] = ctx.report.add(name, t.seconds, record)
        if record.gate_failures:
            raise TrtBuildError(f"{name} gate failed: " + "; ".join(record.gate_failures),
                                GATE_FAILED, record.to_json())
    return {}


def _path(text: str | None) -> Path | None:
    return Path(text) if text else None


def _measured(work: Callable[[], dict], summary: Callable[[], dict]) -> dict[str, Any]:
    """Run `work` in this worker; status, one-line error, seconds and this job's peak RSS."""
    _reset_peak_rss()
    started, start = time.time(), time.perf_counter()
    status, error, code, extra = "ok", None, 0, {}
    try:
        extra = work()
    except TrtBuildError as e:
        status = "gate_failed" if e.code == GATE_FAILED else "failed"
        error, code = _one_line(e.message), e.code
    except Exception as e:  # noqa: BLE001 - recorded; the other jobs go on
        told = environment_error(e)
        status, code = "failed", told.code if told else INTERNAL_ERROR
        error = _one_line(told.message if told else f"internal error: {type(e).__name__}: {e}")
    seconds = time.perf_counter() - start
    try:
        record = {**summary(), **extra}
    except Exception as e:  # noqa: BLE001 - a summary must not hide the job's own result
        record = {"summary_error": f"{type(e).__name__}: {e}"}
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"status": status, "error": error, "exit_code": code, "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak_kb / 1024, 1), "record": record,
            "started": round(started, 3), "ended": round(time.time(), 3)}


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (Linux clear_refs 5), so a reused worker measures each
    job on its own; where that is refused the figure is the worker's peak so far (higher,
    so the memory bound only gets more careful)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _one_line(text: str) -> str:
    lines = [ln.strip() for ln in str(text).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else "(no message)"
    return (first + (f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""))[:400]


# --- record summaries (from report.json / the stage records) -----------------------------

def accuracy(r: Accuracy | None) -> dict[str, Any] | None:
    """One precision's accuracy vs FP32 from a validate/fp16 record: the worst output's
    cosine_mean (top-1 agreement, correlation; NaN if any output's is NaN), the plug-in
    scores, label accuracy."""
    if r is None or r.outputs is None:
        return None
    outs = list(r.outputs.values())
    worst = {k: _worst([getattr(m, k) for m in outs])
             for k in ("cosine_mean", "top1_agreement", "correlation")}
    label = r.label_accuracy
    return {**{k: v for k, v in worst.items() if v is not None},
            "scores": r.scores or {}, "samples": r.samples,
            **({"label_accuracy_delta_points": label.delta_points}
               if label is not None and label.delta_points is not None else {}),
            "gate_failures": r.gate_failures or []}


def _worst(values: list[float | None]) -> float | None:
    found = [v for v in values if v is not None]
    if not found:
        return None
    return math.nan if any(math.isnan(v) for v in found) else min(found)


def _prepared_record(out: Path) -> dict[str, Any]:
    import json

    path = out / "report.json"
    stages = parse_stages(json.loads(path.read_text())) if path.is_file() else []
    by = {s.stage: s for s in stages}
    acc = {p: accuracy(by.get(stage)) for p, stage in (("fp16", "fp16"), ("int8", "validate"))}
    sens = by.get("sensitivity")
    return {"report": str(path), "stages": [[s.stage, s.seconds] for s in stages],
            "accuracy": {p: a for p, a in acc.items() if a},
            "int8_mac_coverage": sens.int8_mac_coverage if sens else None}


def _engine_record(records: dict[str, StageRecord]) -> dict[str, Any]:
    found = engine_records(records.get("build"))
    record: dict[str, Any] = {"stages": [[n, r.seconds] for n, r in records.items()]}
    if found:
        e = found[0]
        record["engine"] = {"path": e.path, "bytes": e.bytes, "build_seconds": e.build_seconds,
                            "cache_hit": e.cache_hit, "key": e.key, "sha256": e.sha256,
                            "builder": e.builder, "builder_version": e.builder_version}
    checked = records.get("validate_engines")
    if checked is not None and checked.skipped:
        record["engine_check"] = checked.skipped
    elif isinstance(checked, EngineChecksRecord) and checked.engines:
        record["engine_accuracy"] = accuracy(checked.engines[0])
    return record


def died(error: str) -> dict[str, Any]:
    """The result of a job that ended without one of its own (its process died)."""
    return {"status": "failed", "error": error, "exit_code": INTERNAL_ERROR, "seconds": None,
            "peak_rss_mb": None, "record": {}}
