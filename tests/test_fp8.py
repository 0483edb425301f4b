"""FP8 (--fp8): E4M3 Q/DQ where INT8 goes, max-scaled activations, per-channel weights,
checked by ONNX Runtime's FP8 kernels; engines for Ada and newer with TensorRT-RTX."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from trtbuild.quant.qdq import FP8_MAX, fp8_weight


def test_fp8_weights_round_as_quantize_linear_does():
    """The weight cast equals ONNX Runtime's QuantizeLinear-19 to float8 E4M3FN, bit for bit."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8, 3, 3)) * rng.uniform(0.01, 3, (16, 1, 1, 1)))
    init = numpy_helper.from_array(w.astype(np.float32), "w")
    q, scale = fp8_weight(init, 0)
    assert q.dtype == ml_dtypes.float8_e4m3fn and scale.shape == (16,)
    assert np.allclose(np.abs(q.astype(np.float32)).max(axis=(1, 2, 3)), FP8_MAX)
    node = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], axis=0)
    graph = helper.make_graph(
        [node], "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(w.shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT8E4M3FN, list(w.shape))],
        [numpy_helper.from_array(scale, "s"),
         numpy_helper.from_array(np.zeros(16, ml_dtypes.float8_e4m3fn), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (theirs,) = sess.run(None, {"x": w.astype(np.float32)})
    assert np.array_equal(np.asarray(theirs).view(np.uint8), q.view(np.uint8))


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_fp8_build_writes_checks_and_builds_for_ada(digits_onnx, tmp_path):
    from trtbuild.demo import CALIB_DIR, VAL_DIR

    proc = run_cli(digits_onnx / "model.onnx", "--fp8", "--calib", CALIB_DIR, "--val", VAL_DIR,
                   "--arch", "sm_89", "--out", tmp_path / "o", "--cache-dir", tmp_path / "c",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    fp8 = stages["fp8"]
    assert fp8["quantized_weights"] >= 3 and fp8["calib_method"] == "max"
    assert fp8["label_accuracy"]["candidate"] >= fp8["label_accuracy"]["reference"] - 0.01
    written = onnx.load(tmp_path / "o" / "model.fp8.onnx")
    onnx.checker.check_model(written, full_check=True)
    kinds = {i.data_type for i in written.graph.initializer}
    assert TensorProto.FLOAT8E4M3FN in kinds and TensorProto.INT8 not in kinds
    (engine,) = stages["build"]["engines"]
    assert engine["precision"] == "fp8" and engine["layer_dtypes"].get("FP8", 0) >= 3
    again = run_cli(digits_onnx / "model.onnx", "--fp8", "--calib", CALIB_DIR, "--val",
                    VAL_DIR, "--arch", "sm_89", "--out", tmp_path / "o2", "--cache-dir",
                    tmp_path / "c", "--json")
    stages = {s["stage"]: s for s in json.loads(again.stdout)["stages"]}
    assert stages["fp8"]["reused"] and stages["build"]["engines"][0]["cache_hit"]


def test_fp8_needs_data_and_an_ada_or_newer_target(digits_onnx, tmp_path):
    from trtbuild.demo import CALIB_DIR

    proc = run_cli(digits_onnx / "model.onnx", "--fp8", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--fp8" in proc.stderr and "--calib" in proc.stderr
    proc = run_cli(digits_onnx / "model.onnx", "--fp8", "--calib", CALIB_DIR, "--out",
                   tmp_path / "o")  # TensorRT-RTX's default targets: sm_86 and sm_89
    assert proc.returncode == 3 and "sm_86 has no FP8" in proc.stderr
    assert not (tmp_path / "o").exists()
