"""The build driver: composes the stages into one output directory with report.json."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import source as source_mod
from .export import ExportSettings, export
from .files import ensure_dir
from .report import Report, Timer
from .shapes import Shape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    """Everything `trtbuild build` needs; later stages read their own fields."""

    src: str
    out: Path | None = None
    inputs: tuple[tuple[str, Shape], ...] = ()
    dynamic_batch: bool = True
    opset: int = 17
    int8: bool = False
    calib: Path | None = None
    calib_cache: Path | None = None
    val: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def out_dir(self, name: str) -> Path:
        return self.out or Path("trtbuild-out") / name


@dataclass
class BuildContext:
    """What the stages hand each other: the output dir, the report and artifact paths."""

    settings: BuildSettings
    out: Path
    report: Report
    artifacts: dict[str, Path] = field(default_factory=dict)


Stage = Callable[[BuildContext], dict[str, Any]]


def stage_export(ctx: BuildContext) -> dict[str, Any]:
    s = ctx.settings
    src = source_mod.load(source_mod.parse(s.src), dict(s.inputs) or None)
    names = tuple(n for n, _ in s.inputs)
    result = export(src, ctx.out / "model.onnx", ExportSettings(names, s.dynamic_batch, s.opset))
    ctx.artifacts["model"] = result.path
    return result.record()


def stage_clean(ctx: BuildContext) -> dict[str, Any]:
    from .clean import clean

    result = clean(ctx.artifacts["model"], ctx.out / "model.clean.onnx")
    ctx.artifacts["clean"] = result.path
    return result.record()


def stages_for(settings: BuildSettings) -> list[tuple[str, Stage]]:
    """The stage list for these settings, in order. Later issues append to it."""
    return [("export", stage_export), ("clean", stage_clean)]


def run(settings: BuildSettings, on_stage: Callable[[str, dict], None] | None = None) -> BuildContext:
    """Run every stage; each writes its artifact and a record in report.json.

    Raises TrtBuildError on bad input or a failed gate; records written so far are kept.
    """
    src = source_mod.parse(settings.src)  # validates SRC before creating any directory
    out = ensure_dir(settings.out_dir(src.name))
    ctx = BuildContext(settings, out, Report(out / "report.json", model=settings.src))
    for name, stage in stages_for(settings):
        log.info("stage %s: start", name)
        with Timer() as t:
            record = stage(ctx)
        record = ctx.report.add(name, t.seconds, **record)
        log.info("stage %s: done in %.2fs", name, t.seconds)
        if on_stage:
            on_stage(name, record)
    return ctx
