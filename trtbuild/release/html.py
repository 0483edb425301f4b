"""release.html: a static page (no script, report.html's style and helpers) from
release.json's content: totals, the jobs that did not pass, then one table per model with a
row per (precision, arch)."""

from __future__ import annotations

import logging
from html import escape
from pathlib import Path
from typing import Any

from ..files import write_text
from ..report_html import CSS, escaped, num_text, percent_text, precision_swatch, section_html, table_html
from .journal import EngineJobSummary, Job, Journal

log = logging.getLogger(__name__)
HEAD = ["precision", "arch", "status", "cosine vs FP32", "top-1 agreement", "scores",
        "INT8 MAC coverage", "engine size", "build s", "from cache", "size vs baseline",
        "cosine vs baseline", "latency"]


def write_html(path: Path, journal: Journal) -> None:
    """Never raises: release.json is the record, this page only a view of it."""
    try:
        write_text(path, render(journal))
    except Exception as e:  # noqa: BLE001
        log.warning("%s: not written: %s: %s", path, type(e).__name__, e)


def render(journal: Journal) -> str:
    jobs = journal.jobs
    models = list(dict.fromkeys(j.model for j in jobs.values()))
    body = [_header(journal), _failures(jobs)]
    body += [_model(name, {k: j for k, j in jobs.items() if j.model == name})
             for name in models]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>trtbuild release: {escape(Path(str(journal.manifest.get('path'))).name)}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def _header(journal: Journal) -> str:
    t, m = journal.totals, journal.manifest
    rows = [("manifest", m.get("path")), ("sha256", m.get("sha256")),
            ("trtbuild", journal.trtbuild), ("started", journal.started),
            ("finished", journal.finished), ("workers", journal.workers),
            ("baseline", journal.baseline or "none"),
            ("jobs", f"{t.jobs}: {t.ok} ok, {t.failed} failed, {t.gate_failed} gate failed, "
                     f"{t.skipped} skipped, {t.pending} pending ({t.reused} done by an "
                     "earlier run)"),
            ("engines", f"{t.engines} ({_mb(t.engine_bytes)}, {t.cache_hits} from the cache)"),
            ("job seconds", num_text(t.job_seconds)),
            ("largest peak RSS", f"{num_text(t.max_peak_rss_mb)} MB")]
    items = "".join(f"<dt>{k}</dt><dd>{escaped(v)}</dd>" for k, v in rows)
    return f"<header>\n<h1>trtbuild release</h1>\n<dl class=\"meta\">{items}</dl>\n</header>"


def _failures(jobs: dict[str, Job]) -> str:
    bad = [(k, j) for k, j in jobs.items() if j.status != "ok"]
    if not bad:
        return section_html("failures", "Failures", "<p class=\"ok\">every job passed</p>")
    items = "".join(f"<li><span class=\"bad\">{escaped(k)}: {escaped(j.status)}</span> "
                    f"{escaped(j.error)}</li>" for k, j in bad)
    return section_html("failures", f"Failures ({len(bad)})", f"<ul>{items}</ul>")


def _model(name: str, jobs: dict[str, Job]) -> str:
    prep = next((j for j in jobs.values() if j.kind == "prepare"), None)
    rows = [_row(j) for j in jobs.values() if j.kind == "engine"]
    if prep is None:
        lead = ""
    else:
        stages = ", ".join(f"{s[0]} {num_text(s[1], '.2f')} s" for s in prep.record.stages
                           if len(s) == 2)
        lead = (f"<p>prepare: {_status(prep)} in {num_text(prep.seconds)} s, peak RSS "
                f"{num_text(prep.peak_rss_mb)} MB; {escaped(stages)}"
                + (f"; <span class=\"bad\">{escaped(prep.error)}</span>" if prep.error else "")
                + "</p>\n")
    return section_html(f"model-{escape(name)}", f"Model {escape(name)}", lead + table_html(HEAD, rows))


def _row(j: Job) -> str:
    r = j.record if isinstance(j.record, EngineJobSummary) else EngineJobSummary()
    acc, e, vs = r.accuracy, r.engine, j.vs_baseline
    scores = "<br>".join(f"{escaped(k)} {num_text(v)}" for k, v in (acc.scores if acc else {}).items())
    if vs is None:
        size_vs = cos_vs = "no baseline"
    elif vs.get("new"):
        size_vs = cos_vs = "new"
    else:
        size_vs = (f"{_signed(vs.get('engine_bytes_change'))} B "
                   f"({num_text(vs.get('engine_bytes_change_pct'), '+.2f')}%)"
                   if "engine_bytes_change" in vs else "")
        cos_vs = num_text(vs.get("cosine_mean_change"), "+.6f") if "cosine_mean_change" in vs else ""
    cells = [precision_swatch(j.precision), escaped(j.arch), _status(j)]
    cos = (num_text(acc.cosine_mean) if acc else "reference" if j.precision == "fp32" else "")
    figures = [cos, num_text(acc.top1_agreement) if acc and acc.top1_agreement is not None
               else "", scores,
               percent_text(r.int8_mac_coverage) if r.int8_mac_coverage is not None else "",
               _mb(e.bytes) if e else "", num_text(e.build_seconds) if e else "",
               ("yes" if e.cache_hit else "no") if e else "", size_vs, cos_vs]
    return ("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
            + "".join(f"<td class=\"num\">{c}</td>" for c in figures)
            + "<td>not measured</td></tr>")


def _status(j: Job) -> str:
    cls = "ok" if j.status == "ok" else "bad"
    extra = " (earlier run)" if j.reused else ""
    title = f" title=\"{escaped(j.error)}\"" if j.error else ""
    return f"<span class=\"{cls}\"{title}>{escaped(j.status)}{extra}</span>"


def _mb(n: Any) -> str:
    return f"{n / 1e6:.3f} MB" if isinstance(n, int) else escaped(n)


def _signed(n: Any) -> str:
    return f"{n:+d}" if isinstance(n, int) else escaped(n)
