"""SmoothQuant (trtbuild.quant.smooth, --smoothquant): the smoothed graph computes the same
function in FP32 (ONNX Runtime), each layer's alpha is the least W8A8 error of its grid as
a direct computation finds it, and a build on a LayerNorm -> MatMul block whose LayerNorm
has outlier channels (as BERTs have) gets closer to FP32 than without it, also when the
calibrate stage comes from the stage cache."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_samples
from onnx import TensorProto, helper, numpy_helper

import trtbuild
from trtbuild.quant import smooth
from trtbuild.quant.qdq import plan, quantize_weight

D, F, T = 32, 64, 12


def _block(outliers: bool = True) -> onnx.ModelProto:
    """x -> LayerNorm (gamma with 3 channels 40x) -> {MatMul q, MatMul k (Gemm transB)} and
    a residual Add; -> MatMul up -> Relu -> MatMul down -> + residual -> LayerNorm -> y
    (post-norm, as BERT: no layer reaches the output through Adds only)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(D, np.float32)
    if outliers:
        gamma[[3, 11, 20]] = 40.0

    def w(*shape):
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0]))
                                       .astype(np.float32), f"w{len(inits)}")
    inits = [numpy_helper.from_array(gamma, "gamma"),
             numpy_helper.from_array(np.zeros(D, np.float32), "beta")]
    for shape in ((D, D), (D, D), (D, F), (F, D)):
        inits.append(w(*shape))
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1),
        helper.make_node("MatMul", ["h", "w2"], ["q"], name="q"),
        helper.make_node("Gemm", ["h2d", "w3"], ["k2d"], name="k", transB=1),
        helper.make_node("Reshape", ["h", "shape2d"], ["h2d"], name="flat"),
        helper.make_node("Reshape", ["k2d", "shape3d"], ["k"], name="unflat"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="qk"),
        helper.make_node("Add", ["qk", "h"], ["r"], name="residual"),
        helper.make_node("MatMul", ["r", "w4"], ["u"], name="up"),
        helper.make_node("Relu", ["u"], ["a"], name="act"),
        helper.make_node("MatMul", ["a", "w5"], ["d"], name="down"),
        helper.make_node("Add", ["d", "r"], ["z"], name="out"),
        helper.make_node("LayerNormalization", ["z", "ones", "beta"], ["y"], name="ln2",
                         axis=-1),
    ]
    inits += [numpy_helper.from_array(np.array([-1, D], np.int64), "shape2d"),
              numpy_helper.from_array(np.array([1, T, D], np.int64), "shape3d"),
              numpy_helper.from_array(np.ones(D, np.float32), "ones")]
    # the Gemm reads h flattened: nodes in topological order
    nodes = [nodes[0], nodes[3], nodes[1], nodes[2], *nodes[4:]]
    graph = helper.make_graph(
        nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, D])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, T, D])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_the_smoothed_graph_computes_the_same_function():
    model = _block()
    groups = smooth.targets(model, plan(model))
    # the LayerNorm's h feeds q (MatMul) and, flattened, k (Gemm): two groups; the residual
    # sum r and the Relu's a are no normalization's outputs
    assert sorted((g.activation, [layer.node for layer in g.layers]) for g in groups) == [
        ("h", ["q"]), ("h2d", ["k"])]
    groups += [smooth.Group("r", D, (smooth.Layer("up", "w4", 0),)),
               smooth.Group("a", F, (smooth.Layer("down", "w5", 0),))]
    rng = np.random.default_rng(1)
    found = {g.activation: rng.uniform(0.1, 10, g.k).astype(np.float32) for g in groups}
    smoothed = smooth.apply(model, groups, found)
    onnx.checker.check_model(smoothed)
    muls = [n for n in smoothed.graph.node if n.op_type == "Mul"]
    assert len(muls) == 4
    xs = rng.standard_normal((8, T, D)).astype(np.float32)
    ref, got = run_samples(model, xs), run_samples(smoothed, xs)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    # the residual Add still reads h itself, the q MatMul its smoothed copy
    nodes = {n.name: n for n in smoothed.graph.node}
    assert nodes["residual"].input[1] == "h" and nodes["q"].input[0] != "h"
    # the original is untouched
    assert [n.input[0] for n in model.graph.node if n.name == "q"] == ["h"]


def test_decomposed_norms_count_and_activation_functions_do_not():
    """LayerNorm and RMSNorm as torch's older exports write them (ReduceMean, Sub, Pow,
    Sqrt, Div, Mul by gamma, Add beta), and a GELU (Erf) after a MatMul."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["mu"], axes=[-1]),
        helper.make_node("Sub", ["x", "mu"], ["xc"]),
        helper.make_node("Pow", ["xc", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[-1]),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Div", ["xc", "sd"], ["xn"]),
        helper.make_node("Mul", ["xn", "gamma"], ["xg"]),
        helper.make_node("Add", ["xg", "beta"], ["ln"]),
        helper.make_node("Reshape", ["ln", "shape"], ["ln2d"]),
        helper.make_node("Pow", ["x", "two"], ["x2"]),  # RMSNorm: x * 1/sqrt(mean(x^2))
        helper.make_node("ReduceMean", ["x2"], ["ms"], axes=[-1]),
        helper.make_node("Sqrt", ["ms"], ["rms"]),
        helper.make_node("Reciprocal", ["rms"], ["inv"]),
        helper.make_node("Mul", ["x", "inv"], ["rmsn"]),
        helper.make_node("MatMul", ["ln", "w"], ["y"]),
        helper.make_node("Div", ["y", "sqrt2"], ["yd"]),
        helper.make_node("Erf", ["yd"], ["e"]),
        helper.make_node("Add", ["e", "one"], ["e1"]),
        helper.make_node("Mul", ["y", "e1"], ["gelu"]),
        helper.make_node("Add", ["y", "ln"], ["residual"]),  # a sum after the norm: no
        helper.make_node("Relu", ["y"], ["relu"]),
        helper.make_node("ReduceMean", ["relu"], ["pooled"], axes=[1]),
        helper.make_node("Mul", ["pooled", "c"], ["pooled_c"]),  # a pooled mean, scaled: no
        helper.make_node("Sub", ["relu", "pooled"], ["centred"]),  # centred, not scaled: no
        helper.make_node("Cast", ["ln"], ["ln_cast"], to=TensorProto.FLOAT),
    ]
    producers = {o: n for n in nodes for o in n.output}
    constants = {"two", "eps", "gamma", "beta", "shape", "w", "sqrt2", "one", "c"}
    found = [t for t in ("ln", "ln2d", "ln_cast", "rmsn", "xn", "gelu", "y", "x", "e1",
                         "residual", "pooled", "pooled_c", "centred", "xg")
             if smooth.from_norm(t, producers, constants)]
    assert found == ["ln", "ln2d", "ln_cast", "rmsn", "xn", "xg"]


def test_scales_formula_and_dead_channels():
    a = np.array([4.0, 0.0, 9.0, 1e9], np.float32)
    w = np.array([1.0, 2.0, 0.0, 1e-9], np.float32)
    s = smooth.scales(a, w, 0.5)
    assert s[0] == pytest.approx(2.0) and s[1] == 1 and s[2] == 1  # a or w zero: left alone
    assert s[3] == smooth.S_RANGE[1]  # clipped


def _direct_error(x, act_max, weights, alpha):
    """The W8A8 error as the docstring states it, with qdq.quantize_weight for the weights."""
    w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    s = smooth.scales(act_max, w_max, alpha) if alpha else np.ones(len(act_max), np.float32)
    step = np.max(act_max / s) / 127
    xq = np.clip(np.round(x / s / step), -127, 127) * step
    num = den = 0.0
    for w in weights:
        q, scale = quantize_weight(w * s[:, None], axis=1)
        y = xq @ (q.astype(np.float32) * scale[None, :])
        num += float(np.sum((y - x @ w) ** 2))
        den += float(np.sum((x @ w) ** 2))
    return num / den


def test_the_chosen_alpha_is_the_least_error_of_the_grid():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((256, D)).astype(np.float32)
    x[:, [3, 11]] *= 50  # outlier channels
    act_max = np.abs(x).max(axis=0) * 1.1  # the whole data's maximum is above the rows'
    weights = [rng.standard_normal((D, n)).astype(np.float32) for n in (D, F)]
    choice = smooth.choose(x, act_max, weights)
    errors = {a: _direct_error(x, act_max, weights, a) for a in smooth.ALPHAS}
    assert choice.alpha == min(errors, key=errors.get)
    assert choice.error == pytest.approx(errors[choice.alpha], rel=1e-3)
    assert choice.error_plain == pytest.approx(errors[0.0], rel=1e-3)
    assert choice.alpha > 0 and choice.error < 0.5 * choice.error_plain
    # without outliers nothing needs moving: no alpha is much better than none
    flat = rng.standard_normal((256, D)).astype(np.float32)
    calm = smooth.choose(flat, np.abs(flat).max(axis=0), weights)
    assert calm.error > 0.5 * calm.error_plain


@pytest.fixture(scope="module")
def block_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smooth")
    onnx.save(_block(), tmp / "block.onnx")
    rng = np.random.default_rng(3)
    for name, n in (("calib", 32), ("val", 32)):
        (tmp / name).mkdir()
        for i in range(n):
            np.save(tmp / name / f"{i:03d}.npy", rng.standard_normal((1, T, D)).astype(np.float32))
    return tmp


def _int8(data, out, **kw):
    return trtbuild.build(str(data / "block.onnx"), out=out, int8=True, calib=str(data / "calib"),
                          val=str(data / "val"), target="onnx", high_precision="fp32", **kw)


def test_a_build_with_outlier_channels_gets_closer_to_fp32(block_data, tmp_path):
    off = _int8(block_data, tmp_path / "off", smoothquant="off", cache=False)
    auto = _int8(block_data, tmp_path / "auto", cache=False)
    record = auto.stage("calibrate")["smoothquant"]
    assert record["applied"] and record["layers"] == 2 and record["smoothed"] >= 1
    assert "smoothquant" not in off.stage("calibrate")
    written = onnx.load(str(tmp_path / "auto" / "model.int8.onnx"))
    quantized = {n.input[0] for n in written.graph.node if n.op_type == "QuantizeLinear"}
    muls = {n.output[0] for n in written.graph.node if n.op_type == "Mul"}
    assert muls & quantized  # the smoothed activations are what INT8 reads

    def cosine(result):
        return result.stage("validate")["outputs"]["y"]["cosine_mean"]

    def max_error(result):
        return result.stage("validate")["outputs"]["y"]["max_abs_err"]
    assert max_error(auto) < max_error(off)
    assert cosine(auto) >= cosine(off)


def test_a_reused_calibrate_stage_brings_its_scales_to_quantize(block_data, tmp_path):
    cache = tmp_path / "cache"
    first = _int8(block_data, tmp_path / "a", cache_dir=cache)
    # --fp16-keep is read by quantize, not by calibrate: calibrate comes from the cache
    again = _int8(block_data, tmp_path / "b", cache_dir=cache, fp16_keep=("Relu",))
    reused = [r["stage"] for r in again.report["stages"] if r.get("reused")]
    assert "calibrate" in reused and "quantize" not in reused
    a = onnx.load(str(tmp_path / "a" / "model.int8.onnx"))
    b = onnx.load(str(tmp_path / "b" / "model.int8.onnx"))
    assert a.SerializeToString() == b.SerializeToString()  # FP32 float parts: keep has no say
    assert again.stage("validate")["outputs"] == first.stage("validate")["outputs"]


def test_a_weight_a_subgraph_also_reads_is_not_scaled():
    """An If branch reading q's weight from the outer scope would compute with the scaled
    rows and an undivided input."""
    model = _block()
    branch = helper.make_graph([helper.make_node("MatMul", ["x", "w2"], ["bx"])], "then", [],
                               [helper.make_tensor_value_info("bx", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["branch_out"], then_branch=branch,
                                             else_branch=branch))
    assert [g.activation for g in smooth.targets(model, plan(model))] == ["h2d"]


def test_the_scales_travel_with_the_calibration_cache(block_data, tmp_path):
    """A default build's calib.cache holds the smoothed graph's tensors: reused with
    --calib-cache (no data), its scales come from calib.cache.smooth.json beside it, and the
    same INT8 model is written; a build with --smoothquant off leaves no such file behind."""
    first = _int8(block_data, tmp_path / "a", cache=False)
    cache = tmp_path / "a" / "calib.cache"
    assert json.loads((tmp_path / "a" / "calib.cache.smooth.json").read_text())
    again = trtbuild.build(str(block_data / "block.onnx"), out=tmp_path / "b", int8=True,
                           calib_cache=str(cache), val=str(block_data / "val"),
                           target="onnx", high_precision="fp32", cache=False,
                           weight_rounding="nearest")
    assert again.stage("calibrate")["cache_status"] == "reused"
    assert again.stage("calibrate")["smoothquant"]["applied"]
    _int8(block_data, tmp_path / "c", cache=False, weight_rounding="nearest")
    assert (tmp_path / "b" / "model.int8.onnx").read_bytes() == \
        (tmp_path / "c" / "model.int8.onnx").read_bytes()
    assert first.stage("calibrate")["smoothquant"]["applied"]
    _int8(block_data, tmp_path / "a", cache=False, smoothquant="off")
    assert not (tmp_path / "a" / "calib.cache.smooth.json").exists()
    (tmp_path / "bad.cache").write_bytes(cache.read_bytes())
    (tmp_path / "bad.cache.smooth.json").write_text('{"h": [1.0, 2.0]}')
    with pytest.raises(trtbuild.TrtBuildError, match="bad.cache.smooth.json: scales for 'h'"):
        trtbuild.build(str(block_data / "block.onnx"), out=tmp_path / "d", int8=True,
                       calib_cache=str(tmp_path / "bad.cache"), target="onnx", cache=False)
    # with data, scales that do not fit are a cache that does not match: recalibrated
    redone = trtbuild.build(str(block_data / "block.onnx"), out=tmp_path / "e", int8=True,
                            calib_cache=str(tmp_path / "bad.cache"),
                            calib=str(block_data / "calib"), target="onnx", cache=False)
    assert "do not fit" in redone.stage("calibrate")["cache_status"]
    assert redone.stage("calibrate")["smoothquant"]["applied"]
