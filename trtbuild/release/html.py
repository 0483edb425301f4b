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

log = logging.getLogger(__name__)
HEAD = ["precision", "arch", "status", "cosine vs FP32", "top-1 agreement", "scores",
        "INT8 MAC coverage", "engine size", "build s", "from cache", "size vs baseline",
        "cosine vs baseline", "latency"]


def write_html(path: Path, journal: dict[str, Any]) -> None:
    """Never raises: release.json is the record, this page only a view of it."""
    try:
        write_text(path, render(journal))
    except Exception as e:  # noqa: BLE001
        log.warning("%s: not written: %s: %s", path, type(e).__name__, e)


def render(journal: dict[str, Any]) -> str:
    jobs = journal.get("jobs") or {}
    models = list(dict.fromkeys(j.get("model") for j in jobs.values()))
    body = [_header(journal), _failures(jobs)]
    body += [_model(name, {k: j for k, j in jobs.items() if j.get("model") == name})
             for name in models]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; img-src data:\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<link rel=\"icon\" href=\"data:,\">\n"
            f"<title>trtbuild release: {escape(_manifest_name(journal))}</title>\n"
            f"<style>{CSS}</style>\n</head>\n<body>\n" + "\n".join(body)
            + "\n</body>\n</html>\n")


def _manifest_name(journal: dict[str, Any]) -> str:
    return Path(str((journal.get("manifest") or {}).get("path"))).name


def _header(journal: dict[str, Any]) -> str:
    t = journal.get("totals") or {}
    m = journal.get("manifest") or {}
    rows = [("manifest", m.get("path")), ("sha256", m.get("sha256")),
            ("trtbuild", journal.get("trtbuild")), ("started", journal.get("started")),
            ("finished", journal.get("finished")), ("workers", journal.get("workers")),
            ("baseline", journal.get("baseline") or "none"),
            ("jobs", f"{t.get('jobs')}: {t.get('ok')} ok, {t.get('failed')} failed, "
                     f"{t.get('gate_failed')} gate failed, {t.get('skipped')} skipped, "
                     f"{t.get('pending')} pending ({t.get('reused')} done by an earlier run)"),
            ("engines", f"{t.get('engines')} ({_mb(t.get('engine_bytes'))}, "
                        f"{t.get('cache_hits')} from the cache)"),
            ("job seconds", num_text(t.get("job_seconds"))),
            ("largest peak RSS", f"{num_text(t.get('max_peak_rss_mb'))} MB")]
    items = "".join(f"<dt>{k}</dt><dd>{escaped(v)}</dd>" for k, v in rows)
    return f"<header>\n<h1>trtbuild release</h1>\n<dl class=\"meta\">{items}</dl>\n</header>"


def _failures(jobs: dict[str, Any]) -> str:
    bad = [(k, j) for k, j in jobs.items() if j.get("status") != "ok"]
    if not bad:
        return section_html("failures", "Failures", "<p class=\"ok\">every job passed</p>")
    items = "".join(f"<li><span class=\"bad\">{escaped(k)}: {escaped(j.get('status'))}</span> "
                    f"{escaped(j.get('error'))}</li>" for k, j in bad)
    return section_html("failures", f"Failures ({len(bad)})", f"<ul>{items}</ul>")


def _model(name: str, jobs: dict[str, Any]) -> str:
    prep = next((j for j in jobs.values() if j.get("kind") == "prepare"), {})
    stages = ", ".join(f"{s} {num_text(sec, '.2f')} s" for s, sec in (prep.get("record") or {})
                       .get("stages") or [])
    lead = (f"<p>prepare: {_status(prep)} in {num_text(prep.get('seconds'))} s, peak RSS "
            f"{num_text(prep.get('peak_rss_mb'))} MB; {escaped(stages)}"
            + (f"; <span class=\"bad\">{escaped(prep.get('error'))}</span>"
               if prep.get("error") else "") + "</p>\n")
    rows = [_row(j) for j in jobs.values() if j.get("kind") == "engine"]
    return section_html(f"model-{escape(name)}", f"Model {escape(name)}", lead + table_html(HEAD, rows))


def _row(j: dict[str, Any]) -> str:
    r = j.get("record") or {}
    acc = r.get("accuracy") or {}
    e = r.get("engine") or {}
    vs = j.get("vs_baseline")
    scores = "<br>".join(f"{escaped(k)} {num_text(v)}" for k, v in (acc.get("scores") or {}).items())
    if vs is None:
        size_vs = cos_vs = "no baseline"
    elif vs.get("new"):
        size_vs = cos_vs = "new"
    else:
        size_vs = (f"{_signed(vs.get('engine_bytes_change'))} B "
                   f"({num_text(vs.get('engine_bytes_change_pct'), '+.2f')}%)"
                   if "engine_bytes_change" in vs else "")
        cos_vs = num_text(vs.get("cosine_mean_change"), "+.6f") if "cosine_mean_change" in vs else ""
    cells = [precision_swatch(j.get("precision")), escaped(j.get("arch")), _status(j)]
    cos = (num_text(acc.get("cosine_mean")) if acc else
           "reference" if j.get("precision") == "fp32" else "")
    figures = [cos, num_text(acc.get("top1_agreement")) if "top1_agreement" in acc else "", scores,
               percent_text(r.get("int8_mac_coverage")) if r.get("int8_mac_coverage") is not None
               else "", _mb(e.get("bytes")) if e else "",
               num_text(e.get("build_seconds")) if e else "",
               ("yes" if e.get("cache_hit") else "no") if e else "", size_vs, cos_vs]
    return ("<tr>" + "".join(f"<td>{c}</td>" for c in cells)
            + "".join(f"<td class=\"num\">{c}</td>" for c in figures)
            + "<td>not measured</td></tr>")


def _status(j: dict[str, Any]) -> str:
    s = j.get("status")
    cls = "ok" if s == "ok" else "bad"
    extra = " (earlier run)" if j.get("reused") else ""
    title = f" title=\"{escaped(j.get('error'))}\"" if j.get("error") else ""
    return f"<span class=\"{cls}\"{title}>{escaped(s)}{extra}</span>"


def _mb(n: Any) -> str:
    return f"{n / 1e6:.3f} MB" if isinstance(n, int) else escaped(n)


def _signed(n: Any) -> str:
    return f"{n:+d}" if isinstance(n, int) else escaped(n)
