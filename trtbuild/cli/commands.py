"""One function per command: parsed flags -> an API call -> summary lines or JSON."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

from .. import api
from ..errors import GATE_FAILED, OK
from ..records import BenchRecord, StageRecord, ValidateRecord
from ..release.journal import EngineJobSummary, Job, Journal, Totals
from ..report import dumps
from ..summary import bench_figures, summary_line, validate_figures
from .args import options

Command = Callable[[argparse.Namespace], int]


def emit(args: argparse.Namespace, data: dict[str, Any], summary: list[str]) -> None:
    """JSON on stdout with --json (summary then on stderr), else the summary on stdout."""
    stream = sys.stderr if args.json else sys.stdout
    for line in [] if getattr(args, "quiet", False) else summary:
        _say(line, stream)
    if args.json:
        _say(dumps(data), sys.stdout)


def _say(line: str, stream: Any) -> None:
    """Print and flush; a reader that went away (`| head`) does not stop the build: the
    rest of the output goes nowhere, the files and report.json are still written."""
    try:
        print(line, file=stream, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


def _run_summary(args: argparse.Namespace, title: str, run: Callable) -> int:
    """The title, then each stage's summary line as the stage ends (stdout; stderr with
    --json, whose report goes to stdout at the end); when a stage fails or the run is
    interrupted, with --json {"stages": [...], "error": {"exit_code", "message"}} on stdout,
    so a pipeline reading stdout sees what ran and why it stopped."""
    from ..errors import INTERNAL_ERROR, INTERRUPTED, TrtBuildError, environment_error, internal_error

    stream = sys.stderr if args.json else sys.stdout
    quiet = getattr(args, "quiet", False)
    done: list[dict[str, Any]] = []
    if not quiet:
        _say(title, stream)

    def on_stage(name: str, record: StageRecord) -> None:
        if not quiet:
            _say(summary_line(name, record), stream)
        done.append(record.to_json())

    def failed(code: int, message: str) -> None:
        emit(args, {"stages": done, "error": {"exit_code": code, "message": message}}, [])

    try:
        result = run(on_stage)
    except TrtBuildError as e:
        failed(e.code, e.message)
        raise
    except KeyboardInterrupt:  # SIGINT, or SIGTERM through main's handler
        failed(INTERRUPTED, "interrupted")
        raise
    except Exception as e:  # main() prints the same line and exits with the same code
        told = environment_error(e)
        if told is not None:
            failed(told.code, told.message)
        else:
            failed(INTERNAL_ERROR, internal_error(e))
        raise
    report = result.out / "report.json"
    engines = [f"  {'engine':<16}          {e.path}" for e in result.engines]
    emit(args, result.report,
         [*engines, f"  {'report':<16}          {report}, {report.with_suffix('.html')}"])
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    opts = options(args)
    out = opts.pop("out", None)
    return _run_summary(args, f"trtbuild: {args.src}", lambda on_stage: api.build(
        args.src, out, on_stage=on_stage, **opts))


def cmd_demo(args: argparse.Namespace) -> int:
    from .. import demo

    opts = {**demo.OPTIONS, **options(args)}
    out = opts.pop("out")
    return _run_summary(args, f"trtbuild: {demo.SRC}", lambda on_stage: api.build(
        demo.SRC, out, on_stage=on_stage, **opts))


def cmd_export(args: argparse.Namespace) -> int:
    r = api.export(args.src, args.output, **options(args))
    emit(args, r, [f"exported {args.src} -> {r['output']} (opset {r['opset']}, "
                   f"max abs err vs torch {r['max_abs_err']:.2e})"])
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    r = api.clean(args.model, args.output)
    before, after = r["ops_before"], r["ops_after"]
    emit(args, r, [f"cleaned {args.model} -> {r['output']}: {r['nodes_before']} -> "
                   f"{r['nodes_after']} nodes, max abs diff {r['max_abs_diff']:.1e}",
                   *[f"  {op:<24} {before.get(op, 0):>5} -> {after.get(op, 0):>5}"
                     for op in sorted(set(before) | set(after))]])
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    opts = options(args)
    calib = opts.pop("calib", None)
    return _run_summary(args, f"trtbuild calibrate: {args.model}", lambda on_stage: api.calibrate(
        args.model, calib, args.output, on_stage=on_stage, **opts))


def cmd_validate(args: argparse.Namespace) -> int:
    opts = options(args)
    val = opts.pop("val", None)
    return _show(args, lambda r: [f"validate {args.candidate} vs {args.reference}: "
                                  f"{validate_figures(ValidateRecord.from_json(r))}"],
                 lambda: api.validate(args.reference, args.candidate, val, args.precision,
                                      **opts))


def cmd_bench(args: argparse.Namespace) -> int:
    opts = options(args)
    opts.pop("builder", None)
    return _show(args, lambda r: [f"bench {args.model}:{bench_figures(BenchRecord.from_json(r))}"],
                 lambda: api.bench(args.model, args.output, reference=args.reference,
                                   builder=args.builder, **opts))


def _show(args: argparse.Namespace, lines: Callable[[dict], list[str]],
          call: Callable[[], dict]) -> int:
    """Emit the command's record, also when a gate failed (then re-raise: exit 1)."""
    from ..errors import TrtBuildError

    try:
        record = call()
    except TrtBuildError as e:
        if e.record is not None:
            emit(args, e.record, lines(e.record))
        raise
    emit(args, record, lines(record))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..cache import EngineCache
    from ..trt.backend import installed_backends, native_arch
    from ..trt.gpu import gpu_info

    gpu = gpu_info()
    builders = installed_backends()
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
        lines.append(f"{name + ':':<14}{b.get('version') or b['missing']}")
    lines.append(f"cache:        {cache.root}")
    lines += [f"key prefix:   {p}" for p in prefixes]
    emit(args, info, lines)
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from ..cache import EngineCache
    from ..errors import TrtBuildError

    cache = EngineCache(args.cache_dir)
    if args.action == "ls":
        rows = api.cache_list(args.cache_dir, args.arch, args.model)
        total = sum(r["bytes"] or 0 for r in rows)
        emit(args, {"root": str(cache.root), "entries": rows, "total_bytes": total},
             cache_rows(rows, cache.root))
        return 0
    if args.arch or args.model:
        raise TrtBuildError(f"cache {args.action}: --arch and --model filter `cache ls` only")
    if args.action == "verify":
        results = cache.verify()
        bad = [(str(e), p) for e, p in results if p]
        emit(args, {"checked": len(results), "quarantined": bad},
             [f"{len(results)} entries checked, {len(bad)} quarantined",
              *[f"  {e}: {p}" for e, p in bad]])
        return GATE_FAILED if bad else OK
    if args.max_age_days is None and args.max_size_mb is None:
        raise TrtBuildError("cache prune needs --max-age-days and/or --max-size-mb")
    removed = cache.prune(args.max_age_days, args.max_size_mb)
    emit(args, {"removed": [str(r) for r in removed]}, [f"removed {len(removed)} entries"])
    return 0


def cache_rows(rows: list[dict[str, Any]], root: Any) -> list[str]:
    """`cache ls` as a table: source model, precision (or stage), arch, builder, size, age,
    key prefix; then the total."""
    import time

    if not rows:
        return [f"{root}: no entries"]
    now = time.time()
    table = [("MODEL", "PRECISION", "ARCH", "BUILDER", "SIZE", "AGE", "KEY")]
    for r in rows:
        kind = r["precision"] if r["kind"] == "engine" else f"stage {r['precision']}"
        table.append((r["source"] or "?", str(kind) + (" DAMAGED" if r["problem"] else ""),
                      r["arch"] or "-", r["builder"] or "-", _size(r["bytes"] or 0),
                      _age(now - r["created"]) if r["created"] else "?", r["key"][:12]))
    widths = [max(len(row[k]) for row in table) for k in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table]
    engines = sum(r["kind"] == "engine" for r in rows)
    return lines + [f"{len(rows)} entries ({engines} engines, {len(rows) - engines} stage "
                    f"outputs), {_size(sum(r['bytes'] or 0 for r in rows))} in {root}"]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return ""


def _age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{seconds / span:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..engine_info import lines

    info = api.inspect(args.target, args.cache_dir)
    emit(args, info, lines(info))
    return 0


def cmd_release(args: argparse.Namespace) -> int:
    from ..errors import TrtBuildError
    from ..progress import bar
    from ..release.manifest import load
    from ..release.run import default_out

    stream = sys.stderr if args.json else sys.stdout
    m = load(args.manifest)  # a bad manifest: exit 2 before anything is printed
    out = args.out or default_out(args.manifest)
    print(f"trtbuild release: {args.manifest} -> {out}/", file=stream, flush=True)
    try:  # one bar for the whole release (on a terminal), a line per job above it
        with bar("release", len(m.jobs()) + len(m.models)) as progress:
            def on_job(key: str, j: Job) -> None:  # sys.stdout now: the bar's proxy
                print(f"  {release_line(key, j)}", file=sys.stderr if args.json else sys.stdout,
                      flush=True)
                progress.advance(1)
                progress.note(key)

            journal = api.release(args.manifest, out, baseline=args.baseline,
                                  workers=args.workers, on_job=on_job, ray=args.ray)
    except TrtBuildError as e:
        if e.record is not None:
            emit(args, e.record, _release_summary(e.record, out))
        raise
    emit(args, journal, _release_summary(journal, out))
    return 0


def release_line(key: str, j: Job) -> str:
    e = j.record.engine if isinstance(j.record, EngineJobSummary) else None
    parts = [f"{key:<28} {j.status:<11}"]
    if j.reused:
        parts.append("done by an earlier run")
    elif j.seconds is not None and j.status != "skipped":
        parts.append(f"{j.seconds:6.2f}s {j.peak_rss_mb or 0:7.1f} MB")
    if e is not None and e.bytes is not None:
        parts.append(f"{e.bytes / 1e6:.3f} MB engine{' (cached)' if e.cache_hit else ''}")
    if j.error:
        parts.append(j.error.removeprefix("skipped ").strip("()"))
    return "  ".join(parts)


def _release_summary(journal: dict, out: Any) -> list[str]:
    found = Journal.from_json(journal)
    t = found.totals if found else Totals()
    return [f"  {t.ok} of {t.jobs} jobs ok ({t.reused} done by an earlier run), "
            f"{t.failed} failed, {t.gate_failed} gate failed, {t.skipped} skipped; "
            f"{t.engines} engines, {t.cache_hits} from the cache",
            f"  {'release':<16} {out}/release.json  {out}/release.html"]


COMMANDS: dict[str, Command] = {
    "build": cmd_build, "demo": cmd_demo, "export": cmd_export, "clean": cmd_clean,
    "calibrate": cmd_calibrate, "validate": cmd_validate, "bench": cmd_bench,
    "info": cmd_info, "cache": cmd_cache, "inspect": cmd_inspect, "release": cmd_release,
}
