"""The console's one line per stage record (and the single commands' lines), also shown
in report.html's stage table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from .records import (
    Accuracy,
    BenchRecord,
    BuildRecord,
    CalibrateRecord,
    CleanRecord,
    EngineChecksRecord,
    ExportRecord,
    QuantizeRecord,
    SensitivityRecord,
    StageRecord,
)


def summary_line(stage: str, record: StageRecord) -> str:
    """One human line (or a few, for bench) per stage record."""
    return f"  {stage:<16} {record.seconds:7.2f}s  {stage_figures(stage, record)}".rstrip()


def stage_figures(stage: str, record: StageRecord) -> str:
    """summary_line without the stage and seconds columns (report.html's stage table)."""
    figures: dict[str, Callable[[Any], str]] = {
        "export": _export, "clean": _clean, "calibrate": _calibrate, "quantize": _quantize,
        "sensitivity": _sensitivity, "validate": validate_figures, "fp16": validate_figures,
        "fp8": lambda r: f"{r.quantized_activations} activations, "
                         f"{r.quantized_weights} weights FP8; " + validate_figures(r),
        "int4": lambda r: f"{r.quantized_weights} weights INT4 ({r.method}, block "
                          f"{r.block_size}, {r.weight_mb_fp32:.1f} -> {r.weight_mb_int4:.1f} MB); "
                          + validate_figures(r),
        "build": _build_figures, "bench": bench_figures, "validate_engines": _engine_checks}
    detail = figures.get(stage, lambda r: "")(record)
    out = "  ".join(x for x in (record.output or "",
                                "(reused from the cache)" if record.reused else "") if x)
    return f"{detail}  {out}".strip()


def _export(r: ExportRecord) -> str:
    line = (f"ONNX, opset {r.opset}, checked and copied" if r.source == "onnx" else
            f"max abs err vs torch {r.max_abs_err or 0:.2e}")
    if r.data_dependent_outputs:
        line += f" ({len(r.data_dependent_outputs)} data-dependent outputs: dtype and rank only)"
    return line


def _clean(r: CleanRecord) -> str:
    return (f"nodes {r.nodes_before} -> {r.nodes_after}, max abs diff {r.max_abs_diff:.1e}"
            + (f"; prepared: {'; '.join(r.prepared)}" if r.prepared else ""))


def _calibrate(r: CalibrateRecord) -> str:
    smooth = r.smoothquant
    smoothed = ""
    if smooth is not None and smooth.applied:
        convs = (f" ({smooth.conv_equalised} conv inputs equalised)"
                 if smooth.conv_equalised else "")
        smoothed = f", SmoothQuant on {smooth.smoothed} activations{convs}"
    samples = r.samples if r.samples is not None else "cached"
    return f"{r.method}, {samples} samples, {r.tensors} tensors{smoothed}"


def _quantize(r: QuantizeRecord) -> str:
    return f"{r.quantized_activations} activations, {r.quantized_weights} weights Q/DQ"


def _sensitivity(r: SensitivityRecord) -> str:
    held = (f" on {r.held_out} held-out samples ({r.search_value:.4f} on the "
            f"{r.searched_on} searched on)" if r.held_out else "")
    return (f"{r.metric} {r.before:.4f} -> {r.after:.4f}{held} "
            f"({'meets' if r.met else 'misses'} {r.target}); {r.fallback_regions} of "
            f"{r.regions_total} regions in float, INT8 MACs {100 * r.int8_mac_coverage:.1f}%, "
            f"{r.evaluations} evaluations")


def validate_figures(r: Accuracy) -> str:
    parts = []
    for name, m in (r.outputs or {}).items():
        if m.shape_mismatch or m.empty:
            parts.append(f"{name}: {m.shape_mismatch or 'empty'}")
            continue
        if m.mean_rel_err is not None:  # a few values per sample: their error comes first
            corr = m.correlation
            cos = f", cosine {m.cosine_mean:.4f}" if m.cosine_mean is not None else ""
            parts.append(f"{name}: mean rel err {m.mean_rel_err:.4f}, max abs err "
                         f"{m.max_abs_err:.2e}, correlation "
                         + (f"{corr:.4f}" if corr is not None and not math.isnan(corr)
                            else "n/a") + cos)
            continue
        top1 = f", top-1 agreement {m.top1_agreement:.4f}" if m.top1_agreement is not None else ""
        chan = (f", per-channel {m.channel_cosine_mean:.4f}"
                if m.channel_cosine_mean is not None and m.cosine_mean is not None
                and m.channel_cosine_mean < m.cosine_mean - 0.005 else "")
        parts.append(f"{name}: cosine {m.cosine_mean:.4f}{chan}{top1}")
    parts += [f"{k} {v:.4f}" for k, v in (r.scores or {}).items()
              if v is not None and not math.isnan(v)]
    acc = r.label_accuracy
    if acc is not None and None not in (acc.reference, acc.candidate, acc.delta_points):
        parts.append(f"label accuracy fp32 {acc.reference:.4f} -> {r.precision} "
                     f"{acc.candidate:.4f} ({acc.delta_points:+.2f} points)")
    return "; ".join(parts) + f" ({r.samples} samples)"


def _engine_checks(r: EngineChecksRecord) -> str:
    if r.skipped:
        return r.skipped
    return "; ".join(f"{Path(e.engine).parent.name}/{Path(e.engine).name}: "
                     + (f"refused ({e.refused})" if e.refused else validate_figures(e))
                     for e in r.engines or [])


def _build_figures(r: BuildRecord) -> str:
    if r.skipped:
        return r.skipped
    found = r.engines or []
    engines = ", ".join(f"{e.precision}@{e.arch}{' (cached)' if e.cache_hit else ''}"
                        for e in found)
    failed = "".join(f"; {f.precision}@{f.arch} FAILED" for f in r.failed or [])
    kinds = [k for k, on in (("weights stripped", any(e.weights_stripped for e in found)),
                             ("weight streaming", any(e.weight_streaming for e in found))) if on]
    kind = f" ({', '.join(kinds)})" if kinds else ""
    return f"{r.builder} {r.trt_version}: {engines or 'none'}{kind}; {r.built} built, " \
           f"{r.cache_hits} from cache{failed}"


def bench_figures(r: BenchRecord) -> str:
    from .timing import table

    lines = [f"{x.runner} ({x.device or '?'}) {x.model} {x.shape}: "
             f"p50 {x.p50_ms:.3f} ms, p99 {x.p99_ms:.3f} ms, "
             f"{x.throughput_per_s:.0f}/s" for x in r.runs]
    lines += [f"{path}: refused: {why}" for path, why in (r.refused or {}).items()]
    if r.comparison is not None:
        lines += [f"vs {r.baseline} (max regression {100 * (r.max_regression or 0):.1f}%):",
                  *table(r.comparison)]
    return "\n    " + "\n    ".join(lines)
