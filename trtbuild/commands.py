"""One function per CLI command: turn parsed arguments into stage calls and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import demo
from .cli import command, emit
from .errors import TrtBuildError
from .pipeline import BuildSettings, run
from .shapes import parse_input_spec


def _inputs(args: argparse.Namespace) -> tuple:
    specs = tuple(parse_input_spec(s) for s in args.input)
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise TrtBuildError("--input: an input name is given twice")
    return specs


def settings_from(args: argparse.Namespace, src: str) -> BuildSettings:
    return BuildSettings(src=src, out=args.out, inputs=_inputs(args) if hasattr(args, "input")
                         else (), dynamic_batch=getattr(args, "dynamic_batch", True),
                         opset=getattr(args, "opset", 17))


def _summary_line(stage: str, record: dict[str, Any]) -> str:
    figures = {"export": lambda r: f"max abs err vs torch {r.get('max_abs_err', 0):.2e}",
               "clean": lambda r: f"nodes {r['nodes_before']} -> {r['nodes_after']}, "
                                  f"max abs diff {r['max_abs_diff']:.1e}"}
    detail = figures.get(stage, lambda r: "")(record)
    out = record.get("output", "")
    return f"  {stage:<10} {record['seconds']:7.2f}s  {detail}  {out}".rstrip()


@command("build")
def cmd_build(args: argparse.Namespace) -> int:
    return _build(args, settings_from(args, args.src))


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    args.input = []
    return _build(args, settings_from(args, demo.SRC))


def _build(args: argparse.Namespace, settings: BuildSettings) -> int:
    lines: list[str] = []
    ctx = run(settings, on_stage=lambda n, r: lines.append(_summary_line(n, r)))
    summary = [f"trtbuild: {settings.src} -> {ctx.out}/", *lines, f"  report     {ctx.report.path}"]
    emit(args, ctx.report.to_dict(), summary)
    return 0


@command("export")
def cmd_export(args: argparse.Namespace) -> int:
    from . import source
    from .export import ExportSettings, export

    specs = _inputs(args)
    _check_parent(args.output)
    src = source.load(source.parse(args.src), dict(specs) or None)
    result = export(src, args.output, ExportSettings(tuple(n for n, _ in specs),
                                                     args.dynamic_batch, args.opset))
    emit(args, result.record(), [f"exported {args.src} -> {result.path} (opset {result.opset}, "
                                 f"max abs err vs torch {result.max_abs_err:.2e})"])
    return 0


@command("clean")
def cmd_clean(args: argparse.Namespace) -> int:
    from .clean import clean

    _check_parent(args.output)
    result = clean(args.model, args.output)
    r = result.record()
    emit(args, r, [f"cleaned {args.model} -> {result.path}: {r['nodes_before']} -> "
                   f"{r['nodes_after']} nodes, max abs diff {r['max_abs_diff']:.1e}",
                   *[f"  {op:<24} {result.nodes_before.get(op, 0):>5} -> "
                     f"{result.nodes_after.get(op, 0):>5}"
                     for op in sorted(set(result.nodes_before) | set(result.nodes_after))]])
    return 0


def _check_parent(path: Path) -> None:
    if path.is_dir():
        raise TrtBuildError(f"{path}: output path is a directory")
    if not path.parent.is_dir():
        raise TrtBuildError(f"{path.parent}: output directory does not exist")
