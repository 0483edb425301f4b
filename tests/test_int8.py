"""INT8 end to end on real models: calibration cache, Q/DQ ONNX in ONNX Runtime, accuracy."""

from __future__ import annotations

import json
import struct

import numpy as np
import onnx
import pytest
from conftest import run_cli

from trtbuild.calib import cachefile as calib_cache
from trtbuild.demo import CALIB_DIR, VAL_DIR
from trtbuild.errors import TrtBuildError
from trtbuild.onnx import io as onnxio
from trtbuild.onnx.inputs import random_feed
from trtbuild.quant.qdq import plan


def test_cache_format_and_round_trip(tmp_path):
    text = calib_cache.encode({"input": 127.0, "conv1": 1.5}, "entropy")
    lines = text.splitlines()
    assert lines[0].startswith("TRT-") and lines[0].endswith("-EntropyCalibration2")
    assert lines[1] == "input: 3f800000"  # scale 1.0, big-endian IEEE-754
    assert lines[2] == f"conv1: {struct.pack('>f', 1.5 / 127).hex()}"
    calib_cache.write(tmp_path / "c.cache", {"a/b:0": 3.25, "x": 1e-3}, "max")
    back = calib_cache.read(tmp_path / "c.cache")
    assert set(back) == {"a/b:0", "x"}
    assert back["a/b:0"] == pytest.approx(3.25, rel=1e-6) and back["x"] == pytest.approx(1e-3, rel=1e-6)


def test_nvidia_cache_parses():
    # the first lines of a real TensorRT cache (nvdla/sw, resnet50)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "r50.cache"
        p.write_text("TRT-5101-EntropyCalibration2\ndata: 3f9839e4\nconv1: 3db68545\n")
        got = calib_cache.read(p)
    assert got["data"] == pytest.approx(struct.unpack(">f", bytes.fromhex("3f9839e4"))[0] * 127)


@pytest.mark.parametrize("text", ["", "hello\nx: 1", "TRT-1-Entropy\nname 3f800000", "TRT-1-E\nn: zz"])
def test_malformed_caches(tmp_path, text):
    p = tmp_path / "bad.cache"
    p.write_text(text)
    with pytest.raises(TrtBuildError, match="bad.cache"):
        calib_cache.read(p)


@pytest.fixture(scope="module")
def digits_int8(tmp_path_factory):
    out = tmp_path_factory.mktemp("d8")
    proc = run_cli("demo", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    return out, {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}


def test_digits_int8_accuracy_within_one_point(digits_int8):
    out, stages = digits_int8
    acc = stages["validate"]["label_accuracy"]
    assert acc["labelled"] == 500 and acc["reference"] > 0.97
    assert abs(acc["candidate"] - acc["reference"]) <= 0.01
    assert stages["validate"]["outputs"]["output"]["top1_agreement"] >= 0.98
    assert stages["calibrate"]["samples"] == 256


def test_digits_qdq_model_is_valid_and_runs(digits_int8):
    out, stages = digits_int8
    model = onnx.load(str(out / "model.int8.onnx"))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") == stages["quantize"]["quantized_activations"] >= 3
    weights = {i.name: i for i in model.graph.initializer}
    int8_w = [w for n, w in weights.items() if w.data_type == onnx.TensorProto.INT8 and n.endswith("_int8")]
    assert len(int8_w) == stages["quantize"]["quantized_weights"]
    # per-channel: one scale per output channel of the first conv
    conv_scale = weights[[n for n in weights if n.endswith("_wscale_fp16")][0]]
    assert len(conv_scale.dims) == 1 and conv_scale.dims[0] > 1
    assert conv_scale.data_type == onnx.TensorProto.FLOAT16  # INT8 + FP16 by default
    sess = onnxio.session(out / "model.int8.onnx")
    feed = random_feed(onnx.load(str(out / "model.int8.onnx")), batch=3)
    assert sess.run(None, feed)[0].shape == (3, 10)
    cache = calib_cache.read(out / "calib.cache")
    assert "input" in cache and len(cache) == stages["calibrate"]["tensors"]


def _stage(proc, name: str) -> dict:
    assert proc.returncode == 0, proc.stderr
    return next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == name)


def test_calib_cache_reuse_and_mismatch(digits_int8, tmp_path):
    out, _ = digits_int8
    cache = out / "calib.cache"
    model = out / "model.clean.onnx"
    proc = run_cli("calibrate", model, "--calib-cache", cache, "-o", tmp_path / "a", "--json")
    assert proc.returncode == 0, proc.stderr
    rec = _stage(proc, "calibrate")
    assert rec["cache_status"] == "reused" and "samples" not in rec
    # a cache of another model: recalibrates when data is given, says why
    other = tmp_path / "other.cache"
    calib_cache.write(other, {"some_other_tensor": 1.0})
    proc = run_cli("calibrate", model, "--calib-cache", other, "--calib", CALIB_DIR,
                   "-o", tmp_path / "b", "--json")
    rec = _stage(proc, "calibrate")
    assert proc.returncode == 0 and "missing" in rec["cache_status"] and rec["samples"] == 256
    # ... and is bad input without data
    proc = run_cli("calibrate", model, "--calib-cache", other, "-o", tmp_path / "c")
    assert proc.returncode == 2 and "other.cache" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_int8_needs_calibration_data(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--int8 needs calibration data" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_without_val_the_run_says_nothing_held_out_checked_the_int8_model(digits_onnx,
                                                                          tmp_path):
    proc = run_cli(digits_onnx / "model.onnx", "--int8", "--calib", CALIB_DIR, "--target",
                   "onnx", "--out", tmp_path / "o", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    assert ("no --val data: nothing held out checked the INT8 model (it was compared with "
            "FP32 on the calibration data); give --val DIR") in proc.stderr


def test_gate_failure_exits_1(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", CALIB_DIR, "--val",
                   VAL_DIR, "--min-cosine", "1.01", "--out", tmp_path / "o")
    assert proc.returncode == 1 and "gate failed" in proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["stages"][-1]["gate_failures"]


def test_bad_calib_dir_is_exit_2_and_leaves_nothing(digits_onnx, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for calib in (empty, tmp_path / "missing"):
        proc = run_cli("calibrate", digits_onnx / "model.onnx", "--calib", calib,
                       "-o", tmp_path / "o")
        assert proc.returncode == 2 and str(calib) in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", empty,
                   "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "no samples" in proc.stderr
    assert not (tmp_path / "o2").exists()


def test_plan_leaves_integer_inputs_and_classifier_alone(digits_onnx):
    model = onnx.load(str(digits_onnx / "model.clean.onnx"))
    p = plan(model)
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    last = gemms[-1]
    assert last.input[0] not in p.activations or (last.name, last.input[0]) not in p.consumers
    assert "input" in p.activations


def test_max_and_percentile_methods(digits_int8, tmp_path):
    out, _ = digits_int8
    for method in ("max", "percentile"):
        proc = run_cli("calibrate", out / "model.clean.onnx", "--calib", CALIB_DIR,
                       "--calib-method", method, "-o", tmp_path / method, check=True)
        assert proc.returncode == 0
    mx = calib_cache.read(tmp_path / "max" / "calib.cache")
    pc = calib_cache.read(tmp_path / "percentile" / "calib.cache")
    assert all(pc[k] <= mx[k] * (1 + 1e-6) for k in mx)
    # the method reached the calibrator: some activation is clipped below its max
    assert any(pc[k] < mx[k] * 0.999 for k in mx)
    assert (tmp_path / "max" / "calib.cache").read_text().startswith("TRT-")
    np.testing.assert_allclose(mx["input"], 1.0, rtol=1e-6)
