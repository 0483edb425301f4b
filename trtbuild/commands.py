"""One function per CLI command: turn parsed arguments into stage calls and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import demo
from .cli import command, emit
from .errors import TrtBuildError
from .int8 import Int8Settings
from .pipeline import BuildSettings, run
from .shapes import parse_input_spec
from .validate import Gates


def _inputs(args: argparse.Namespace) -> tuple:
    specs = tuple(parse_input_spec(s) for s in args.input)
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise TrtBuildError("--input: an input name is given twice")
    return specs


PREPROCESS_FLAGS = ("resize", "crop", "grayscale", "scale", "mean", "std", "layout", "dtype")


def int8_settings(args: argparse.Namespace) -> Int8Settings:
    if args.calib and args.data_loader_script:
        raise TrtBuildError("give --calib or --data-loader-script, not both")
    calib = args.calib or args.data_loader_script
    if not calib and not args.calib_cache:
        raise TrtBuildError("--int8 needs calibration data: --calib DIR, --data-loader-script "
                            "FILE.py:FN or --calib-cache FILE")
    if args.calib_cache and not args.calib_cache.is_file():
        raise TrtBuildError(f"{args.calib_cache}: no such calibration cache")
    pre = {k: getattr(args, k) for k in PREPROCESS_FLAGS if getattr(args, k) is not None}
    return Int8Settings(calib, args.calib_cache, args.calib_method, args.percentile,
                        args.calib_batch_size, args.max_samples, pre)


def settings_from(args: argparse.Namespace, src: str) -> BuildSettings:
    if not args.int8 and (args.calib or args.data_loader_script or args.calib_cache):
        raise TrtBuildError("--calib, --data-loader-script and --calib-cache need --int8")
    return BuildSettings(src=src, out=args.out, inputs=_inputs(args),
                         dynamic_batch=getattr(args, "dynamic_batch", True),
                         opset=getattr(args, "opset", 17),
                         int8=int8_settings(args) if args.int8 else None, val=args.val,
                         gates=Gates(args.min_top1_agreement, args.min_cosine))


def _summary_line(stage: str, record: dict[str, Any]) -> str:
    figures = {"export": lambda r: f"max abs err vs torch {r.get('max_abs_err', 0):.2e}",
               "clean": lambda r: f"nodes {r['nodes_before']} -> {r['nodes_after']}, "
                                  f"max abs diff {r['max_abs_diff']:.1e}",
               "calibrate": lambda r: f"{r['method']}, {r.get('samples', 'cached')} samples, "
                                      f"{r['tensors']} tensors",
               "quantize": lambda r: f"{r['quantized_activations']} activations, "
                                     f"{r['quantized_weights']} weights Q/DQ",
               "validate": _validate_figures}
    detail = figures.get(stage, lambda r: "")(record)
    out = record.get("output", "")
    return f"  {stage:<10} {record['seconds']:7.2f}s  {detail}  {out}".rstrip()


def _validate_figures(r: dict[str, Any]) -> str:
    parts = []
    for name, m in r["outputs"].items():
        top1 = f", top-1 agreement {m['top1_agreement']:.4f}" if "top1_agreement" in m else ""
        parts.append(f"{name}: cosine {m['cosine_mean']:.4f}{top1}")
    acc = r.get("label_accuracy")
    if acc:
        parts.append(f"label accuracy fp32 {acc['reference']:.4f} -> {r['precision']} "
                     f"{acc['candidate']:.4f} ({acc['delta_points']:+.2f} points)")
    return "; ".join(parts) + f" ({r['samples']} samples)"


@command("build")
def cmd_build(args: argparse.Namespace) -> int:
    return _build(args, settings_from(args, args.src))


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """`build` on the bundled digits CNN: INT8 from calib/digits/calib, checked on .../val."""
    args.input, args.int8 = [], True
    args.calib = args.calib or str(demo.CALIB_DIR)
    args.val = args.val or str(demo.VAL_DIR)
    if args.min_top1_agreement is None:
        args.min_top1_agreement = 0.98
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


@command("calibrate")
def cmd_calibrate(args: argparse.Namespace) -> int:
    from . import onnxio
    from .files import ensure_dir
    from .int8 import run_calibrate, run_quantize
    from .report import Report, Timer

    settings = int8_settings(args)
    model = onnxio.load(args.model)  # bad model: fail before creating OUTDIR
    out = ensure_dir(args.output)
    report = Report(out / "report.json", model=str(args.model))
    with Timer() as t:
        amaxes, record = run_calibrate(model, out, settings)
    lines = [_summary_line("calibrate", report.add("calibrate", t.seconds, **record))]
    with Timer() as t:
        record = run_quantize(model, amaxes, out / "model.int8.onnx")
    lines.append(_summary_line("quantize", report.add("quantize", t.seconds, **record)))
    emit(args, report.to_dict(), [f"trtbuild calibrate: {args.model} -> {out}/", *lines])
    return 0


@command("validate")
def cmd_validate(args: argparse.Namespace) -> int:
    from . import onnxio
    from .int8 import open_dataset
    from .validate import compare

    if not args.val:
        raise TrtBuildError("validate needs --val DIR (or a data loader script)")
    args.calib = args.calib or args.val
    reference = onnxio.load(args.reference)
    onnxio.load(args.candidate)
    data = open_dataset(args.val, reference, int8_settings(args))
    record = compare(args.reference, args.candidate, data, args.precision,
                     Path(args.val) if Path(args.val).is_dir() else None)
    failures = Gates(args.min_top1_agreement, args.min_cosine).failures(record)
    emit(args, record, [f"validate {args.candidate} vs {args.reference}: {_validate_figures(record)}"])
    if failures:
        raise TrtBuildError("gate failed: " + "; ".join(failures), 1)
    return 0
