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


def test_opset_17_to_19_is_a_bump_unless_the_reduce_axes_move(monkeypatch):
    """Between opsets 17 and 19 the converter only raises the version, gives a Split its
    num_outputs and infers shapes, unless a Reduce op's axes move from attribute to input:
    at_opset does the same without serializing the model through it (0.5 s on resnet18,
    four copies of the weights)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter

    from trtbuild.quant.mixed import at_opset

    def model(reduce: bool):
        nodes = [helper.make_node("Shape", ["x"], ["s"]),
                 helper.make_node("Split", ["x"], ["h1", "h2"], axis=2),  # num_outputs at 18
                 helper.make_node("Concat", ["h2", "h1"], ["c"], axis=2),
                 helper.make_node("Reshape", ["c", "flat"], ["r"]),
                 helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
        if reduce:
            nodes.append(helper.make_node("ReduceMean", ["y"], ["m"], axes=[1]))
        g = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
            [helper.make_tensor_value_info("m" if reduce else "y", TensorProto.FLOAT,
                                           [2, 1] if reduce else [2, 12]),
             helper.make_tensor_value_info("s", TensorProto.INT64, [3])],
            [numpy_helper.from_array(np.array([2, 12], np.int64), "flat")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        onnx.checker.check_model(m)
        return m

    plain, real, calls = model(False), version_converter.convert_version, []
    converted = real(plain, 19)
    monkeypatch.setattr(version_converter, "convert_version",
                        lambda *a: calls.append(1) or real(*a))
    bumped = at_opset(plain, 19)
    assert calls == []
    assert bumped.graph.node == converted.graph.node
    assert bumped.graph.initializer == converted.graph.initializer
    assert [o.version for o in bumped.opset_import] == [19]
    assert [o.version for o in plain.opset_import] == [17]  # the caller's model untouched
    onnx.checker.check_model(bumped, full_check=True)
    reduced = at_opset(model(True), 19)
    assert calls == [1] and list(reduced.graph.node[-1].input)[1:]  # axes now an input
