"""The public Python API; the CLI is a thin layer over these functions.

Options are keywords named like the CLI flags (`calib_method="max"`, `archs=["sm_86"]`,
`shapes=["input:1x3x224x224,8x3x224x224,32x3x224x224"]`); trtbuild.config.OPTIONS lists
them. Every failure raises TrtBuildError carrying the exit code the CLI would use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import build_settings
from .context import Context, Engine
from .errors import MISSING_CAPABILITY, TrtBuildError

if TYPE_CHECKING:
    from .pipeline import OnStage



@dataclass
class Result:
    """What a run produced: its output directory, report.json's content, the engines."""

    out: Path
    report: dict[str, Any]
    engines: list[Engine] = field(default_factory=list)

    @classmethod
    def of(cls, ctx: Context) -> "Result":
        return cls(ctx.out, ctx.report.to_dict(), list(ctx.artifacts.engines))

    def stage(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.report["stages"] if s["stage"] == name), None)


def build(src: str, out: str | Path | None = None, *, on_stage: OnStage | None = None,
          **options: Any) -> Result:
    """The whole pipeline on SRC (model.onnx, file.py:fn, module:fn, torchvision:NAME) into
    `out` (default trtbuild-out/<model>/): export, clean, [fp16], [calibrate, quantize,
    validate], engines, [bench]. `on_stage(name, record)` is called as each stage ends with
    its typed record (trtbuild.records; `record.to_json()` is its report.json entry).
    Raises TrtBuildError (exit code 1 for a failed gate: the report up to that stage is on
    disk)."""
    from . import pipeline

    settings = build_settings(str(src), out=Path(out) if out else None, **options)
    return Result.of(pipeline.run(settings, on_stage))


def export(src: str, output: str | Path, **options: Any) -> dict[str, Any]:
    """SRC -> one ONNX file, compared with PyTorch (exit 1 beyond tolerance)."""
    from .files import check_output_file
    from .onnx import source
    from .stages.export import export as export_model

    s = build_settings(str(src), **options).export
    output = check_output_file(Path(output))
    loaded = source.load(source.parse(str(src)), dict(s.inputs) or None)
    return export_model(loaded, output, s).record()


def clean(model: str | Path, output: str | Path) -> dict[str, Any]:
    """The cleanup passes on one ONNX file; the record has node counts by op."""
    from .files import check_output_file
    from .stages.clean import clean as clean_model

    return clean_model(Path(model), check_output_file(Path(output))).record()


def calibrate(model: str | Path, calib: str | None = None, out: str | Path = "calibrated", *,
              on_stage: OnStage | None = None, **options: Any) -> Result:
    """INT8 calibration of an ONNX model into `out`: the model is prepared as `build` does
    (model.clean.onnx), then calib.cache and model.int8.onnx (Q/DQ) and report.json."""
    from . import pipeline
    from .onnx import io
    from .stages import calibrate as calib_stage
    from .stages import clean as clean_stage
    from .stages import quantize

    options.pop("int8", None)
    settings = build_settings(str(model), int8=True, calib=calib, **options)
    pipeline.check_files(settings)
    io.load(model)  # a bad model fails before OUTDIR exists

    def work(o: Path) -> Context:
        ctx = pipeline.new_context(settings, o, str(model))
        ctx.artifacts.model = Path(model)
        ctx.stage_cache = pipeline.stage_cache(settings)
        return pipeline.run_stages(ctx, [("clean", clean_stage.run),
                                         ("calibrate", calib_stage.run),
                                         ("quantize", quantize.run)], on_stage)
    keep = tuple(p for p in (Path(model), settings.calib.cache) if p is not None)
    return Result.of(pipeline.in_out_dir(Path(out), work, keep))


def validate(reference: str | Path, candidate: str | Path, val: str, precision: str = "int8",
             **options: Any) -> dict[str, Any]:
    """Accuracy of CANDIDATE against REFERENCE (ONNX Runtime, CPU) on `val` data (read with
    the data options), through the validate stage; raises TrtBuildError(1) when a gate
    fails (its `record` holds the measurements)."""

    from . import pipeline
    from .config import VALIDATE_PRECISIONS
    from .onnx import io
    from .quant.emulate import dequantized, emulate_typed, has_fp8, has_fp16, has_int4
    from .records import ValidateRecord
    from .report import Report
    from .stages import validate as validate_stage

    if precision not in VALIDATE_PRECISIONS:
        raise TrtBuildError(f"--precision: '{precision}' is not one of {', '.join(VALIDATE_PRECISIONS)}")
    if not val:
        raise TrtBuildError("validate needs --val DIR (or a data loader script)")
    options, inherited = _build_preprocess(Path(candidate), str(val), options)
    settings = build_settings(str(candidate), val=str(val), **options)
    pipeline.check_files(settings)
    io.load(reference)
    written = io.load(candidate)
    target: Any = Path(candidate)
    how = "FP16 tensors emulated (rounded, overflow to inf) in FP32 kernels"
    if has_int4(written):  # ONNX Runtime's MatMulNBits would round activations to 8 bits
        written = target = dequantized(written)
        how = "INT4 weights dequantized exactly (q x scale), FP32 kernels"
    if has_fp16(written):  # what an FP16 engine computes, not ONNX Runtime's FP16 kernels
        why = ""
        try:
            target = emulate_typed(written)  # past 2 GiB validate.check runs it by path
        except ValueError as e:
            why = f"not emulated: {e}"
        if why:
            logging.getLogger(__name__).warning(
                "%s: has FP16 tensors, %s; ONNX Runtime's CPU kernels compute them in FP32 "
                "and cannot show FP16 overflow", candidate, why)
    ctx = Context(settings, Path(candidate).parent, Report(None, str(candidate)), owns_out=False)
    ctx.artifacts.clean = Path(reference)

    def check(c: Context) -> ValidateRecord:
        record = validate_stage.check(c, target, precision, basic=has_fp8(written))
        if not isinstance(target, Path):  # the emulation
            record["cpu_check"] = how
        return ValidateRecord.of({**record, "preprocess_from": str(inherited) if inherited else None})

    pipeline.run_stages(ctx, [("validate", check)])
    return ctx.report.stages[-1].to_json()


def _build_preprocess(model: Path, data: str, options: dict[str, Any]
                      ) -> tuple[dict[str, Any], Path | None]:
    """The preprocessing recorded by the build that wrote `model` (report.json in its
    folder, or two folders up for OUT/engines/<arch>/model.x.engine), under the flags
    given now; not when the data folder has its own preprocess.json (it says how its
    files are read). Returns (options, the report it came from or None)."""
    import json

    from .data import is_script

    if is_script(data) or (Path(data) / "preprocess.json").is_file():
        return options, None
    for report in (model.parent / "report.json", model.parent.parent.parent / "report.json"):
        try:
            recorded = json.loads(report.read_text()).get("preprocess")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        if isinstance(recorded, dict) and recorded:
            given = {k: v for k, v in (options.get("preprocess") or {}).items() if v is not None}
            logging.getLogger(__name__).info("preprocessing from %s: %s", report, recorded)
            return {**options, "preprocess": {**recorded, **given}}, report
    return options, None


def bench(model: str | Path, output: str | Path | None = None, *,
          reference: str | Path | None = None, builder: str = "auto",
          **options: Any) -> dict[str, Any]:
    """Latency of one ONNX model (ONNX Runtime, CPU) or engine (GPU, with the runtime that
    built it) at each profile shape, through the bench stage; `output` writes a report
    usable as a later baseline. Raises TrtBuildError(1) on a regression beyond
    max_regression (its `record` holds the runs), (3) for an engine this machine cannot
    run."""
    import functools

    from . import pipeline
    from .files import check_output_file
    from .report import Report
    from .stages import bench as bench_stage
    from .trt import runtime

    model = Path(model)
    is_onnx = model.suffix == ".onnx"
    if not is_onnx and reference is None:
        raise TrtBuildError(f"{model}: benchmarking an engine needs --reference MODEL.onnx "
                            "(input names and shapes)")
    if not model.is_file():
        raise TrtBuildError(f"{model}: no such file")
    options.pop("bench", None)
    settings = build_settings(str(model), bench=True, **options)
    pipeline.check_files(settings)
    report = Report(check_output_file(Path(output)) if output else None, str(model))
    ctx = Context(settings, model.parent, report, owns_out=False)
    ctx.artifacts.clean = Path(reference) if reference else model
    ctx.clean_model()  # a bad model fails here, before any timing
    models = {model.stem.split(".")[-1]: model} if is_onnx else {}
    if not is_onnx:
        why = runtime.machine_refusal()
        if why:
            raise TrtBuildError(f"{model}: {why}", MISSING_CAPABILITY)
        ctx.artifacts.engines.append(bench_stage.engine_from_report(
            model, builder, settings.engine.weight_streaming_budget))
    pipeline.run_stages(ctx, [("bench", functools.partial(bench_stage.run, models=models))])
    record = ctx.report.stages[-1]
    if not getattr(record, "runs", None) and getattr(record, "refused", None):
        raise TrtBuildError(f"{model}: {next(iter(record.refused.values()))}",
                            MISSING_CAPABILITY)
    return record.to_json()


def inspect(target: str | Path, cache_dir: str | Path | None = None) -> dict[str, Any]:
    """What an engine file or a cache entry (its key, or a unique prefix of 8+ hex digits)
    is: builder and version, target arch, compatibility, precision, I/O with profile
    shapes, size, source model and its ONNX sha256, trtbuild version (engine_info)."""
    from .engine_info import describe

    return describe(str(target), Path(cache_dir) if cache_dir else None)


def cache_list(cache_dir: str | Path | None = None, arch: str | None = None,
               model: str | None = None) -> list[dict[str, Any]]:
    """The cache's entries (cache.EngineCache.listing), newest first; `arch` keeps that
    architecture's engines, `model` the entries whose source contains it."""
    from .cache import EngineCache

    rows = EngineCache(Path(cache_dir) if cache_dir else None).listing()
    rows = [r for r in rows if (arch is None or r["arch"] == arch)
            and (model is None or model in (r["source"] or ""))]
    return sorted(rows, key=lambda r: -(r["created"] or 0))


def release(manifest: str | Path, out: str | Path | None = None, *,
            baseline: str | Path | None = None, workers: int | None = None,
            on_job: Any = None, ray: str | None = None) -> dict[str, Any]:
    """A release from a TOML manifest (trtbuild.release.manifest): per model one prepare job
    (the shared CPU stages, once) and one engine job per (precision, arch), on `workers`
    worker processes (default min(cores, jobs)), into `out` (default
    trtbuild-out/release-<manifest stem>/). Rerunning resumes from out/release.json. Returns
    release.json's content; raises TrtBuildError: 2 for a bad manifest, baseline or
    journal; 1 listing every job that did not pass (its `record` is release.json's content).
    `on_job(key, job)` is called as each job finishes, with its typed entry
    (trtbuild.release.journal.Job; `job.to_json()` is its release.json entry). `ray`: ""
    runs the jobs as tasks on a local Ray runtime, "HOST:PORT" on that Ray cluster (exit 3
    without Ray installed)."""
    from .release.run import release as run_release

    return run_release(manifest, out, baseline, workers, on_job, ray=ray)


__all__ = ["Result", "build", "export", "clean", "calibrate", "validate", "bench", "release"]


