"""INT8 + FP16 in one graph: FP16 Q/DQ scales, and the DQs whose scales FP16 cannot hold
(with the layers they feed) kept FP32 so TensorRT-RTX accepts the graph."""

from __future__ import annotations

import json

import numpy as np
import onnx
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper


def tiny_channel_model(path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    w1[5] *= 1e-5  # max |w| ~ 1e-5: its per-channel scale (~1e-7) underflows in FP16
    w2 = rng.normal(0, 0.3, (4, 8, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("Conv", ["r1", "w2"], ["y"], pads=[1] * 4, name="conv2")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_unholdable_scale_keeps_its_layer_fp32_and_the_engine_builds(tmp_path):
    tiny_channel_model(tmp_path / "m.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(8):
        np.save(calib / f"{k}.npy", np.random.default_rng(k).random((1, 3, 16, 16), np.float32))
    proc = run_cli(tmp_path / "m.onnx", "--int8", "--calib", calib, "--out", tmp_path / "o",
                   "--arch", "sm_86", "--cache-dir", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    kept = {k["node"]: k["reason"] for k in stages["quantize"]["auto_fp32"]}
    assert "not a normal FP16 number" in kept["w1_DequantizeLinear"]
    assert "conv1" in kept  # reads the FP32 DQ directly, no Cast between
    model = onnx.load(tmp_path / "o" / "model.int8.onnx")
    inits = {i.name: i.data_type for i in model.graph.initializer}
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv1.input[1] == "w1_dequantized" and inits["w1_wscale"] == TensorProto.FLOAT
    dq2 = next(n for n in model.graph.node if n.name == "w2_DequantizeLinear")
    assert inits[dq2.input[1]] == TensorProto.FLOAT16  # the other weights: FP16 scales
    assert stages["validate"]["outputs"]["y"]["cosine_mean"] > 0.99
    assert stages["build"]["engines"][0]["precision"] == "int8"
