"""One function per CLI command: turn parsed arguments into stage calls and a summary."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from . import demo
from .benchstage import BenchStageSettings
from .cli import command, emit
from .engine import EngineSettings
from .engines import EngineStageSettings
from .errors import TrtBuildError
from .fp16 import KEEP_FP32_OPS, Fp16Settings
from .int8 import Int8Settings
from .pipeline import BuildSettings, run
from .shapes import parse_input_spec, parse_profile_spec
from .validate import Gates

PLUGINS_DIR = Path(__file__).resolve().parents[1] / "plugins"


def _inputs(args: argparse.Namespace) -> tuple:
    specs = tuple(parse_input_spec(s) for s in args.input)
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise TrtBuildError("--input: an input name is given twice")
    return specs


PREPROCESS_FLAGS = ("resize", "crop", "grayscale", "scale", "mean", "std", "layout", "dtype")


def int8_settings(args: argparse.Namespace, need_data: bool = True) -> Int8Settings:
    """Calibration and data-reading settings; `need_data`: calibration data must be given."""
    if args.calib and args.data_loader_script:
        raise TrtBuildError("give --calib or --data-loader-script, not both")
    calib = args.calib or args.data_loader_script
    if need_data and not calib and not args.calib_cache:
        raise TrtBuildError("--int8 needs calibration data: --calib DIR, --data-loader-script "
                            "FILE.py:FN or --calib-cache FILE")
    if args.calib_cache and not args.calib_cache.is_file():
        raise TrtBuildError(f"{args.calib_cache}: no such calibration cache")
    pre = {k: getattr(args, k) for k in PREPROCESS_FLAGS if getattr(args, k) is not None}
    return Int8Settings(calib, args.calib_cache, args.calib_method, args.percentile,
                        args.calib_batch_size, args.max_samples, pre)


def fp16_settings(args: argparse.Namespace) -> Fp16Settings | None:
    if not args.fp16 or args.fp16_mode == "flag":
        return None
    keep = {k.strip() for k in args.fp16_keep.split(",") if k.strip()}
    ops = {k for k in keep if k[:1].isupper() and "/" not in k}
    return Fp16Settings(KEEP_FP32_OPS | ops, frozenset(keep - ops), args.fp16_io)


def engine_settings(args: argparse.Namespace) -> EngineStageSettings:
    plugins = sorted(str(p) for p in PLUGINS_DIR.glob("*.so")) + list(args.plugins)
    for lib in plugins:
        if not Path(lib).is_file():
            raise TrtBuildError(f"{lib}: no such plugin library")
    archs = tuple(a.strip() for a in (args.arch or "").split(",") if a.strip())
    return EngineStageSettings(
        target=args.target, builder=args.builder, archs=archs, cache_dir=args.cache_dir,
        engine=EngineSettings(tuple(parse_profile_spec(x) for x in args.shapes), args.workspace,
                              args.opt_level, args.hardware_compat, args.version_compatible,
                              args.fp16 and args.fp16_mode == "flag", args.calibrator,
                              tuple(plugins)))


def settings_from(args: argparse.Namespace, src: str) -> BuildSettings:
    if not args.int8 and (args.calib or args.data_loader_script or args.calib_cache):
        raise TrtBuildError("--calib, --data-loader-script and --calib-cache need --int8")
    return BuildSettings(src=src, out=args.out, inputs=_inputs(args),
                         dynamic_batch=getattr(args, "dynamic_batch", True),
                         opset=getattr(args, "opset", 17),
                         int8=int8_settings(args) if args.int8 else None,
                         fp16=fp16_settings(args), fp32_engine=args.fp32, val=args.val,
                         gates=Gates(args.min_top1_agreement, args.min_cosine),
                         engines=engine_settings(args), bench=bench_settings(args))


def bench_settings(args: argparse.Namespace) -> BenchStageSettings:
    from .bench import parse_regression

    if args.baseline and not args.baseline.is_file():
        raise TrtBuildError(f"{args.baseline}: no such baseline report")
    if args.iterations < 1 or args.warmup < 0:
        raise TrtBuildError("--iterations must be >= 1 and --warmup >= 0")
    return BenchStageSettings(getattr(args, "bench", True), args.warmup, args.iterations,
                              args.baseline, parse_regression(args.max_regression))


def _summary_line(stage: str, record: dict[str, Any]) -> str:
    figures = {"export": lambda r: f"max abs err vs torch {r.get('max_abs_err', 0):.2e}",
               "clean": lambda r: f"nodes {r['nodes_before']} -> {r['nodes_after']}, "
                                  f"max abs diff {r['max_abs_diff']:.1e}",
               "calibrate": lambda r: f"{r['method']}, {r.get('samples', 'cached')} samples, "
                                      f"{r['tensors']} tensors",
               "quantize": lambda r: f"{r['quantized_activations']} activations, "
                                     f"{r['quantized_weights']} weights Q/DQ",
               "validate": _validate_figures, "fp16": _validate_figures,
               "build": _build_figures, "bench": _bench_figures,
               "validate_engines": lambda r: r.get("skipped") or "; ".join(
                   f"{Path(e['engine']).parent.name}/{Path(e['engine']).name}: "
                   + _validate_figures(e) for e in r["engines"])}
    detail = figures.get(stage, lambda r: "")(record)
    out = record.get("output", "")
    return f"  {stage:<16} {record['seconds']:7.2f}s  {detail}  {out}".rstrip()


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


def _build_figures(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    engines = ", ".join(f"{e['precision']}@{e['arch']}{' (cached)' if e['cache_hit'] else ''}"
                        for e in r["engines"])
    return f"{r['builder']} {r['trt_version']}: {engines}; {r['built']} built, " \
           f"{r['cache_hits']} from cache"


def _bench_figures(r: dict[str, Any]) -> str:
    from .bench import table

    lines = [f"{x['runner']} {x['model']} {x['shape']}: p50 {x['p50_ms']:.3f} ms, "
             f"p99 {x['p99_ms']:.3f} ms, {x['throughput_per_s']:.0f}/s" for x in r["runs"]]
    if "comparison" in r:
        lines += [f"vs {r['baseline']} (max regression {100 * r['max_regression']:.1f}%):",
                  *table(r["comparison"])]
    return "\n    " + "\n    ".join(lines)


@command("build")
def cmd_build(args: argparse.Namespace) -> int:
    return _build(args, settings_from(args, args.src))


@command("demo")
def cmd_demo(args: argparse.Namespace) -> int:
    """`build` on the bundled digits CNN: FP16 and INT8 (from calib/digits/calib), both checked
    on calib/digits/val, and FP32/FP16/INT8 engines where a builder is installed."""
    args.input, args.int8, args.fp16, args.fp32 = [], True, True, True
    args.calib = args.calib or str(demo.CALIB_DIR)
    args.val = args.val or str(demo.VAL_DIR)
    if args.min_top1_agreement is None:
        args.min_top1_agreement = 0.98
    return _build(args, settings_from(args, demo.SRC))


def _build(args: argparse.Namespace, settings: BuildSettings) -> int:
    lines: list[str] = []
    ctx = run(settings, on_stage=lambda n, r: lines.append(_summary_line(n, r)))
    summary = [f"trtbuild: {settings.src} -> {ctx.out}/", *lines,
               f"  {'report':<16}          {ctx.report.path}"]
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
    reference = onnxio.load(args.reference)
    onnxio.load(args.candidate)
    data = open_dataset(args.val, reference, int8_settings(args, need_data=False))
    record = compare(args.reference, args.candidate, data, args.precision,
                     Path(args.val) if Path(args.val).is_dir() else None)
    failures = Gates(args.min_top1_agreement, args.min_cosine).failures(record)
    emit(args, record, [f"validate {args.candidate} vs {args.reference}: {_validate_figures(record)}"])
    if failures:
        raise TrtBuildError("gate failed: " + "; ".join(failures), 1)
    return 0


@command("info")
def cmd_info(args: argparse.Namespace) -> int:
    from .cache import EngineCache
    from .engine import load_backend, native_arch
    from .gpuinfo import gpu_info

    gpu = gpu_info()
    builders = {}
    for name in ("tensorrt", "tensorrt-rtx"):
        try:
            b = load_backend(name)
            builders[name] = {"version": b.version, "tag": b.tag}
        except TrtBuildError as e:
            builders[name] = {"missing": e.message}
    cache = EngineCache(args.cache_dir)
    arch = native_arch()
    prefixes = [f"{cache.root}/{arch or '<arch>'}/{b['tag']}/" for b in builders.values()
                if "tag" in b]
    info = {"gpu": gpu, "builders": builders, "cache_dir": str(cache.root),
            "cache_key_prefixes": prefixes}
    lines = [f"gpu:        {gpu['name']} ({gpu['arch']}, driver {gpu['driver']}, CUDA "
             f"{gpu['cuda']})" if gpu else "gpu:        none found (engines can still be built "
             "ahead of time with TensorRT-RTX)"]
    for name, b in builders.items():
        lines.append(f"{name + ':':<12}{b.get('version') or b['missing']}")
    lines.append(f"cache:      {cache.root}")
    lines += [f"key prefix: {p}" for p in prefixes]
    emit(args, info, lines)
    return 0


@command("cache")
def cmd_cache(args: argparse.Namespace) -> int:
    import json

    from .cache import MANIFEST, EngineCache

    cache = EngineCache(args.cache_dir)
    if args.action == "ls":
        rows = []
        for e in cache.entries():
            try:
                m = json.loads((e / MANIFEST).read_text())
            except (OSError, json.JSONDecodeError):
                m = {}
            rows.append({"entry": str(e.relative_to(cache.root)), "precision": m.get("precision"),
                         "bytes": m.get("engine_bytes"), "created": m.get("created")})
        emit(args, {"entries": rows}, [f"{r['entry']}  {r['precision']}  {r['bytes']} bytes"
                                       for r in rows] or [f"{cache.root}: empty"])
        return 0
    if args.action == "verify":
        results = cache.verify()
        bad = [(str(e), p) for e, p in results if p]
        emit(args, {"checked": len(results), "quarantined": bad},
             [f"{len(results)} entries checked, {len(bad)} quarantined",
              *[f"  {e}: {p}" for e, p in bad]])
        return 1 if bad else 0
    if args.max_age_days is None and args.max_size_mb is None:
        raise TrtBuildError("cache prune needs --max-age-days and/or --max-size-mb")
    removed = cache.prune(args.max_age_days, args.max_size_mb)
    emit(args, {"removed": [str(r) for r in removed]}, [f"removed {len(removed)} entries"])
    return 0


@command("bench")
def cmd_bench(args: argparse.Namespace) -> int:
    """Latency of one ONNX model (CPU) or engine (GPU), as a report usable as a baseline."""
    from . import onnxio
    from .bench import BenchSettings, bench_engine, bench_onnxruntime, compare
    from .benchstage import _label, profile_shapes
    from .report import Report, Timer

    s = bench_settings(args)
    is_onnx = args.model.suffix == ".onnx"
    reference = onnxio.load(args.model if is_onnx else (args.reference or _no_reference(args)))
    profiles = tuple(parse_profile_spec(x) for x in args.shapes)
    cfg = BenchSettings(s.warmup, s.iterations)
    runs = []
    with Timer() as t:
        sess = onnxio.session(reference)
        for shapes in profile_shapes(reference, profiles):
            if is_onnx:
                run = bench_onnxruntime(args.model, onnxio.random_feed(sess, shapes=shapes), cfg)
            else:
                run = bench_engine(args.model, shapes, cfg)
            runs.append({**run, "model": args.model.stem.split(".")[-1], "shape": _label(shapes)})
    record: dict[str, Any] = {"runs": runs, "warmup": s.warmup, "iterations": s.iterations}
    if s.baseline:
        from .bench import baseline_runs

        record["comparison"] = compare(runs, baseline_runs(s.baseline), s.max_regression)
        record.update(baseline=str(s.baseline), max_regression=s.max_regression)
    if args.output:
        Report(args.output, model=str(args.model)).add("bench", t.seconds, **record)
    emit(args, record, [f"bench {args.model}:{_bench_figures(record)}"])
    regressed = [r for r in record.get("comparison", []) if r["regressed"]]
    if regressed:
        raise TrtBuildError(f"latency regressed beyond {args.max_regression}: " + "; ".join(
            f"{r['runner']} {r['shape']} {100 * r['change']:+.1f}%" for r in regressed), 1)
    return 0


def _no_reference(args: argparse.Namespace) -> Path:
    raise TrtBuildError(f"{args.model}: benchmarking an engine needs --reference MODEL.onnx "
                        "(input names and shapes)")
