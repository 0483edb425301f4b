"""The console's one line per stage record (and the single commands' lines), also shown
in report.html's stage table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .records import engine_records


def summary_line(stage: str, record: dict[str, Any]) -> str:
    """One human line (or a few, for bench) per stage record."""
    figures = {"export": lambda r: (f"ONNX, opset {r.get('opset')}, checked and copied"
                                    if r.get("source") == "onnx" else
                                    f"max abs err vs torch {r.get('max_abs_err', 0):.2e}") + (
                   f" ({len(r['data_dependent_outputs'])} data-dependent outputs: dtype and "
                   "rank only)" if r.get("data_dependent_outputs") else ""),
               "clean": lambda r: f"nodes {r['nodes_before']} -> {r['nodes_after']}, "
                                  f"max abs diff {r['max_abs_diff']:.1e}" + (
                                      f"; prepared: {'; '.join(r['prepared'])}"
                                      if r.get("prepared") else ""),
               "calibrate": lambda r: f"{r['method']}, {r.get('samples', 'cached')} samples, "
                                      f"{r['tensors']} tensors{_smoothed(r)}",
               "quantize": lambda r: f"{r['quantized_activations']} activations, "
                                     f"{r['quantized_weights']} weights Q/DQ",
               "sensitivity": lambda r: f"{r['metric']} {r['before']:.4f} -> "
                                        f"{r['after']:.4f}{_held_out(r)} ("
                                        f"{'meets' if r['met'] else 'misses'}"
                                        f" {r['target']}); {r['fallback_regions']} of "
                                        f"{r['regions_total']} regions in float, INT8 MACs "
                                        f"{100 * r['int8_mac_coverage']:.1f}%, "
                                        f"{r['evaluations']} evaluations",
               "validate": validate_figures, "fp16": validate_figures,
               "fp8": lambda r: f"{r['quantized_activations']} activations, "
                                f"{r['quantized_weights']} weights FP8; " + validate_figures(r),
               "int4": lambda r: f"{r['quantized_weights']} weights INT4 ({r['method']}, "
                                 f"block {r['block_size']}, {r['weight_mb_fp32']:.1f} -> "
                                 f"{r['weight_mb_int4']:.1f} MB); " + validate_figures(r),
               "build": _build_figures, "bench": bench_figures,
               "validate_engines": _engine_checks}
    detail = figures.get(stage, lambda r: "")(record)
    out = "  ".join(x for x in (record.get("output", ""),
                                "(reused from the cache)" if record.get("reused") else "") if x)
    return f"  {stage:<16} {record['seconds']:7.2f}s  {detail}  {out}".rstrip()


def _smoothed(r: dict[str, Any]) -> str:
    smooth = r.get("smoothquant") or {}
    convs = f" ({smooth['conv_equalised']} conv inputs equalised)" \
        if smooth.get("conv_equalised") else ""
    return (f", SmoothQuant on {smooth['smoothed']} activations{convs}" if smooth.get("applied")
            else "")


def _held_out(r: dict[str, Any]) -> str:
    """Where the search's answer was measured, when it was held out."""
    if not r.get("held_out"):
        return ""
    return (f" on {r['held_out']} held-out samples ({r['search_value']:.4f} on the "
            f"{r['searched_on']} searched on)")


def validate_figures(r: dict[str, Any]) -> str:
    parts = []
    for name, m in r["outputs"].items():
        if "shape_mismatch" in m or "empty" in m:
            parts.append(f"{name}: {m.get('shape_mismatch', 'empty')}")
            continue
        if "mean_rel_err" in m:  # a few values per sample: their error comes first
            corr = m.get("correlation")
            cos = f", cosine {m['cosine_mean']:.4f}" if "cosine_mean" in m else ""
            parts.append(f"{name}: mean rel err {m['mean_rel_err']:.4f}, max abs err "
                         f"{m['max_abs_err']:.2e}, correlation "
                         + (f"{corr:.4f}" if corr is not None else "n/a") + cos)
            continue
        top1 = f", top-1 agreement {m['top1_agreement']:.4f}" if "top1_agreement" in m else ""
        chan = (f", per-channel {m['channel_cosine_mean']:.4f}"
                if m.get("channel_cosine_mean", 1.0) < m["cosine_mean"] - 0.005 else "")
        parts.append(f"{name}: cosine {m['cosine_mean']:.4f}{chan}{top1}")
    parts += [f"{k} {v:.4f}" for k, v in r.get("scores", {}).items() if v is not None]
    acc = r.get("label_accuracy")
    if acc:
        parts.append(f"label accuracy fp32 {acc['reference']:.4f} -> {r['precision']} "
                     f"{acc['candidate']:.4f} ({acc['delta_points']:+.2f} points)")
    return "; ".join(parts) + f" ({r['samples']} samples)"


def _engine_checks(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    return "; ".join(f"{Path(e['engine']).parent.name}/{Path(e['engine']).name}: "
                     + (f"refused ({e['refused']})" if "refused" in e else validate_figures(e))
                     for e in r["engines"])


def _build_figures(r: dict[str, Any]) -> str:
    if "skipped" in r:
        return r["skipped"]
    found = engine_records(r)
    engines = ", ".join(f"{e.precision}@{e.arch}{' (cached)' if e.cache_hit else ''}"
                        for e in found)
    failed = "".join(f"; {f['precision']}@{f['arch']} FAILED" for f in r.get("failed", []))
    kinds = [k for k, on in (("weights stripped", any(e.weights_stripped for e in found)),
                             ("weight streaming", any(e.weight_streaming for e in found))) if on]
    kind = f" ({', '.join(kinds)})" if kinds else ""
    return f"{r['builder']} {r['trt_version']}: {engines or 'none'}{kind}; {r['built']} built, " \
           f"{r['cache_hits']} from cache{failed}"


def bench_figures(r: dict[str, Any]) -> str:
    from .timing import table

    lines = [f"{x['runner']} ({x.get('device', '?')}) {x['model']} {x['shape']}: "
             f"p50 {x['p50_ms']:.3f} ms, p99 {x['p99_ms']:.3f} ms, "
             f"{x['throughput_per_s']:.0f}/s" for x in r["runs"]]
    lines += [f"{path}: refused: {why}" for path, why in r.get("refused", {}).items()]
    if "comparison" in r:
        lines += [f"vs {r['baseline']} (max regression {100 * r['max_regression']:.1f}%):",
                  *table(r["comparison"])]
    return "\n    " + "\n    ".join(lines)
