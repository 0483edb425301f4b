"""The CLI as a user runs it: real processes, files on disk, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from conftest import REPO, run_cli

from trtbuild.onnx import io as onnxio
from trtbuild.onnx.inputs import random_feed


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trtbuild: error:"), proc.stderr
    for n in needles:
        assert n in lines[0]


def test_help_and_import_do_not_load_heavy_modules():
    code = ("import sys, trtbuild, trtbuild.cli, trtbuild.cli.commands, trtbuild.pipeline; "
            "from trtbuild.cli.args import build_parser; build_parser().format_help(); "
            "bad = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'tensorrt_rtx', 'polygraphy') "
            "if m in sys.modules]; print(bad); assert not bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    proc = run_cli("--help")
    assert proc.returncode == 0 and "export" in proc.stdout and "exit codes" in proc.stdout


def test_build_shorthand_writes_artifacts_and_report(factory_file, tmp_path):
    out = tmp_path / "out"
    proc = run_cli(f"{factory_file}:make", "--out", out, "--json", "--target", "onnx")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [s["stage"] for s in report["stages"]] == ["export", "clean"]
    assert json.loads((out / "report.json").read_text()) == report
    assert sorted(p.name for p in out.iterdir()) == ["model.clean.onnx", "model.onnx",
                                                     "report.html", "report.json"]
    assert report["stages"][1]["nodes_after"] <= report["stages"][1]["nodes_before"]


def test_export_and_clean_commands(factory_file, tmp_path):
    run_cli("export", f"{factory_file}:make", "-o", tmp_path / "m.onnx", check=True)
    proc = run_cli("clean", tmp_path / "m.onnx", "-o", tmp_path / "c.onnx", check=True)
    # reshape(x.shape[0], -1) exports as Shape->Gather->Unsqueeze->Concat: cleaned away
    assert "nodes" in proc.stdout and "Shape" in proc.stdout
    assert "Shape" not in {n.op_type for n in onnx.load(str(tmp_path / "c.onnx")).graph.node}
    sess = onnxio.session(tmp_path / "c.onnx")
    feed = random_feed(onnx.load(str(tmp_path / "c.onnx")), batch=2)
    assert sess.run(None, feed)[0].shape == (2, 4)


@pytest.mark.slow
def test_resnet18_build_matches_torch(tmp_path):
    out = tmp_path / "r18"
    run_cli("torchvision:resnet18", "--out", out, check=True)
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][1]["nodes_after"] <= 49
    # export compared model.onnx with PyTorch (< 1e-4); the cleaned model must match it
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    a = onnxio.session(out / "model.onnx").run(None, {"input": x})[0]
    b = onnxio.session(out / "model.clean.onnx").run(None, {"input": x})[0]
    assert np.max(np.abs(a - b)) < 1e-4
    assert report["stages"][0]["max_abs_err"] < 1e-4


@pytest.mark.parametrize("args, needles", [
    (["missing.onnx"], ["missing.onnx", "no such ONNX file"]),
    (["nofile.py:make"], ["nofile.py", "no such Python file"]),
    (["{f}:nope"], ["has no callable 'nope'"]),
    (["{f}:boom"], ["factory raised RuntimeError"]),
    (["{f}:not_a_module"], ["returned int"]),
    (["{f}:make", "--input", "input:1x3"], ["rank 2 given"]),
    (["{f}:make", "--input", "input=1x3x16x16"], ["--input", "NAME:DIMS"]),
    (["{f}:make", "--input", "input:1xAx16x16"], ["--input", "not a shape"]),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(factory_file, tmp_path, args, needles):
    out = tmp_path / "out"
    args = [a.replace("{f}", str(factory_file)) for a in args]
    proc = run_cli(*args, "--out", out, cwd=tmp_path)
    _one_line_error(proc, *needles)
    assert not out.exists() or not any(out.iterdir())


def test_truncated_onnx_is_rejected(digits_onnx, tmp_path):
    bad = tmp_path / "trunc.onnx"
    bad.write_bytes((digits_onnx / "model.onnx").read_bytes()[:500])
    proc = run_cli(bad, "--out", tmp_path / "o")
    _one_line_error(proc, "trunc.onnx")
    proc = run_cli("clean", bad, "-o", tmp_path / "c.onnx")
    _one_line_error(proc, "trunc.onnx")
    assert not (tmp_path / "c.onnx").exists()


def test_input_spec_checked_against_an_onnx_src(digits_onnx, tmp_path):
    model = digits_onnx / "model.onnx"
    _one_line_error(run_cli(model, "--input", "input:1x8x8", "--out", tmp_path / "a"),
                    "rank 3 given")
    _one_line_error(run_cli(model, "--input", "pixels:1x1x8x8", "--out", tmp_path / "b"),
                    "no such model input")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_output_directory_that_is_a_file(factory_file, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    _one_line_error(run_cli(f"{factory_file}:make", "--out", target), "is an existing file")
    assert target.read_text() == "x"


def test_export_mismatch_gate_exits_1(tmp_path):
    # random noise in forward: ONNX Runtime's RandomUniformLike draws other numbers than torch
    f = tmp_path / "noisy.py"
    f.write_text("import torch\nclass M(torch.nn.Module):\n    def forward(self, x):\n"
                 "        return x + torch.rand_like(x)\n"
                 "def make():\n    return M(), torch.ones(1, 64)\n")
    proc = run_cli("export", f"{f}:make", "-o", tmp_path / "m.onnx")
    assert proc.returncode == 1, proc.stderr
    assert "differs from PyTorch" in proc.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_a_failed_gate_with_json_reports_the_stages_that_ran(digits_onnx, tmp_path):
    """A release pipeline reading stdout sees what ran and why it stopped, not nothing."""
    from trtbuild import demo

    proc = run_cli(digits_onnx / "model.onnx", "--int8", "--calib", demo.CALIB_DIR, "--val",
                   demo.VAL_DIR, "--target", "onnx", "--out", tmp_path / "o",
                   "--min-cosine", "0.999999", "--json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert [s["stage"] for s in report["stages"]] == ["export", "clean", "calibrate",
                                                      "quantize", "validate"]
    assert report["error"]["exit_code"] == 1 and "0.999999" in report["error"]["message"]
    assert report["stages"][0]["source"] == "onnx"
    assert "checked and copied" in proc.stderr and "  validate" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("trtbuild: error: validate gate")


def test_a_reader_that_goes_away_does_not_stop_the_build(tmp_path):
    """`trtbuild ... | head -1`: stage lines are printed as stages end; once the reader is
    gone the build still finishes, writes its files and exits 0, with no traceback."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "trtbuild", "demo", "--target", "onnx",
                             "--out", str(tmp_path / "o")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdout.readline().startswith(b"trtbuild: ")
    proc.stdout.close()  # as `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=600) == 0, err
    assert "Traceback" not in err and "internal" not in err and "BrokenPipe" not in err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]][-1] == "validate"


def test_a_mistyped_option_gets_a_suggestion():
    proc = run_cli("demo", "--calbi", "x", "--accuracy-traget", "a>=1")
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert "did you mean --calib for --calbi, --accuracy-target for --accuracy-traget?" in last
    proc = run_cli("demo", "--calbi", "x")
    assert proc.stderr.strip().endswith("(did you mean --calib?)")
    assert "did you mean" not in run_cli("demo", "--zzzz").stderr  # nothing close: no guess


def test_quiet_prints_only_a_failures_line(tmp_path):
    """--quiet: nothing on success; on a failed gate, its one line and nothing else (no
    progress, stage lines or warnings)."""
    from trtbuild.demo import CALIB_DIR
    ok = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", CALIB_DIR,
                 "--target", "onnx", "--out", tmp_path / "a", "--quiet")
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, "", "")
    failed = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", CALIB_DIR,
                     "--target", "onnx", "--out", tmp_path / "b", "-q",
                     "--min-cosine", "0.99999999")
    assert failed.returncode == 1 and failed.stdout == ""
    assert len(failed.stderr.splitlines()) == 1
    assert failed.stderr.startswith("trtbuild: error: ") and "gate failed" in failed.stderr
