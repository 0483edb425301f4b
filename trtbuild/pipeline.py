"""The build driver: composes the stages into one output directory with report.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import source as source_mod
from .benchstage import BenchStageSettings
from .engines import EngineStageSettings
from .errors import GATE_FAILED, TrtBuildError
from .export import ExportSettings, export
from .files import ensure_dir
from .fp16 import Fp16Settings
from .int8 import Int8Settings
from .report import Report, Timer
from .shapes import Shape
from .validate import Gates

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    """Everything `trtbuild build` needs; later stages read their own fields."""

    src: str
    out: Path | None = None
    inputs: tuple[tuple[str, Shape], ...] = ()
    dynamic_batch: bool = True
    opset: int = 17
    int8: Int8Settings | None = None
    fp16: Fp16Settings | None = None
    fp32_engine: bool = False
    val: str | None = None
    gates: Gates = Gates()
    engines: EngineStageSettings = field(default_factory=EngineStageSettings)
    bench: BenchStageSettings = field(default_factory=BenchStageSettings)

    def out_dir(self, name: str) -> Path:
        return self.out or Path("trtbuild-out") / name


@dataclass
class BuildContext:
    """What the stages hand each other: the output dir, the report and artifact paths."""

    settings: BuildSettings
    out: Path
    report: Report
    artifacts: dict[str, Path] = field(default_factory=dict)
    amaxes: dict[str, float] = field(default_factory=dict)
    source: Any = None
    _clean: Any = None

    def clean_model(self) -> Any:
        """The cleaned ModelProto, loaded from disk once for all later stages (read-only:
        the stages that rewrite it work on copies)."""
        if self._clean is None:
            from . import onnxio

            self._clean = onnxio.load(self.artifacts["clean"])
        return self._clean


Stage = Callable[[BuildContext], dict[str, Any]]


def stage_export(ctx: BuildContext) -> dict[str, Any]:
    s = ctx.settings
    src = source_mod.load(source_mod.parse(s.src), dict(s.inputs) or None)
    names = tuple(n for n, _ in s.inputs)
    shapes = tuple(shape for _, shape in s.inputs)
    result = export(src, ctx.out / "model.onnx",
                    ExportSettings(names, s.dynamic_batch, s.opset, input_shapes=shapes))
    ctx.source = src if src.kind == "torch" else None
    ctx.artifacts["model"] = result.path
    return result.record()


def stage_clean(ctx: BuildContext) -> dict[str, Any]:
    from .clean import clean

    result = clean(ctx.artifacts["model"], ctx.out / "model.clean.onnx")
    ctx.artifacts["clean"] = result.path
    return result.record()


def stage_calibrate(ctx: BuildContext) -> dict[str, Any]:
    from .int8 import run_calibrate

    amaxes, record = run_calibrate(ctx.clean_model(), ctx.out, ctx.settings.int8)
    ctx.artifacts["calib_cache"] = ctx.out / "calib.cache"
    ctx.amaxes = amaxes
    return record


def stage_quantize(ctx: BuildContext) -> dict[str, Any]:
    from .int8 import run_quantize

    record = run_quantize(ctx.clean_model(), ctx.amaxes, ctx.out / "model.int8.onnx")
    ctx.artifacts["int8"] = ctx.out / "model.int8.onnx"
    return record


def stage_validate(ctx: BuildContext) -> dict[str, Any]:
    """CPU accuracy of the INT8 Q/DQ model against the cleaned FP32 model (ONNX Runtime)."""
    from .validate import compare

    if not ctx.settings.val:
        log.warning("no --val data: validating on the calibration data (not held out)")
    data, labels, label = _eval_data(ctx)
    record = compare(ctx.artifacts["clean"], ctx.artifacts["int8"], data, "int8", labels)
    record["val"] = label
    record["gate_failures"] = ctx.settings.gates.failures(record)
    return record


def _eval_data(ctx: BuildContext) -> tuple[Any, Path | None, str]:
    """(dataset, labels directory, description) for accuracy checks: --val, else the
    calibration data, else seeded random inputs."""
    from .validate import RandomData

    s = ctx.settings
    source = s.val or (s.int8.calib if s.int8 else None)
    if not source:
        return RandomData(ctx.clean_model()), None, "random inputs"
    labels = Path(source) if Path(str(source)).is_dir() else None
    return _dataset(ctx, source), labels, str(source)


def stage_fp16(ctx: BuildContext) -> dict[str, Any]:
    """Graph-level FP16, then its CPU accuracy against the FP32 model (ONNX Runtime; FP16
    kernels where ORT has them, else the Cast round-trip simulation)."""
    from . import fp16, onnxio
    from .validate import compare

    s = ctx.settings
    clean = ctx.clean_model()
    model, info = fp16.convert(clean, s.fp16)
    out = ctx.out / "model.fp16.onnx"
    onnxio.check_model(model, out)
    onnxio.save(model, out)
    ctx.artifacts["fp16"] = out
    check = out
    try:
        onnxio.session(model)
        info["cpu_check"] = "fp16 model"
    except Exception as e:  # noqa: BLE001 - ORT lacks an FP16 kernel: simulate instead
        check = ctx.out / "model.fp16sim.onnx"
        onnxio.save(fp16.simulated(clean, info, s.fp16), check)
        info["cpu_check"] = f"cast round-trip simulation ({str(e).splitlines()[0][:120]})"
    data, labels, label = _eval_data(ctx)
    record = compare(ctx.artifacts["clean"], check, data, "fp16", labels)
    record.update(info, output=str(out), val=label)
    record["gate_failures"] = s.gates.failures(record)
    return record


def _dataset(ctx: BuildContext, source: str) -> Any:
    from .int8 import Int8Settings, open_dataset

    return open_dataset(source, ctx.clean_model(), ctx.settings.int8 or Int8Settings())


def stage_engines(ctx: BuildContext) -> dict[str, Any]:
    from .engines import run_engines

    models = {p: ctx.artifacts[p] for p in ("fp16", "int8") if p in ctx.artifacts}
    s = ctx.settings.engines
    if s.engine.fp16_flag:  # --fp16-mode flag: TensorRT <= 10 lowers the FP32 graph itself
        models = {"fp16": ctx.artifacts["clean"], **models}
    if "int8" in models and s.engine.calibrator == "trt":
        # TensorRT <= 10 calibrates the FP32 graph itself, from the same dataset
        import dataclasses

        models["int8"] = ctx.artifacts["clean"]
        s = dataclasses.replace(s, calib_data=lambda: _dataset(ctx, ctx.settings.int8.calib))
    if ctx.settings.fp32_engine or not models:
        models = {"fp32": ctx.artifacts["clean"], **models}
    record = run_engines(models, ctx.artifacts.get("calib_cache"), ctx.out, s)
    if "skipped" in record:
        log.warning("%s", record["skipped"])
    return record


def stage_validate_engines(ctx: BuildContext) -> dict[str, Any]:
    """Each engine this machine can run (GPU + TensorRT) against the FP32 ONNX model."""
    from .benchstage import _runnable_engines
    from .validate import compare_engine

    build = ctx.report.get("build") or {}
    runnable = _runnable_engines(build.get("engines", []))
    if not runnable:
        return {"skipped": "no engine can run here (needs a CUDA GPU of the engine's "
                           "architecture and TensorRT)"}
    results = []
    for e in runnable:
        data, labels, _ = _eval_data(ctx)
        r = compare_engine(ctx.artifacts["clean"], Path(e["path"]), data, e["precision"], labels)
        results.append({**r, "engine": e["path"], "gate_failures": ctx.settings.gates.failures(r)})
    return {"engines": results,
            "gate_failures": [f for r in results for f in r["gate_failures"]]}


def stage_bench(ctx: BuildContext) -> dict[str, Any]:
    from .benchstage import run_bench

    models = {"fp32": ctx.artifacts["clean"],
              **{p: ctx.artifacts[p] for p in ("fp16", "int8") if p in ctx.artifacts}}
    build = ctx.report.get("build") or {}
    return run_bench(models, build.get("engines", []), ctx.source, ctx.clean_model(),
                     ctx.settings.engines.engine.profiles, ctx.settings.bench)


def stages_for(settings: BuildSettings) -> list[tuple[str, Stage]]:
    """The stage list for these settings, in order."""
    stages = [("export", stage_export), ("clean", stage_clean)]
    if settings.fp16:
        stages.append(("fp16", stage_fp16))
    if settings.int8:
        stages += [("calibrate", stage_calibrate), ("quantize", stage_quantize),
                   ("validate", stage_validate)]
    if settings.engines.target != "onnx":
        stages += [("build", stage_engines), ("validate_engines", stage_validate_engines)]
    if settings.bench.enabled:
        stages.append(("bench", stage_bench))
    return stages


def run(settings: BuildSettings, on_stage: Callable[[str, dict], None] | None = None) -> BuildContext:
    """Run every stage; each writes its artifact and a record in report.json.

    Raises TrtBuildError on bad input or a failed gate; records written so far are kept.
    """
    src = source_mod.parse(settings.src)  # validates SRC before creating any directory
    out_dir = settings.out_dir(src.name)
    created = not out_dir.exists()
    out = ensure_dir(out_dir)
    ctx = BuildContext(settings, out, Report(out / "report.json", model=settings.src))
    try:
        for name, stage in stages_for(settings):
            log.info("stage %s: start", name)
            with Timer() as t:
                record = stage(ctx)
            record = ctx.report.add(name, t.seconds, **record)
            log.info("stage %s: done in %.2fs", name, t.seconds)
            if on_stage:
                on_stage(name, record)
            if record.get("gate_failures"):
                raise TrtBuildError(f"{name} gate failed: " + "; ".join(record["gate_failures"]),
                                    GATE_FAILED)
    except TrtBuildError as e:
        if e.code != GATE_FAILED and created and not any(out.iterdir()):
            out.rmdir()  # bad input: leave no empty directory behind
        raise
    return ctx
