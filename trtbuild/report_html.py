"""report.html: a static page rendered from report.json's content, written beside it.

One self-contained file (inline CSS and SVG, no script, no external resource; a
Content-Security-Policy says so), so it opens from a CI artifact store or a file:// URL.
The stages are read back as typed records (records.parse_stages, lenient: a missing or
new key never stops a build); a newer version's metrics are shown generically and a record
that cannot be summarised shows blank.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
from html import escape, unescape
from pathlib import Path
from typing import Any

from .files import write_text
from .records import (
    Accuracy,
    BenchRecord,
    BenchRun,
    BuildRecord,
    EngineCheck,
    EngineChecksRecord,
    LabelAccuracy,
    OutputMetrics,
    Region,
    SensitivityRecord,
    StageRecord,
    ValidateRecord,
    parse_stages,
)

log = logging.getLogger(__name__)

PRECISIONS = ("int8", "fp16", "fp32")  # the ones with a colour; anything else is grey
ACCURACY_STAGES = ("fp16", "int4", "fp8", "validate")
# metrics shown first, in this order; any other numeric key follows, sorted
KNOWN_METRICS = ("cosine_mean", "cosine_min", "top1_agreement", "channel_cosine_min",
                 "max_abs_err")  # columns; any other metric goes in "more"
# below these an output is marked even when no gate asked (a collapsed channel or class
# hides behind a mean cosine of 0.9999: resnet18 INT8's channel_cosine_min was 0.634)
SANE = {"cosine_mean": 0.99, "cosine_min": 0.95, "top1_agreement": 0.95,
        "channel_cosine_min": 0.9}
REGRESSED = "<span class=\"bad\">regressed</span>"
KNOWN_RUN_KEYS = ("runner", "device", "model", "arch", "shape", "batch", "p50_ms", "p90_ms",
                  "p99_ms", "mean_ms", "min_ms", "throughput_per_s", "iterations")

CSS = """
body{font:14px/1.45 system-ui,sans-serif;color:#222;max-width:78rem;margin:1.5rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .5rem}h2{font-size:1.15rem;margin:2rem 0 .5rem;border-bottom:1px solid #ccc}
dl.meta{display:grid;grid-template-columns:max-content 1fr;gap:.1rem 1rem;margin:0}
dl.meta dt{font-weight:600}dl.meta dd{margin:0}
div.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
td.summary{white-space:pre-wrap;font-family:ui-monospace,monospace;font-size:12px}
.bad{color:#b00020;font-weight:600}.ok{color:#1b7a3a}.warn{color:#a15c00}
td.path{word-break:break-all;font-size:12px}td.more{font-size:12px;color:#555}small.src{word-break:break-all}
.prec-int8{fill:#1b9e77;background:#1b9e77}.prec-fp16{fill:#d95f02;background:#d95f02}
.prec-fp32{fill:#7570b3;background:#7570b3}.prec-other{fill:#999;background:#999}
.bar-ok{fill:#4a90c0}.bar-bad{fill:#b00020}
.swatch{display:inline-block;width:.8rem;height:.8rem;margin-right:.3rem;vertical-align:-1px}
.legend span.item{margin-right:1rem}
svg.chart{width:100%;height:auto;border:1px solid #ddd;background:#fff}
svg.chart text{font:11px system-ui,sans-serif;fill:#444}
.banner{margin:1rem 0;padding:.6rem 1rem;font-size:1.2rem;font-weight:700;border-radius:4px}
.banner ul{margin:.3rem 0 0;font-size:.95rem;font-weight:400}
.banner.pass{background:#e3f4e8;color:#1b7a3a}.banner.fail{background:#fbe4e7;color:#b00020}
.banner.open{background:#fff4d6;color:#7a5a00}
"""


def html_path(json_path: Path) -> Path | None:
    """report.json -> report.html (same stem); None when that would be the JSON file itself."""
    path = Path(json_path).with_suffix(".html")
    return None if path == Path(json_path) else path


def write_beside(json_path: Path, data: dict[str, Any]) -> Path | None:
    """Render `data` (report.json's content) to report.html beside `json_path`, atomically.
    Never raises: report.json is the record, this page only a view of it."""
    path = html_path(json_path)
    if path is None:
        return None
    try:
        st = os.lstat(path) if os.path.lexists(path) else None
        if st is not None and not stat.S_ISREG(st.st_mode):  # never replace a link or a device
            log.warning("%s: not a regular file; report.html not written", path)
            return None
        write_text(path, render(data))
        return path
    except Exception as e:  # noqa: BLE001 - a view must not fail the build
        log.warning("%s: not written: %s: %s", path, type(e).__name__, e)
        return None


def render(data: dict[str, Any]) -> str:
    """The whole page for a report dict."""
    stages = parse_stages(data)
    by_name = {s.stage: s for s in stages}
    model = str(data.get("model", ""))
    body = [_header(data), _banner(data, stages), _stage_table(stages)]
    if isinstance(build := by_name.get("build"), BuildRecord):
        body.append(_engines(build))
    accuracy = [by_name[n] for n in (*ACCURACY_STAGES, "validate_engines") if n in by_name]
    if accuracy:
        body.append(_accuracy(accuracy))
    if isinstance(sens := by_name.get("sensitivity"), SensitivityRecord):
        body.append(_sensitivity(sens))
    if isinstance(bench := by_name.get("bench"), BenchRecord):
        body.append(_latency(bench))
    # the CSP forbids every script and remote load: any slip shows as a console error
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"  # no favicon request
            f"<title>trtbuild report: {escape(model)}</title>\n<style>{CSS}</style>\n</head>\n"
            "<body>\n" + "\n".join(body) + "\n</body>\n</html>\n")


def _header(data: dict[str, Any]) -> str:
    rows = [("model", data.get("model")), ("trtbuild", data.get("trtbuild")),
            ("created", data.get("created"))]
    items = "".join(f"<dt>{k}</dt><dd>{escaped(v)}</dd>" for k, v in rows)
    return f"<header>\n<h1>trtbuild report</h1>\n<dl class=\"meta\">{items}</dl>\n</header>"


def _banner(data: dict[str, Any], stages: list[StageRecord]) -> str:
    """PASS or FAIL first, with the error and every failed gate (a report written before
    the run ended, or by an older trtbuild, says so)."""
    status = data.get("status")
    failures = [f"{s.stage}: {f}" for s in stages for f in s.gate_failures or []]
    if status == "passed" and not failures:
        return "<div class=\"banner pass\" id=\"status\">PASS</div>"
    if status in ("failed", "gate_failed") or failures:
        items = list(failures)  # a failed gate's error is these joined
        if data.get("error") and not (status == "gate_failed" and failures):
            items.insert(0, str(data["error"]))
        lines = "".join(f"<li>{escape(x)}</li>" for x in items)
        return (f"<div class=\"banner fail\" id=\"status\">FAIL"
                f"{f'<ul>{lines}</ul>' if lines else ''}</div>")
    return ("<div class=\"banner open\" id=\"status\">NOT FINISHED (the run was still going "
            "or stopped before it could say)</div>")


def _stage_table(stages: list[StageRecord]) -> str:
    rows = [f"<tr><td>{escaped(s.stage)}</td><td class=\"num\">{num_text(s.seconds)}"
            f"</td><td class=\"summary\">{escape(_summary(s))}</td></tr>" for s in stages]
    return section_html("stages", "Stages", table_html(["stage", "seconds", "summary"], rows))


def _summary(record: StageRecord) -> str:
    """The stage's figures as the console shows them."""
    from .summary import stage_figures

    try:
        text = stage_figures(record.stage, record)
    except (TypeError, ValueError, AttributeError):
        return ""  # a record missing figures (older, newer): the tables below still show it
    # bench's extra lines are indented for a terminal; the cell keeps their inner alignment
    return "\n".join(ln.removeprefix("    ") for ln in text.split("\n")).strip("\n")


# engines ------------------------------------------------------------------------------

def _engines(r: BuildRecord) -> str:
    """One row per engine built (or taken from the cache), then one per engine that failed."""
    if r.skipped:
        return section_html("engines", "Engines", f"<p>{escaped(r.skipped)}</p>")
    rows = []
    for e in r.engines or []:
        rows.append(
            f"<tr><td>{precision_swatch(e.precision)}</td><td>{escaped(e.arch)}</td>"
            f"<td>{escaped(e.builder)} {escaped(e.builder_version)}</td>"
            f"<td class=\"num\">{_mb(e.bytes)}</td>"
            f"<td>{'cache' if e.cache_hit else 'built'}</td>"
            f"<td class=\"path\">{escaped(e.path)}</td>"
            f"<td><code title=\"{escaped(e.key)}\">{escaped(str(e.key or '')[:12])}"
            "</code></td></tr>")
    for f in r.failed or []:
        rows.append(f"<tr><td>{precision_swatch(f.precision)}</td><td>{escaped(f.arch)}"
                    f"</td><td colspan=\"5\" class=\"bad\">FAILED: {escaped(f.error)}"
                    "</td></tr>")
    table = table_html(["precision", "arch", "builder", "size", "from", "path", "cache key"], rows)
    note = "<p>The engine itself: <code>trtbuild inspect PATH</code> (no GPU needed).</p>"
    return section_html("engines", "Engines", table + note)


def _mb(n: Any) -> str:
    return f"{n / 1e6:.3g} MB" if _is_num(n) else ""


# accuracy -----------------------------------------------------------------------------

def _accuracy(records: list[StageRecord]) -> str:
    """One row per (checked model or engine, output); metric columns are the union."""
    entries: list[tuple[str, Accuracy]] = []
    notes = []
    for r in records:
        if isinstance(r, ValidateRecord):
            data = r.val or ""
            on = ("<br><span class=\"warn\">on random inputs: nothing about real data is "
                  "checked</span>" if data.startswith("random") else
                  f"<br><small class=\"src\">on {escaped(data)}</small>" if data else "")
            entries.append((f"{escaped(r.stage)} <small>(ONNX Runtime, CPU)</small>{on}", r))
        elif r.skipped:
            notes.append(f"<p>engines: not checked: {escaped(r.skipped)}</p>")
        elif isinstance(r, EngineChecksRecord):
            for e in r.engines or []:
                where = Path(e.engine or "?")
                entries.append((escaped(f"engine {where.parent.name}/{where.name}"), e))
    found = _metric_keys(e for _, e in entries)
    metrics = [k for k in found if k in KNOWN_METRICS]
    head = ["checked", "precision", "samples", "output", *(_header_name(k) for k in metrics),
            "gates"]
    rows = []
    for what, e in entries:
        lead = f"<td>{what}</td><td>{precision_swatch(e.precision)}</td>" \
               f"<td class=\"num\">{num_text(e.samples)}</td>"
        if isinstance(e, EngineCheck) and e.refused:
            rows.append(f"<tr>{lead}<td colspan=\"{len(head) - 3}\" class=\"bad\">refused: "
                        f"{escaped(e.refused)}</td></tr>")
            continue
        gates = f"<td>{_gates(e.gate_failures)}</td>"
        outputs = list((e.outputs or {}).items())
        for name, m in outputs or [("", OutputMetrics())]:
            values = m.values()
            cells = "".join(_metric_cell(k, values[k]) if k in values else "<td></td>"
                            for k in metrics)
            rows.append(f"<tr>{lead}<td>{escaped(name)}</td>{cells}{gates}</tr>")
            more = [f"{escaped(k)} {num_text(values[k])}" for k in found if k not in KNOWN_METRICS
                    and k in values]
            if more:  # a second, full-width line: the page never scrolls sideways
                rows.append(f"<tr><td colspan=\"{len(head)}\" class=\"more\">{escaped(name)}: "
                            + ", ".join(more) + "</td></tr>")
        task = [x for x in (_label_accuracy(e.label_accuracy), _scores(e.scores)) if x]
        if task:
            rows.append(f"<tr><td colspan=\"{len(head)}\" class=\"more\">"
                        + "; ".join(task) + "</td></tr>")
    marks = ", ".join(f"{k} &lt; {v}" for k, v in SANE.items())
    notes.append(f"<p>Marked red even when no gate asked: {marks}.</p>")
    return section_html("accuracy", "Accuracy per precision",
                        _accuracy_chart(entries) + table_html(head, rows) + "".join(notes))


CHARTED = ("cosine_min", "top1_agreement", "channel_cosine_min")  # worst-case agreements


def _accuracy_chart(entries: list[tuple[str, Accuracy]], width: int = 800) -> str:
    """One bar per checked model (or engine), output and agreement metric: its distance from
    perfect agreement (1 - metric) on a log axis, so 0.9999 and 0.99 look as different as
    they are; red past the metric's SANE floor (dashed)."""
    bars = []
    for what, e in entries:
        for name, m in (e.outputs or {}).items():
            values = m.values()
            for k in CHARTED:
                if k not in values:
                    continue
                v = values[k]  # NaN: the worst case, a full red bar
                v = float("-inf") if math.isnan(v) else v
                label = unescape(re.sub("<[^>]+>.*", "", what).strip())
                if label != e.precision:   # "fp16", not "fp16 fp16"
                    label = f"{label} {e.precision or ''}"
                bars.append((f"{label} {name}: {_header_name(k)}", k, v))
    if not bars:
        return ""
    lo, hi = -6, 0                                 # 1 - metric from 1e-6 to 1
    pad_l, pad_r, row, pad_t = 300, 20, 20, 8
    plot_w = width - pad_l - pad_r
    axis_y = pad_t + row * len(bars)

    def at(gap: float) -> float:
        g = min(max(gap, 10.0 ** lo), 10.0 ** hi)
        return pad_l + plot_w * (math.log10(g) - lo) / (hi - lo)

    parts = [f"<line x1=\"{pad_l}\" y1=\"{pad_t}\" x2=\"{pad_l}\" y2=\"{axis_y}\" "
             "stroke=\"#888\"/>",
             f"<line x1=\"{pad_l}\" y1=\"{axis_y}\" x2=\"{width - pad_r}\" y2=\"{axis_y}\" "
             "stroke=\"#888\"/>",
             f"<text x=\"{pad_l + plot_w / 2:.1f}\" y=\"{axis_y + 30}\" text-anchor=\"middle\">"
             "1 - metric (log; shorter is closer to the reference; dashed: sane floor)</text>"]
    parts += [f"<text x=\"{at(10.0 ** e):.1f}\" y=\"{axis_y + 14}\" text-anchor=\"middle\">"
              f"{'1' if e == 0 else f'1e{e}'}</text>" for e in range(lo, hi + 1)]
    for i, (label, key, v) in enumerate(bars):
        y = pad_t + i * row
        floor = SANE.get(key)
        bad = floor is not None and v < floor
        parts.append(f"<text x=\"{pad_l - 6}\" y=\"{y + row * 0.68:.1f}\" "
                     f"text-anchor=\"end\">{escape(label[-50:])}</text>")
        parts.append(f"<rect class=\"{'bar-bad' if bad else 'bar-ok'}\" x=\"{pad_l}\" y=\"{y + 4}\" "
                     f"width=\"{max(at(1 - v) - pad_l, 0.5):.2f}\" height=\"{row - 8}\">"
                     f"<title>{escape(label)} {_plain(v) if math.isfinite(v) else 'NaN'}"
                     "</title></rect>")
        if floor is not None:
            xf = at(1 - floor)
            parts.append(f"<line x1=\"{xf:.2f}\" y1=\"{y + 1}\" x2=\"{xf:.2f}\" "
                         f"y2=\"{y + row - 1}\" stroke=\"#c00\" stroke-dasharray=\"3,2\"/>")
    return (f"<svg class=\"chart\" id=\"accuracy-bars\" xmlns=\"http://www.w3.org/2000/svg\" "
            f"viewBox=\"0 0 {width} {axis_y + 36}\" role=\"img\" aria-label=\"agreement with "
            f"the reference per precision and output\">{''.join(parts)}</svg>\n")


HEADERS = {"cosine_mean": "cosine mean", "cosine_min": "cosine min",
           "top1_agreement": "top-1 agree", "throughput_per_s": "per second"}


def _header_name(key: str) -> str:
    """A column title that can wrap: 'p50 ms', not 'p50_ms'."""
    return HEADERS.get(key, key.replace("_", " "))


def _metric_cell(key: str, v: Any) -> str:
    floor = SANE.get(key)
    low = floor is not None and (v is None or (_is_num(v) and (math.isnan(v) or v < floor)))
    mark = f" bad\" title=\"below {floor}" if low else ""
    return f"<td class=\"num{mark}\">{num_text(v)}</td>"


def _metric_keys(entries: Any) -> list[str]:
    found: set[str] = set()
    for e in entries:
        for m in (e.outputs or {}).values():
            found |= set(m.values())  # NaN included: still a metric
    return [k for k in KNOWN_METRICS if k in found] + sorted(found - set(KNOWN_METRICS))


def _label_accuracy(acc: LabelAccuracy | None) -> str:
    if acc is None:
        return ""
    return (f"label accuracy {num_text(acc.reference)} &rarr; {num_text(acc.candidate)} "
            f"({num_text(acc.delta_points, '+.2f')} points)")


def _scores(scores: dict[str, float | None] | None) -> str:
    return ", ".join(f"{escaped(k)} {num_text(v)}" for k, v in (scores or {}).items())


def _gates(failures: Any) -> str:
    if not failures:
        return "<span class=\"ok\">passed</span>"
    items = failures if isinstance(failures, list) else [failures]
    return "<br>".join(f"<span class=\"bad\">{escaped(f)}</span>" for f in items)


# sensitivity / mixed precision ----------------------------------------------------------

def _sensitivity(r: SensitivityRecord) -> str:
    regions = r.regions or []
    totals = [("metric", escaped(r.metric)), ("target", num_text(r.target)),
              ("before", num_text(r.before)), ("after", num_text(r.after)),
              ("INT8 MAC coverage", percent_text(r.int8_mac_coverage)),
              ("evaluations", num_text(r.evaluations)), ("regions", str(len(regions)))]
    if r.held_out:  # `after` is the held-out half's value
        totals[4:4] = [("held-out samples", num_text(r.held_out)),
                       ("searched on", num_text(r.searched_on)),
                       ("search half's value", num_text(r.search_value))]
    counts = {p: sum(_prec_class(g.precision) == f"prec-{p}" for g in regions)
              for p in PRECISIONS}
    totals += [(f"{p} regions", str(n)) for p, n in counts.items() if n]
    dl = "<dl class=\"meta\">" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in totals) + "</dl>"
    legend = "<p class=\"legend\">" + "".join(
        f"<span class=\"item\"><span class=\"swatch prec-{p}\"></span>{p}</span>"
        for p in PRECISIONS) + "</p>"
    rows = [f"<tr><td class=\"num\">{i}</td><td>{escaped(g.node)}</td>"
            f"<td>{escaped(g.op_type)}</td><td class=\"num\">{num_text(g.macs)}</td>"
            f"<td class=\"num\">{percent_text(g.mac_share)}</td>"
            f"<td class=\"num\">{num_text(g.sensitivity)}</td>"
            f"<td>{precision_swatch(g.precision)}</td></tr>" for i, g in enumerate(regions)]
    table = table_html(["#", "node", "op", "MACs", "MAC share", "sensitivity", "precision"], rows)
    body = (dl + legend + "<h3>Sensitivity per region (graph order)</h3>\n" + _bars(regions)
            + "<h3>Precision map (graph order, width &prop; MAC share)</h3>\n" + _strip(regions)
            + f"<details><summary>{len(regions)} regions</summary>\n{table}</details>")
    return section_html("sensitivity", "Sensitivity and mixed precision", body)


def _bars(regions: list[Region], width: int = 800, height: int = 240) -> str:
    """Vertical bars, one per region in graph order, each numbered under it (the table
    below names them; <title> gives a hover label); labelled axes."""
    pad_l, pad_b, pad_t = 64, 30, 10
    values = [_finite(g.sensitivity) for g in regions]
    top = max([abs(v) for v in values] + [0.0]) or 1.0
    plot_w, plot_h = width - pad_l - 4, height - pad_t - pad_b
    step = min(plot_w / max(len(regions), 1), 40.0)  # a few regions: no giant bars
    parts = [f"<line x1=\"{pad_l}\" y1=\"{pad_t}\" x2=\"{pad_l}\" y2=\"{pad_t + plot_h}\" "
             "stroke=\"#888\"/>",
             f"<line x1=\"{pad_l}\" y1=\"{pad_t + plot_h}\" x2=\"{width - 4}\" "
             f"y2=\"{pad_t + plot_h}\" stroke=\"#888\"/>",
             f"<text x=\"{pad_l - 4}\" y=\"{pad_t + 8}\" text-anchor=\"end\">{top:.3g}</text>",
             f"<text x=\"{pad_l - 4}\" y=\"{pad_t + plot_h}\" text-anchor=\"end\">0</text>",
             f"<text transform=\"translate(14 {pad_t + plot_h / 2:.1f}) rotate(-90)\" "
             "text-anchor=\"middle\">metric drop in INT8</text>",
             f"<text x=\"{pad_l + plot_w / 2:.1f}\" y=\"{height - 4}\" "
             "text-anchor=\"middle\">region # (graph order; names in the table)</text>"]
    every = max(1, round(len(regions) / 25))  # at most ~25 numbers under the axis
    for i, (g, v) in enumerate(zip(regions, values)):
        h = plot_h * min(max(v, 0.0), top) / top  # negative sensitivity: no bar, still a slot
        x = pad_l + i * step + step * 0.1
        if i % every == 0:
            parts.append(f"<text x=\"{x + step * 0.4:.2f}\" y=\"{pad_t + plot_h + 12}\" "
                         f"text-anchor=\"middle\">{i}</text>")
        parts.append(f"<rect class=\"{_prec_class(g.precision)}\" x=\"{x:.2f}\" "
                     f"y=\"{pad_t + plot_h - h:.2f}\" width=\"{max(step * 0.8, 0.5):.2f}\" "
                     f"height=\"{h:.2f}\"><title>{_region_label(g)}</title></rect>")
    return (f"<svg class=\"chart\" id=\"sensitivity-bars\" xmlns=\"http://www.w3.org/2000/svg\" "
            f"viewBox=\"0 0 {width} {height}\" role=\"img\" "
            f"aria-label=\"sensitivity per region\">{''.join(parts)}</svg>\n")


def _strip(regions: list[Region], width: int = 800, height: int = 36) -> str:
    """One rectangle per region, width proportional to its MAC share (MACs when no share)."""
    shares = [g.mac_share for g in regions]
    if any(s is None or math.isnan(s) for s in shares):
        shares = [g.macs for g in regions]
    shares = [_finite(v) for v in shares]
    total = sum(max(s, 0.0) for s in shares) or 1.0
    x, parts = 0.0, []
    for g, s in zip(regions, shares):
        w = width * max(s, 0.0) / total
        parts.append(f"<rect class=\"{_prec_class(g.precision)}\" x=\"{x:.2f}\" y=\"0\" "
                     f"width=\"{w:.2f}\" height=\"{height}\" stroke=\"#fff\" stroke-width=\"0.5\">"
                     f"<title>{_region_label(g)}</title></rect>")
        x += w
    return (f"<svg class=\"chart\" id=\"precision-map\" xmlns=\"http://www.w3.org/2000/svg\" "
            f"viewBox=\"0 0 {width} {height}\" preserveAspectRatio=\"none\" role=\"img\" "
            f"aria-label=\"precision per region\">{''.join(parts)}</svg>\n")


def _region_label(g: Region) -> str:
    return escape(f"{g.node} ({g.op_type}): {g.precision}, sensitivity "
                  f"{_plain(g.sensitivity)}, MAC share {_plain(g.mac_share)}")


# latency --------------------------------------------------------------------------------

def _latency(r: BenchRecord) -> str:
    runs = [x.to_json() for x in r.runs]
    present = {k for x in runs for k in x}
    keys = [k for k in KNOWN_RUN_KEYS if k in present]
    rows = ["<tr>" + "".join(f"<td class=\"num\">{num_text(x.get(k))}</td>" if _is_num(x.get(k))
                             else f"<td>{escaped(x.get(k, ''))}</td>" for k in keys) + "</tr>"
            for x in runs]
    body = (_latency_chart(r.runs, r.comparison)
            + table_html([_header_name(k) for k in keys], rows) if runs
            else "<p>no runs</p>")
    body += "".join(f"<p class=\"bad\">{escaped(p)}: refused: {escaped(why)}</p>"
                    for p, why in (r.refused or {}).items())
    if r.comparison is not None:
        body += (f"<h3>vs {escaped(r.baseline)} (max regression "
                 f"{percent_text(r.max_regression)})</h3>\n")
        rows = [f"<tr><td>{escaped(c.get('runner'))}</td><td>{escaped(c.get('model'))}</td>"
                f"<td>{escaped(c.get('shape'))}</td><td class=\"num\">{num_text(c.get('baseline_p50_ms'))}"
                f"</td><td class=\"num\">{num_text(c.get('p50_ms'))}</td>"
                f"<td class=\"num{' bad' if c.get('regressed') else ''}\">"
                f"{percent_text(c.get('change'), '+.1f')}</td>"
                f"<td>{REGRESSED if c.get('regressed') else ''}</td>"
                "</tr>" for c in r.comparison]
        body += table_html(["runner", "model", "shape", "baseline p50 ms", "p50 ms", "change", ""],
                           rows)
    body += _gates(r.gate_failures) if r.gate_failures else ""
    return section_html("latency", "Latency", body)


def _latency_chart(runs: list[BenchRun], comparison: Any, width: int = 800) -> str:
    """One horizontal bar per run (p50, coloured by precision), a whisker to p99, and the
    baseline's p50 as a black tick when a baseline was given."""
    timed = [x.to_json() for x in runs if x.p50_ms is not None and math.isfinite(x.p50_ms)]
    if not timed:
        return ""
    base = {(c.get("runner"), c.get("model"), c.get("shape")): c.get("baseline_p50_ms")
            for c in comparison or [] if isinstance(c, dict)}
    top = max(max(x["p50_ms"], x.get("p99_ms") if _is_num(x.get("p99_ms")) else 0,
                  base.get((x.get("runner"), x.get("model"), x.get("shape"))) or 0)
              for x in timed) or 1.0
    pad_l, pad_r, row, pad_t = 260, 20, 22, 8
    plot_w = width - pad_l - pad_r
    height = pad_t + row * len(timed) + 36
    axis_y = pad_t + row * len(timed)
    parts = [f"<line x1=\"{pad_l}\" y1=\"{pad_t}\" x2=\"{pad_l}\" y2=\"{axis_y}\" "
             "stroke=\"#888\"/>",
             f"<line x1=\"{pad_l}\" y1=\"{axis_y}\" x2=\"{width - pad_r}\" y2=\"{axis_y}\" "
             "stroke=\"#888\"/>",
             f"<text x=\"{pad_l}\" y=\"{axis_y + 14}\" text-anchor=\"middle\">0</text>",
             f"<text x=\"{width - pad_r}\" y=\"{axis_y + 14}\" text-anchor=\"end\">"
             f"{top:.3g}</text>",
             f"<text x=\"{pad_l + plot_w / 2:.1f}\" y=\"{axis_y + 30}\" "
             "text-anchor=\"middle\">latency, ms (bar p50, whisker to p99, black tick: "
             "baseline p50)</text>"]
    for i, x in enumerate(timed):
        y = pad_t + i * row
        label = f"{x.get('runner', '')} {x.get('model', '')} {x.get('shape', '')}".strip()
        w = plot_w * x["p50_ms"] / top
        parts.append(f"<text x=\"{pad_l - 6}\" y=\"{y + row * 0.65:.1f}\" "
                     f"text-anchor=\"end\">{escape(label[:44])}</text>")
        parts.append(f"<rect class=\"{_prec_class(x.get('model'))}\" x=\"{pad_l}\" "
                     f"y=\"{y + 4}\" width=\"{max(w, 0.5):.2f}\" height=\"{row - 8}\">"
                     f"<title>{escape(label)}: p50 {_plain(x['p50_ms'])} ms</title></rect>")
        if _is_num(x.get("p99_ms")):
            x99 = pad_l + plot_w * x["p99_ms"] / top
            parts.append(f"<line x1=\"{pad_l + w:.2f}\" y1=\"{y + row / 2}\" "
                         f"x2=\"{x99:.2f}\" y2=\"{y + row / 2}\" stroke=\"#444\"/>")
        old = base.get((x.get("runner"), x.get("model"), x.get("shape")))
        if _is_num(old):
            xb = pad_l + plot_w * old / top
            parts.append(f"<line x1=\"{xb:.2f}\" y1=\"{y + 2}\" x2=\"{xb:.2f}\" "
                         f"y2=\"{y + row - 2}\" stroke=\"#000\" stroke-width=\"2\"/>")
    return (f"<svg class=\"chart\" id=\"latency-bars\" xmlns=\"http://www.w3.org/2000/svg\" "
            f"viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"latency per "
            f"precision and shape\">{''.join(parts)}</svg>\n")


# small pieces -----------------------------------------------------------------------------

def section_html(ident: str, title: str, body: str) -> str:
    return f"<section id=\"{ident}\">\n<h2>{title}</h2>\n{body}\n</section>"


def table_html(head: list[str], rows: list[str]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    # wide tables (many metrics) scroll on their own, never the page
    return f"<div class=\"scroll\"><table>\n<thead><tr>{th}</tr></thead>\n<tbody>\n" + \
        "\n".join(rows) + "\n</tbody>\n</table></div>\n"


def _finite(v: float | None) -> float:
    """A value a chart can draw: None and NaN as 0."""
    return v if v is not None and math.isfinite(v) else 0.0


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _plain(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def num_text(v: Any, fmt: str = ".4g") -> str:
    """Numbers as text (4 significant digits); None (a NaN in report.json) as n/a. A value
    that rounds to an integer it is not (0.99999 -> 1) keeps its digits: a cosine of 1
    would claim an exact match."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, float):
        if fmt != ".4g":
            return escape(format(v, fmt))
        if abs(v) >= 1e4:  # throughputs: whole numbers, not 4.768e+04
            return f"{v:.0f}"
        for digits in range(4, 11):  # 0.99999992 is not 1
            text = format(v, f".{digits}g")
            if float(text) == v or not float(text).is_integer():
                break
        return escape(text)
    return escaped(v)


def percent_text(v: Any, fmt: str = ".1f") -> str:
    return f"{format(100 * v, fmt)}%" if _is_num(v) else num_text(v)


def escaped(v: Any) -> str:
    return "" if v is None else escape(str(v))


def _prec_class(p: Any) -> str:
    return f"prec-{p}" if p in PRECISIONS else "prec-other"


def precision_swatch(p: Any) -> str:
    return f"<span class=\"swatch {_prec_class(p)}\"></span>{escaped(p)}" if p is not None else ""
