"""Empirical bias correction (quant/bias.py) on real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trtbuild.calib.stream import observed_model
from trtbuild.onnx import io
from trtbuild.quant import bias


def _chain(weights: list[np.ndarray], biases: list[np.ndarray]) -> onnx.ModelProto:
    """x (N,3,12,12) -> [Conv(3x3, pad 1) -> Relu] x len(weights), the last without Relu."""
    nodes, inits, x = [], [], "x"
    for k, (w, b) in enumerate(zip(weights, biases)):
        inits += [numpy_helper.from_array(w, f"w{k}"), numpy_helper.from_array(b, f"b{k}")]
        nodes.append(helper.make_node("Conv", [x, f"w{k}", f"b{k}"], [f"c{k}"], name=f"conv{k}",
                                      pads=[1, 1, 1, 1]))
        x = f"c{k}"
        if k < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"], name=f"relu{k}"))
            x = f"r{k}"
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3, 12, 12])], [helper.make_tensor_value_info(
            x, TensorProto.FLOAT, ["N", weights[-1].shape[0], 12, 12])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def models():
    """An FP32 chain and the same chain with its weights on a coarse grid (4 levels per
    sign: a quantized model whose output means drift layer after layer)."""
    rng = np.random.default_rng(0)
    shapes = [(8, 3, 3, 3), (8, 8, 3, 3), (4, 8, 3, 3)]
    weights = [rng.normal(0, 0.3, s).astype(np.float32) for s in shapes]
    biases = [rng.normal(0, 0.1, s[0]).astype(np.float32) for s in shapes]
    coarse = [(np.round(w / (np.abs(w).max() / 4)) * (np.abs(w).max() / 4)).astype(np.float32)
              for w in weights]
    feeds = [{"x": rng.normal(0.5, 1, (4, 3, 12, 12)).astype(np.float32)} for _ in range(2)]
    return _chain(weights, biases), _chain(coarse, biases), feeds


def _means(model, feeds) -> list[np.ndarray]:
    names = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    sess = io.session(observed_model(model, names))
    outs = [sess.run(names, f) for f in feeds]
    return [np.concatenate([o[k] for o in outs]).mean(axis=(0, 2, 3)) for k in range(len(names))]


def test_every_corrected_layer_has_the_reference_means(models):
    reference, candidate, feeds = models
    drift = [np.abs(a - b).max() for a, b in zip(_means(reference, feeds),
                                                 _means(candidate, feeds))]
    assert max(drift) > 0.05  # the coarse weights do shift the means
    found = bias.corrections(candidate, reference, feeds, io.session)
    new = found.biases
    assert sorted(new) == ["conv0", "conv1", "conv2"] and found.kept == 3
    assert len(found.errors) == 4 and found.errors[-1] < found.errors[0]
    corrected = onnx.ModelProto()
    corrected.CopyFrom(candidate)
    assert bias.apply(corrected, new) == 3
    for want, got in zip(_means(reference, feeds), _means(corrected, feeds)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_one_session_equals_a_model_rebuilt_per_layer(models):
    """The biases-as-inputs session gives what rebuilding the model with each corrected
    initializer, one layer at a time, gives."""
    reference, candidate, feeds = models
    new = bias.corrections(candidate, reference, feeds, io.session).biases
    loop = onnx.ModelProto()
    loop.CopyFrom(candidate)
    want = _means(reference, feeds)
    for k in range(3):
        got = _means(loop, feeds)[k]
        init = next(i for i in loop.graph.initializer if i.name == f"b{k}")
        init.CopyFrom(numpy_helper.from_array(
            (numpy_helper.to_array(init) + (want[k] - got)).astype(np.float32), init.name))
        np.testing.assert_allclose(numpy_helper.to_array(init), new[f"conv{k}"], atol=1e-5)


def test_a_shared_bias_is_left_alone(models):
    reference, candidate, _ = models
    shared = onnx.ModelProto()
    shared.CopyFrom(candidate)
    shared.graph.node[2].input[2] = "b0"  # conv1 reads conv0's bias (8 channels both)
    assert [t.node for t in bias.targets(shared)] == ["conv2"]


def test_build_with_bias_correction_records_it(tmp_path):
    """The quantize stage on a real INT8 build: applied, counted, and the written model's
    biases differ from the uncorrected build's."""
    from trtbuild import api

    pytest.importorskip("onnxruntime")
    import json

    rng = np.random.default_rng(1)
    weights = [rng.normal(0, 0.3, s).astype(np.float32)
               for s in [(8, 3, 3, 3), (8, 8, 3, 3), (4, 8, 3, 3)]]
    biases = [rng.normal(0, 0.1, w.shape[0]).astype(np.float32) for w in weights]
    onnx.save(_chain(weights, biases), tmp_path / "chain.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(20):
        np.save(calib / f"{k}.npy", rng.normal(0.5, 1, (1, 3, 12, 12)).astype(np.float32))
    records = {}
    for flag in ("on", "off"):
        out = tmp_path / flag
        api.build(str(tmp_path / "chain.onnx"), out, int8=True, calib=str(calib),
                  target="onnx", cache=False, bias_correction=flag)
        records[flag] = onnx.load(str(out / "model.int8.onnx"))
        report = json.loads((out / "report.json").read_text())
        q = next(s for s in report["stages"] if s["stage"] == "quantize")
        records[flag + "_record"] = q["bias_correction"]
    on = records["on_record"]
    assert on["samples"] == bias.BIAS_SAMPLES
    assert records["off_record"] == {"applied": False}

    def bias_values(model):
        inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return [inits[n.input[2]] for n in model.graph.node
                if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in inits]
    assert on["applied"] and on["layers"] == 3 and len(on["output_error"]) == 4
    assert any(not np.array_equal(a, b) for a, b in zip(bias_values(records["on"]),
                                                        bias_values(records["off"])))
