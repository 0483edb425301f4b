"""report.html (#10 part 5): written beside report.json after every stage, rendered from a
real digits-demo run and from a hand-written report with the (future) sensitivity stage, and
opened in headless Chromium from a file:// URL, which must log no console message at all."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import run_cli

from trtbuild import report_html
from trtbuild.records import CleanRecord, ExportRecord, StageRecord
from trtbuild.report import Report

REGIONS = [  # graph order; MAC shares sum to 1
    {"node": "conv_1", "op_type": "Conv", "macs": 400, "mac_share": 0.4, "sensitivity": 0.02,
     "precision": "int8"},
    {"node": "conv_2<b>", "op_type": "Conv", "macs": 300, "mac_share": 0.3, "sensitivity": 0.3,
     "precision": "fp16"},
    {"node": "gemm_&_head", "op_type": "Gemm", "macs": 200, "mac_share": 0.2,
     "sensitivity": 0.6, "precision": "fp32"},
    {"node": "add_1", "op_type": "Add", "macs": 100, "mac_share": 0.1, "sensitivity": -0.01,
     "precision": "int8"},
]

HAND_WRITTEN = {
    "trtbuild": "0.2.0", "model": "<script>alert(1)</script>.onnx", "created": "2026-01-01T00:00:00",
    "stages": [
        {"stage": "export", "seconds": 1.5, "max_abs_err": 1e-7, "output": "/o/model.onnx"},
        {"stage": "validate", "seconds": 0.5, "precision": "int8", "samples": 10,
         "outputs": {"logits": {"cosine_mean": 0.99999993, "cosine_min": 0.98,
                                "max_abs_err": 0.5, "mean_abs_err": 0.01,
                                "top1_agreement": 0.9, "psnr_db": 41.5}},
         "label_accuracy": {"reference": 0.9, "candidate": 0.8, "delta_points": -10.0},
         "scores": {"map50": 0.71}, "gate_failures": ["cosine 0.98 < 0.99"]},
        {"stage": "validate_engines", "seconds": 0.1, "engines": [
            {"engine": "/o/engines/sm_86/model.int8.engine", "arch": "sm_86",
             "precision": "int8", "samples": 10,
             "outputs": {"logits": {"cosine_mean": 0.97, "new_metric": None}}},
            {"engine": "/o/engines/sm_89/model.int8.engine", "arch": "sm_89",
             "precision": "int8", "refused": "needs sm_89"}]},
        {"stage": "sensitivity", "seconds": 3.0, "metric": "cosine", "target": 0.99,
         "before": 0.61, "after": 0.995, "int8_mac_coverage": 0.5, "evaluations": 12,
         "regions": REGIONS},
        {"stage": "bench", "seconds": 0.2, "baseline": "old/report.json", "max_regression": 0.05,
         "runs": [{"runner": "tensorrt", "device": "H100", "model": "int8", "arch": "sm_90",
                   "shape": "1x3x8x8", "p50_ms": 0.1, "p99_ms": 0.2, "throughput_per_s": 1e4}],
         "comparison": [{"runner": "tensorrt", "model": "int8", "shape": "1x3x8x8",
                         "baseline_p50_ms": 0.05, "p50_ms": 0.1, "change": 1.0,
                         "regressed": True}]},
    ],
}


def test_hand_written_report_renders_every_section_escaped():
    page = report_html.render(HAND_WRITTEN)
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "conv_2&lt;b&gt;" in page and "gemm_&amp;_head" in page
    for ident in ("stages", "accuracy", "sensitivity", "latency"):
        assert f'<section id="{ident}">' in page
    # accuracy: the known metrics as columns, any other on a line below; n/a for a null
    head = re.search(r'id="accuracy">.*?<thead>(.*?)</thead>', page, re.S).group(1)
    assert head.index("cosine mean") < head.index("top-1 agree") < head.index("max abs err")
    assert "logits: mean_abs_err 0.01, psnr_db 41.5" in page and "logits: new_metric n/a" in page
    assert "0.9999999<" in page and "map50 0.71" in page  # 4 digits, but never "1"
    # below a sane floor: marked though no gate asked (the engine's cosine_mean 0.97)
    assert '<td class="num bad" title="below 0.99">0.97</td>' in page
    assert "refused: needs sm_89" in page and "cosine 0.98 &lt; 0.99" in page
    assert "regressed" in page and "+100.0%" in page


def test_sensitivity_chart_and_precision_map():
    page = report_html.render(HAND_WRITTEN)
    bars = _svg(page, "sensitivity-bars")
    strip = _svg(page, "precision-map")
    assert [c for c, _ in bars] == [f"prec-{r['precision']}" for r in REGIONS]
    assert [c for c, _ in strip] == [f"prec-{r['precision']}" for r in REGIONS]
    heights = [float(a["height"]) for _, a in bars]
    assert heights[2] == max(heights) and heights[3] == 0.0  # negative: no bar
    assert heights[1] == pytest.approx(heights[2] / 2, rel=1e-3)
    widths = [float(a["width"]) for _, a in strip]  # width proportional to MAC share
    assert [w / sum(widths) for w in widths] == pytest.approx([0.4, 0.3, 0.2, 0.1], abs=1e-3)
    assert "<dt>INT8 MAC coverage</dt><dd>50.0%</dd>" in page
    assert "<dt>evaluations</dt><dd>12</dd>" in page


def test_accuracy_chart_distance_from_reference_on_a_log_axis():
    page = report_html.render(HAND_WRITTEN)
    bars = _svg(page, "accuracy-bars")
    # validate's logits: cosine_min 0.98 (ok), top1_agreement 0.9 (below 0.95: red); the
    # engine's row has no charted metric (cosine_mean only)
    assert [c for c, _ in bars] == ["bar-ok", "bar-bad"]
    w = [float(a["width"]) for _, a in bars]
    # 1 - 0.98 = 2e-2 and 1 - 0.9 = 1e-1 on a log axis from 1e-6 to 1 (480 px wide)
    assert w == pytest.approx([480 * (6 + math.log10(0.02)) / 6, 480 * 5 / 6], abs=0.05)
    svg = re.search(r'<svg[^>]*id="accuracy-bars".*?</svg>', page, re.S).group(0)
    assert "validate int8 logits: cosine min" in svg and svg.count("stroke-dasharray") == 2
    # a NaN (null in report.json) is the worst case: a full red bar, not none
    nan = {"stages": [{"stage": "validate", "precision": "int8",
                       "outputs": {"y": {"cosine_min": None}}}]}
    [(cls, attrs)] = _svg(report_html.render(nan), "accuracy-bars")
    assert cls == "bar-bad" and float(attrs["width"]) == pytest.approx(480)


def test_missing_and_odd_keys_never_raise():
    odd = {"stages": [{"stage": "validate"}, {"stage": "bench", "runs": [{}]},
                      {"stage": "sensitivity", "regions": [{"precision": "int4"}]},
                      {"stage": "validate_engines", "skipped": "no GPU"},
                      {"stage": "fp16", "outputs": {"y": "not a dict"}}, "not a record"]}
    page = report_html.render(odd)
    assert "prec-other" in page and "not checked: no GPU" in page


def test_written_beside_report_json_on_every_save(tmp_path):
    report = Report(tmp_path / "report.json", model="m")
    report.add("export", 1.0, ExportRecord(max_abs_err=0.0))
    assert (tmp_path / "report.html").is_file()
    report.add("clean", 1.0, CleanRecord(nodes_before=3, nodes_after=2, max_abs_diff=0.0))
    assert "nodes 3 -&gt; 2" in (tmp_path / "report.html").read_text()
    # an output named *.html is the JSON itself: no page overwrites it
    Report(tmp_path / "r.html", model="m").add("export", 1.0, ExportRecord())
    assert json.loads((tmp_path / "r.html").read_text())["model"] == "m"
    # a link where the page goes is left alone
    (tmp_path / "s.html").symlink_to(tmp_path / "elsewhere")
    Report(tmp_path / "s.json", model="m").add("export", 1.0, ExportRecord())
    assert (tmp_path / "s.html").is_symlink() and not (tmp_path / "elsewhere").exists()


def test_real_demo_report_and_hand_written_one_load_cleanly_in_chromium(tmp_path):
    chromium = _chromium()
    # the browser check itself: a broken page must be caught
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>console.error('e'); nope();</script>")
    assert _console(chromium, bad)[0], "console errors not detected"

    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", out, "--int8", "--fp16", "--bench", "--warmup", "1",
                   "--iterations", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads((out / "report.json").read_text())
    stages = [s["stage"] for s in data["stages"]]
    assert {"fp16", "validate", "bench"} <= set(stages)
    messages, dom = _console(chromium, out / "report.html")
    assert not messages, messages
    assert data["created"] in dom  # the page is the final report.json, not an earlier one
    assert data["status"] == "passed" and data["error"] is None
    assert dom.index('class="banner pass"') < dom.index("<h2>Stages</h2>")
    for heading in ("Stages", "Accuracy per precision", "Latency"):
        assert f"<h2>{heading}</h2>" in dom
    assert sum(f"<td>{s}</td>" in dom for s in stages) == len(stages)
    bench = next(s for s in data["stages"] if s["stage"] == "bench")
    latency = dom.split('<section id="latency">', 1)[1]
    assert latency.count("<tr>") == len(bench["runs"]) + 1  # + the header row
    assert len(_svg(dom, "latency-bars")) == len(bench["runs"])
    build = next((s for s in data["stages"] if s["stage"] == "build"), None)
    if build and build.get("engines"):  # TensorRT-RTX installed: the engines, one row each
        engines = dom.split('<section id="engines">', 1)[1].split("</section>", 1)[0]
        assert engines.count("<tr>") == len(build["engines"]) + 1
        assert all(html.escape(e["path"]) in engines for e in build["engines"])
    assert _overflow(chromium, out / "report.html") == (True, [])  # 1000 px, no sideways scroll

    hand = tmp_path / "hand" / "report.html"
    hand.parent.mkdir()
    hand.write_text(report_html.render(HAND_WRITTEN))
    messages, dom = _console(chromium, hand)
    assert not messages, messages
    assert "<h2>Sensitivity and mixed precision</h2>" in dom
    assert len(_svg(dom, "sensitivity-bars")) == len(REGIONS)
    assert len(_svg(dom, "precision-map")) == len(REGIONS)


def test_a_failed_gate_and_a_failed_stage_say_so_first(tmp_path):
    """report.json's status and error; report.html's FAIL banner above the stage table,
    naming every failed gate (it looked like a passing page, #20)."""
    out = tmp_path / "gate"
    proc = run_cli("demo", "--out", out, "--int8", "--target", "onnx",
                   "--min-cosine", "0.99999999")
    assert proc.returncode == 1, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]  # the failure is the last line, with the page
    assert last.startswith("trtbuild: error: ") and last.endswith(f"(report: {out}/report.html)")
    data = json.loads((out / "report.json").read_text())
    assert data["status"] == "gate_failed" and " gate failed: " in data["error"]
    page = (out / "report.html").read_text()
    banner = html.unescape(page[page.index('class="banner fail"'):page.index("<h2>Stages</h2>")])
    failures = [f"{s['stage']}: {f}" for s in data["stages"] for f in s.get("gate_failures", [])]
    assert failures and all(f in banner for f in failures)

    from trtbuild import pipeline
    from trtbuild.config import build_settings
    from trtbuild.errors import TrtBuildError

    def broken(ctx):  # stages that pass and fail: our control flow, not real stages
        raise TrtBuildError("data/7.png: cannot be read")

    (tmp_path / "o").mkdir()
    ctx = pipeline.new_context(build_settings("demo"), tmp_path / "o", "demo")
    with pytest.raises(TrtBuildError):
        pipeline.run_stages(ctx, [("first", lambda ctx: StageRecord()), ("calibrate", broken)])
    data = json.loads((tmp_path / "o" / "report.json").read_text())
    assert (data["status"], data["error"]) == ("failed", "calibrate: data/7.png: cannot be read")
    assert "calibrate: data/7.png: cannot be read" in (tmp_path / "o" / "report.html").read_text()
    # failing before any stage finished: no report at all (bad input leaves OUT empty)
    (tmp_path / "p").mkdir()
    ctx = pipeline.new_context(build_settings("demo"), tmp_path / "p", "demo")
    with pytest.raises(TrtBuildError):
        pipeline.run_stages(ctx, [("calibrate", broken)])
    assert not any((tmp_path / "p").iterdir())


def test_a_report_without_an_outcome_is_not_shown_as_passing():
    page = report_html.render({"model": "m", "stages": [{"stage": "export", "seconds": 1}]})
    assert 'class="banner open"' in page and "PASS" not in page


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI installs it: apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return path


def _console(chromium: str, page: Path) -> tuple[list[str], str]:
    """Open `page` from a file:// URL: (console messages, the DOM after load). The page has
    no script, so any console message at all (error, CSP violation) is a fault."""
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
             "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    messages = [ln for ln in proc.stderr.splitlines()
                if re.search(r":CONSOLE[:(]", ln) or "Uncaught" in ln]
    return messages, proc.stdout


def _overflow(chromium: str, page: Path, width: int = 1000) -> tuple[bool, list[str]]:
    """(the page fits `width` px, ids of sections whose tables scroll sideways), measured
    in a wrapper page that frames the report (the report itself runs no script)."""
    with tempfile.TemporaryDirectory() as tmp:
        wrapper = Path(tmp) / "frame.html"
        wrapper.write_text(
            f'<!DOCTYPE html><body style="margin:0"><iframe id="f" src="{page.resolve().as_uri()}"'
            f' style="width:{width}px;height:800px;border:0"></iframe><script>'
            "addEventListener('load', () => { const d = document.getElementById('f')"
            ".contentDocument; const wide = [...d.querySelectorAll('div.scroll')].filter("
            "x => x.scrollWidth > x.clientWidth).map(x => x.closest('section') ? "
            "x.closest('section').id : 'stages'); document.body.dataset.page = "
            "d.documentElement.scrollWidth; document.body.dataset.wide = wide.join(','); });"
            "</script></body>")
        proc = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             f"--user-data-dir={tmp}/profile", "--allow-file-access-from-files",
             "--virtual-time-budget=3000", "--dump-dom", wrapper.as_uri()],
            capture_output=True, text=True, timeout=60)
    found = dict(re.findall(r'data-(page|wide)="([^"]*)"', proc.stdout))
    assert "page" in found, proc.stdout[-2000:] + proc.stderr[-2000:]
    return int(found["page"]) <= width, [w for w in found["wide"].split(",") if w]


def _svg(page: str, ident: str) -> list[tuple[str, dict[str, str]]]:
    """(class, attributes) of each <rect> in the SVG with this id."""
    svg = re.search(rf'<svg[^>]*id="{ident}".*?</svg>', page, re.S).group(0)
    rects = [dict(re.findall(r'(\S+?)="([^"]*)"', m)) for m in re.findall(r"<rect ([^>]*)>", svg)]
    return [(r["class"], r) for r in rects]


def test_a_record_moved_from_a_workers_scratch_folder_is_rewritten_as_a_record(tmp_path):
    """Ray workers write report.json/.html in a scratch folder; the driver's copies name
    its own folder: the JSON rewritten value by value, the page rendered again from it
    (never a text edit of the page), a driver path with JSON and HTML specials included."""
    from trtbuild.release.ray_backend import _moved
    from trtbuild.report import Report

    old = str(tmp_path / "trtbuild-ray-7-x" / "digits")
    new = '/home/u/a&b "rel"/digits'
    Path(old).mkdir(parents=True)
    report = Report(Path(old) / "report.json", model=f"{old}/model.onnx")
    report.add("clean", 0.1, CleanRecord(output=f"{old}/model.onnx",
                                         check_input=f"{old}2 is another folder"))
    report.finish("passed")
    data = json.loads(_moved(Path(old) / "report.json", old, new))
    assert data["model"] == f"{new}/model.onnx"
    assert data["stages"][0]["output"] == f"{new}/model.onnx"
    assert data["stages"][0]["check_input"] == f"{old}2 is another folder"
    page = _moved(Path(old) / "report.html", old, new).decode()
    assert page == report_html.render(data) and old not in page.replace(f"{old}2", "")
    (Path(old) / "notes.html").write_text(f"<p>{old}</p>")  # no record beside it: as it is
    assert _moved(Path(old) / "notes.html", old, new) == f"<p>{old}</p>".encode()
