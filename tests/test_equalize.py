"""Activation equalisation of conv inputs (trtbuild.quant.equalize, --equalize on): the graph
keeps its nodes and computes the same function in FP32 (ONNX Runtime), inputs with no
constant producer to take 1/s are left alone, the sampled patches are what the conv reads,
and a depthwise conv's input with one loud channel gets equalised."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_samples
from onnx import TensorProto, helper, numpy_helper

import trtbuild
from trtbuild.calib.stream import observed_model
from trtbuild.onnx import io
from trtbuild.quant import equalize
from trtbuild.quant.qdq import plan
from trtbuild.quant.smooth import scales

C = 8


def _net(silu: bool = False, shared: bool = False, rank4: bool = False) -> onnx.ModelProto:
    """x -> Conv -> BN -> Relu -> Conv(1x1) ... a stem, then an affine (Mul a, Add b, as
    PP-OCR's learnable hardswish affine) -> depthwise 3x3 (stride 2, pad 1, dilation 1) ->
    Mul by a per-channel constant -> pointwise 1x1 -> y. `silu`: the affine replaced by a
    SiLU (no constant to fold into); `shared`: the affine's output also read by an Add;
    `rank4`: the affine's constants as [1, 1, 1, 1] (as exporters write scalars)."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int, scale: float = 1.0) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32),
                                       name)
    loud = np.ones((C, 1, 1), np.float32)
    loud[2] = 30.0  # one channel far above the others
    inits = [init("w0", C, 3, 3, 3, scale=0.3), init("b0", C),
             numpy_helper.from_array(np.abs(rng.standard_normal(C)).astype(np.float32) + .5,
                                     "bn_s"),
             init("bn_b", C), init("bn_m", C, scale=0.1),
             numpy_helper.from_array(np.ones(C, np.float32), "bn_v"),
             init("w1", C, C, 1, 1, scale=0.3),
             numpy_helper.from_array(np.full([1] * 4 if rank4 else [], 1.5, np.float32), "a"),
             numpy_helper.from_array(np.full([1] * 4 if rank4 else [], .25, np.float32), "b"),
             init("wd", C, 1, 3, 3, scale=0.3), init("bd", C),
             numpy_helper.from_array(loud, "loud"),
             init("w2", 4, C, 1, 1, scale=0.3)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"],
                              ["n0"], name="bn"),
             helper.make_node("Relu", ["n0"], ["r0"], name="relu"),
             helper.make_node("Conv", ["r0", "w1"], ["c1"], name="pw1")]
    if silu:
        nodes += [helper.make_node("Sigmoid", ["c1"], ["sg"], name="sig"),
                  helper.make_node("Mul", ["c1", "sg"], ["h"], name="silu")]
    else:
        nodes += [helper.make_node("Mul", ["c1", "a"], ["m"], name="affine_mul"),
                  helper.make_node("Add", ["m", "b"], ["h"], name="affine_add")]
    nodes += [helper.make_node("Conv", ["h", "wd", "bd"], ["d"], name="dw", group=C,
                               kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
              helper.make_node("Mul", ["d", "loud"], ["e"], name="loud_mul"),
              helper.make_node("Conv", ["e", "w2"], ["y0"], name="pw2")]
    if shared:
        nodes.append(helper.make_node("ReduceMean", ["h"], ["hm"], name="side", keepdims=1,
                                      axes=[1, 2, 3]))
        nodes.append(helper.make_node("Add", ["y0", "hm"], ["y"], name="join"))
    else:
        nodes.append(helper.make_node("Identity", ["y0"], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


@pytest.mark.parametrize("rank4", [False, True])
def test_the_equalised_graph_keeps_its_nodes_and_its_function(rank4):
    model = _net(rank4=rank4)
    groups = equalize.targets(model, plan(model))
    # r0 (Relu of BN: folds into the BN), h (Mul/Add affine: into a and b), e (Mul by a
    # per-channel constant); the stem's input is the graph input
    assert sorted((g.activation, g.depthwise) for g in groups) == [
        ("e", False), ("h", True), ("r0", False)]
    dw = next(g for g in groups if g.depthwise)
    assert (dw.kernel, dw.strides, dw.pads) == ((3, 3), (2, 2), (1, 1, 1, 1))
    rng = np.random.default_rng(1)
    found = {g.activation: rng.uniform(0.2, 5.0, g.k).astype(np.float32) for g in groups}
    out = equalize.apply(model, groups, found)
    onnx.checker.check_model(out)
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    xs = rng.standard_normal((4, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(run_samples(out, xs), run_samples(model, xs), rtol=1e-4, atol=1e-5)
    # the scaled tensors themselves are divided by s
    for name in ("h", "r0"):
        got, want = (io.session(observed_model(m, [name])).run([name], {"x": xs[:1]})[0]
                     for m in (out, model))
        np.testing.assert_allclose(got, want / found[name][None, :, None, None], rtol=1e-4,
                                   atol=1e-5)


def test_inputs_with_no_constant_producer_or_other_readers_are_left_alone():
    # a SiLU output has no constant to take 1/s; an affine output another node reads
    # would change for that reader too
    for model in (_net(silu=True), _net(shared=True)):
        found = {g.activation for g in equalize.targets(model, plan(model))}
        assert "h" not in found and {"r0", "e"} <= found


def test_sampled_patches_are_what_the_depthwise_conv_reads():
    model = _net()
    dw = next(g for g in equalize.targets(model, plan(model)) if g.depthwise)
    rng = np.random.default_rng(2)
    h = rng.standard_normal((2, C, 12, 12)).astype(np.float32)
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "wd"))
    conv = helper.make_graph(
        [helper.make_node("Conv", ["h", "wd"], ["d"], group=C, kernel_shape=[3, 3],
                          strides=[2, 2], pads=[1, 1, 1, 1])], "dw",
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [2, C, 12, 12])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "wd")])
    m = helper.make_model(conv, opset_imports=[helper.make_opsetid("", 13)])
    d = ort.InferenceSession(m.SerializeToString()).run(None, {"h": h})[0]  # [2, C, 6, 6]
    patches = equalize.sample_rows(dw, h, np.random.default_rng(3))
    assert patches.shape == (min(equalize.PATCHES, 2 * 36), C, 9)
    dots = np.einsum("rct,ct->rc", patches, w.reshape(C, 9))
    outputs = d.transpose(0, 2, 3, 1).reshape(-1, C)  # every output position's channels
    # each sampled patch's products are one output position's values, all distinct
    hits = [int(np.argmin(np.abs(outputs - row).sum(axis=1))) for row in dots]
    np.testing.assert_allclose(dots, outputs[hits], rtol=1e-4, atol=1e-5)
    assert len(set(hits)) == len(hits)


def test_a_loud_channel_of_a_depthwise_input_is_equalised():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((256, C, 9)).astype(np.float32)
    x[:, 2] *= 40.0
    w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    act_max = np.abs(x).max(axis=(0, 2))
    choice = equalize.choose_depthwise(x, act_max, w)
    assert choice.alpha == 1.0 and choice.error < choice.error_plain / 4
    # the choice is the least error of the grid, each computed directly
    errors = [_direct_error(x, act_max, w, a) for a in equalize.ALPHAS]
    assert choice.error == pytest.approx(min(errors), rel=1e-4)
    assert choice.alpha == equalize.ALPHAS[int(np.argmin(errors))]


def _direct_error(x: np.ndarray, act_max: np.ndarray, w: np.ndarray, alpha: float) -> float:
    """The W8A8 error of a depthwise conv with s of `alpha`, one channel at a time."""
    w2 = w.reshape(C, -1)
    w_max = np.abs(w2).max(axis=1)
    s = scales(act_max, w_max, alpha) if alpha else np.ones(C, np.float32)
    step = max(float(np.max(act_max / s)), 1e-12) / 127
    num = den = 0.0
    for c in range(C):
        xc = np.clip(np.round(x[:, c] / s[c] / step), -127, 127) * step
        wc = w2[c] * s[c]
        wq = np.clip(np.round(wc / (max(np.abs(wc).max(), 1e-12) / 127)), -127, 127) * (
            max(np.abs(wc).max(), 1e-12) / 127)
        ref = x[:, c] @ w2[c]
        num += float(np.sum((xc @ wq - ref) ** 2))
        den += float(np.sum(ref ** 2))
    return num / den


def test_a_build_with_equalize_on_records_it_and_keeps_the_graph(tmp_path):
    model = _net()
    onnx.save(model, tmp_path / "net.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(5)
    for k in range(8):
        np.save(calib / f"{k}.npy", rng.standard_normal((1, 3, 12, 12)).astype(np.float32))
    out = tmp_path / "out"
    result = trtbuild.build(str(tmp_path / "net.onnx"), out, int8=True, calib=str(calib),
                            target="onnx", equalize="on", cache=False)
    rec = next(s for s in result.report["stages"] if s["stage"] == "calibrate")["smoothquant"]
    assert rec["conv_inputs"] == 3 and rec["smoothed"] == rec["conv_equalised"] >= 1
    assert (out / "calib.cache.smooth.json").is_file()
    plain = trtbuild.build(str(tmp_path / "net.onnx"), tmp_path / "plain", int8=True,
                           calib=str(calib), target="onnx", cache=False)
    rec = next(s for s in plain.report["stages"] if s["stage"] == "calibrate")
    assert not rec.get("smoothquant", {}).get("applied")
    assert not (tmp_path / "plain" / "calib.cache.smooth.json").exists()
    ops = [n.op_type for n in onnx.load(out / "model.int8.onnx").graph.node]
    plain_ops = [n.op_type for n in onnx.load(tmp_path / "plain" / "model.int8.onnx").graph.node]
    assert sorted(ops) == sorted(plain_ops)
