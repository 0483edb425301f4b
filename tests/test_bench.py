"""Latency harness on the CPU runners, and the baseline gate a team runs before rollout."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from trtbuild import timing as bench
from trtbuild.config import parse_regression
from trtbuild.errors import TrtBuildError


def test_stats_percentiles():
    s = bench.stats([float(x) for x in range(1, 101)], batch=4)
    assert s["p50_ms"] == pytest.approx(50.5) and s["p99_ms"] == pytest.approx(99.01)
    assert s["throughput_per_s"] == pytest.approx(4 * 1000 / 50.5)


def test_parse_regression():
    assert parse_regression("5%") == pytest.approx(0.05)
    assert parse_regression("0.1") == pytest.approx(0.1)
    with pytest.raises(TrtBuildError):
        parse_regression("five")


def test_bench_onnx_at_profile_shapes_and_baseline_gate(digits_onnx, tmp_path):
    model = digits_onnx / "model.clean.onnx"
    base = tmp_path / "base.json"
    proc = run_cli("bench", model, "--iterations", "10", "-o", base, "--json")
    assert proc.returncode == 0, proc.stderr
    runs = json.loads(proc.stdout)["runs"]
    assert [r["shape"] for r in runs] == ["1x1x8x8", "8x1x8x8", "32x1x8x8"]
    assert all(r["p50_ms"] > 0 and r["iterations"] == 10 for r in runs)
    # generous tolerance: same model, same machine -> no regression
    proc = run_cli("bench", model, "--iterations", "10", "--baseline", base,
                   "--max-regression", "1000%")
    assert proc.returncode == 0, proc.stderr
    # an old report where everything was 100x faster: a regression, exit 1, with the table
    report = json.loads(base.read_text())
    for r in report["stages"][0]["runs"]:
        r["p50_ms"] /= 100
    fast = tmp_path / "fast.json"
    fast.write_text(json.dumps(report))
    proc = run_cli("bench", model, "--iterations", "10", "--baseline", fast)
    assert proc.returncode == 1 and "latency regressed beyond 5%" in proc.stderr
    assert proc.stdout.count("REGRESSED") == 3


def test_build_bench_includes_torch_baseline(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--bench", "--iterations", "5",
                   "--target", "onnx", "--shapes", "input:2x1x8x8,4x1x8x8,4x1x8x8",
                   "--out", tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    runs = {(r["runner"], r["shape"]) for r in json.loads(proc.stdout)["stages"][-1]["runs"]}
    assert runs == {("onnxruntime-cpu", "2x1x8x8"), ("onnxruntime-cpu", "4x1x8x8"),
                    ("torch-eager-cpu", "2x1x8x8"), ("torch-eager-cpu", "4x1x8x8")}


def test_bad_baseline(tmp_path, digits_onnx):
    bad = tmp_path / "old.json"
    bad.write_text('{"stages": []}')
    proc = run_cli("bench", digits_onnx / "model.clean.onnx", "--baseline", bad)
    assert proc.returncode == 2 and "no bench results" in proc.stderr


@pytest.mark.slow  # over ~12 s on 2 cores
def test_bench_release_quick_reports_both_ratios():
    """bench/bench_release.py (#11) runs end to end: the sequential trtbuild runs, the
    release on the pool and on a local Ray runtime, and prints both ratios as JSON (the
    targets are the bench's to judge, with a full run, not this smoke run's)."""
    import subprocess
    import sys

    from conftest import REPO

    pytest.importorskip("ray")
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "bench_release.py"), "--quick",
                           "--repeat", "1", "--json"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert out["engines"] == 2 and out["jobs"] == 3
    assert out["sequential_s"] > 0 and out["release_s"] > 0 and out["ray_s"] > 0
    assert out["speedup"] == pytest.approx(out["sequential_s"] / out["release_s"], rel=0.02)
    assert out["ray_overhead"] == pytest.approx(out["ray_s"] / out["release_s"], rel=0.02)
