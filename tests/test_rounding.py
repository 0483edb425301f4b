"""GPTQ weight rounding (trtbuild.quant.rounding): on the same per-channel grid, the INT8
model's output is closer to FP32 than with nearest rounding, measured with ONNX Runtime on
held-out inputs; the CLI records it and --weight-rounding nearest turns it off."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from trtbuild.onnx import io
from trtbuild.quant import rounding
from trtbuild.quant.qdq import QuantPlan, insert_qdq, plan, quantize_weight


def smooth_images(n: int, seed: int) -> np.ndarray:
    """(n, 4, 24, 24) low-pass noise: neighbouring pixels nearly equal, as in photos."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 4, 6, 6)).astype(np.float32)
    return np.kron(x, np.ones((1, 1, 4, 4), np.float32)) + \
        rng.normal(0, 0.02, (n, 4, 24, 24)).astype(np.float32)


def difference_model() -> onnx.ModelProto:
    """A depthwise 3x3 conv whose kernels take differences of neighbours (large taps of
    opposite sign, small ones around them, as PP-OCRv4's reparameterised kernels), then a
    1x1 conv, then Gemm (transB) and MatMul heads."""
    rng = np.random.default_rng(0)
    dw = rng.normal(0, 0.02, (4, 1, 3, 3)).astype(np.float32)
    dw[:, 0, 1, 1], dw[:, 0, 1, 2] = 2.0, -1.9
    pw = rng.normal(0, 0.5, (8, 4, 1, 1)).astype(np.float32)
    gemm_w = rng.normal(0, 0.1, (6, 8 * 24 * 24)).astype(np.float32)
    mm_w = rng.normal(0, 0.5, (6, 5)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "dw"], ["a"], group=4, pads=[1] * 4, name="dw"),
             helper.make_node("Conv", ["a", "pw"], ["b"], name="pw"),
             helper.make_node("Flatten", ["b"], ["f"]),
             helper.make_node("Gemm", ["f", "gemm_w"], ["g"], transB=1, name="gemm"),
             helper.make_node("MatMul", ["g", "mm_w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"])]
    g = helper.make_graph(
        nodes, "diff", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 24, 24])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
         helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4, 24, 24])],
        [numpy_helper.from_array(v, k) for k, v in
         (("dw", dw), ("pw", pw), ("gemm_w", gemm_w), ("mm_w", mm_w))])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    return onnx.shape_inference.infer_shapes(model)


def _weights_only(model, weights=None):
    qplan = plan(model)
    return insert_qdq(model, QuantPlan([], qplan.weights, qplan.consumers), {}, weights)


def _error(model, x: np.ndarray, ref: list[np.ndarray]) -> list[float]:
    out = io.session(model).run(None, {"x": x})
    return [float(np.mean((o - r) ** 2) / np.mean(r ** 2)) for o, r in zip(out, ref)]


def test_gptq_beats_nearest_on_held_out_data_with_the_same_grid():
    model = difference_model()
    qplan = plan(model)
    assert {w for w, _ in qplan.weights} == {"dw", "pw", "gemm_w"}  # MatMul head stays float
    calib = [{"x": smooth_images(8, seed)} for seed in range(4)]
    weights, summary = rounding.round_weights(model, qplan, calib, io.session)
    # a layer keeps nearest rounding where GPTQ would not lower its estimated error, and
    # where it saw too few input vectors for its row length (the Gemm: 32 for 4608)
    assert summary["candidates"] == 3 and summary["rows"] == 32
    assert "dw" in weights and "gemm_w" not in weights
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    for name, axis in qplan.weights:
        if name not in weights:
            continue
        q, scale = weights[name]
        near_q, near_scale = quantize_weight(inits[name], axis)
        assert q.dtype == np.int8 and q.shape == near_q.shape
        assert np.array_equal(scale, near_scale)   # same grid, other rounding
        assert not np.array_equal(q, near_q)
    held_out = smooth_images(16, seed=99)
    ref = io.session(model).run(None, {"x": held_out})
    nearest = _error(_weights_only(model), held_out, ref)
    gptq = _error(_weights_only(model, weights), held_out, ref)
    # the depthwise conv's output: the difference taps no longer drift
    assert gptq[1] < 0.8 * nearest[1], (gptq, nearest)
    assert gptq[0] <= nearest[0], (gptq, nearest)
    assert summary["output_error_ratio_median"] < 0.9


def test_gptq_on_a_matmul_weight_and_grouped_layout():
    rng = np.random.default_rng(3)
    w = rng.normal(0, 0.5, (16, 12)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["m"], name="mm"),
             helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="head")]
    g = helper.make_graph(nodes, "mm", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                      ["N", 7, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 7, 3])],
                          [numpy_helper.from_array(w, "w"),
                           numpy_helper.from_array(np.ones((12, 3), np.float32), "w2")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mix = rng.normal(0, 1, (16, 16)).astype(np.float32)   # correlated input features
    feeds = [{"x": rng.normal(0, 1, (4, 7, 16)).astype(np.float32) @ mix} for _ in range(4)]
    weights, _ = rounding.round_weights(model, plan(model), feeds, io.session)
    q, scale = weights["w"]
    assert q.shape == (16, 12) and scale.shape == (12,)   # (in, out), per output column
    x = rng.normal(0, 1, (32, 16)).astype(np.float32) @ mix
    exact = x @ w
    near_q, _ = quantize_weight(w, 1)
    err = [np.mean((x @ (qq * scale) - exact) ** 2) for qq in (near_q, q)]
    assert err[1] < err[0]


@pytest.fixture(scope="module")
def diff_dirs(tmp_path_factory):
    d = tmp_path_factory.mktemp("diff")
    onnx.save(difference_model(), d / "m.onnx")
    for folder, seed in (("calib", 1), ("val", 2)):
        (d / folder).mkdir()
        for k, x in enumerate(smooth_images(24, seed)):
            np.save(d / folder / f"{k:02d}.npy", x[None])
    return d


def _int8_weights(path) -> dict[str, np.ndarray]:
    m = onnx.load(str(path))
    return {i.name: numpy_helper.to_array(i) for i in m.graph.initializer
            if i.data_type == TensorProto.INT8 and i.name.endswith("_int8")}


def test_cli_records_gptq_and_nearest_turns_it_off(diff_dirs, tmp_path):
    runs = {}
    for method in ("gptq", "nearest"):
        proc = run_cli(diff_dirs / "m.onnx", "--int8", "--calib", diff_dirs / "calib", "--val",
                       diff_dirs / "val", "--target", "onnx", "--weight-rounding", method,
                       "--high-precision", "fp32", "--out", tmp_path / method, "--json")
        assert proc.returncode == 0, proc.stderr
        stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
        runs[method] = (stages, _int8_weights(tmp_path / method / "model.int8.onnx"))
    gptq, nearest = runs["gptq"], runs["nearest"]
    assert gptq[0]["quantize"]["weight_rounding"]["method"] == "gptq"
    assert gptq[0]["quantize"]["weight_rounding"]["candidates"] == 3
    assert nearest[0]["quantize"]["weight_rounding"] == {"method": "nearest"}
    inits = {i.name: numpy_helper.to_array(i) for i in difference_model().graph.initializer}
    assert np.array_equal(nearest[1]["dw_int8"], quantize_weight(inits["dw"], 0)[0])
    assert not np.array_equal(gptq[1]["dw_int8"], nearest[1]["dw_int8"])
    cos = {m: r[0]["validate"]["outputs"]["a"]["cosine_mean"] for m, r in runs.items()}
    assert cos["gptq"] >= cos["nearest"], cos


def test_bad_weight_rounding_is_exit_2(diff_dirs, tmp_path):
    proc = run_cli(diff_dirs / "m.onnx", "--int8", "--calib", diff_dirs / "calib",
                   "--weight-rounding", "adaround", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "weight-rounding" in proc.stderr
    assert not (tmp_path / "o").exists()


def _gptq_loop(w: np.ndarray, h: np.ndarray, scale: np.ndarray,
               qrange: tuple[int, int] = (-127, 127)) -> np.ndarray:
    """GPTQ as the paper states it, one column at a time in float64 (no lazy blocks, no
    Cholesky tricks): the reference rounding.gptq must equal. `scale` (groups, r) or a
    scale per weight (groups, r, K)."""
    w, h = w.astype(np.float64).copy(), h.astype(np.float64).copy()
    if scale.ndim == 2:
        scale = np.repeat(scale[:, :, None], w.shape[2], axis=2)
    q = np.empty(w.shape, np.int8)
    for g in range(w.shape[0]):
        hg = h[g]
        d = np.diag(hg).copy()
        d[d <= 0] = 1.0
        np.fill_diagonal(hg, d + rounding.DAMP * d.mean())
        u = np.linalg.cholesky(np.linalg.inv(hg)).T
        for k in range(w.shape[2]):
            col = w[g, :, k]
            q[g, :, k] = np.clip(np.round(col / scale[g, :, k]), *qrange)
            err = (col - q[g, :, k] * scale[g, :, k]) / u[k, k]
            w[g, :, k + 1:] -= np.outer(err, u[k, k + 1:])
    return q


def _problem(groups: int, r: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (groups, k, 4 * k)) + rng.normal(0, 1, (groups, 1, 4 * k))  # correlated
    x[:, 0] = 0.0                                                      # a dead input
    h = np.matmul(x, x.transpose(0, 2, 1)).astype(np.float32)
    w = rng.normal(0, 0.1, (groups, r, k)).astype(np.float32)
    scale = (np.abs(w).max(axis=2) / 127).astype(np.float32)
    return w, h, scale


@pytest.mark.parametrize("groups,r,k", [(3, 1, 9), (1, 16, 300), (2, 8, 130)])
def test_gptq_equals_the_column_loop(groups, r, k):
    """Lazy block updates (BLOCK = 128 columns) in float32 torch round as the float64 loop
    does: at most a few weights in a thousand differ, by one step (float32 ties)."""
    w, h, scale = _problem(groups, r, k, seed=k)
    fast, slow = rounding.gptq(w, h, scale), _gptq_loop(w, h, scale)
    differ = fast != slow
    assert differ.mean() <= 0.003, differ.mean()
    assert np.abs(fast.astype(int) - slow).max() <= 1


def test_gptq_with_int4_block_scales_equals_the_column_loop():
    """A scale per weight (INT4 blocks of 32 along K) on the 4-bit grid."""
    w, h, _ = _problem(1, 12, 160, seed=5)
    blocks = np.abs(w.reshape(1, 12, 5, 32)).max(axis=3) / 7
    scale = np.repeat(blocks, 32, axis=2).astype(np.float32)
    fast = rounding.gptq(w, h, scale, qrange=(-8, 7))
    slow = _gptq_loop(w, h, scale, (-8, 7))
    assert fast.min() >= -8 and fast.max() <= 7
    assert (fast != slow).mean() <= 0.003 and np.abs(fast.astype(int) - slow).max() <= 1


def test_wide_rows_are_rounded_in_blocks_of_whole_channels(monkeypatch):
    """A conv whose rows are longer than MAX_K is rounded in equal blocks of whole input
    channels (H block-diagonal), recorded per layer, and still beats nearest rounding."""
    monkeypatch.setattr(rounding, "MAX_K", 64)
    rng = np.random.default_rng(5)
    w = rng.normal(0, 0.2, (8, 16, 3, 3)).astype(np.float32)          # K = 144: 3 blocks of 54
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, name="conv")]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 16, 12, 12])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 8, 12, 12])], [numpy_helper.from_array(w, "w")])
    model = onnx.shape_inference.infer_shapes(
        helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    assert rounding._block_size(144, 9) == 54
    mix = rng.normal(0, 1, (16, 16)).astype(np.float32)
    feeds = [{"x": np.einsum("nchw,cd->ndhw", rng.normal(0, 1, (8, 16, 12, 12)), mix)
              .astype(np.float32)} for _ in range(2)]
    weights, summary = rounding.round_weights(model, plan(model), feeds, io.session)
    assert summary["per_layer"] == {"w": "gptq, 3 blocks"}
    x = feeds[0]["x"]
    ref = io.session(model).run(None, {"x": x})[0]
    err = [np.mean((io.session(_weights_only(model, ws)).run(None, {"x": x})[0] - ref) ** 2)
           for ws in (None, weights)]
    assert err[1] < err[0], err


def test_output_positions_per_row_match_onnx_runtime():
    """_positions (what bounds H's cost) against the shape ONNX Runtime computes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from trtbuild.quant.rounding import _positions

    w = np.zeros((4, 3, 3, 2), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1],
                            dilations=[1, 2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.zeros((6, 3, 11, 9), np.float32)
    y = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert _positions(x.shape, 3, w, node) == y.shape[0] * y.shape[2] * y.shape[3] / 3
    matmul = helper.make_node("MatMul", ["t", "m"], ["o"])
    assert _positions((2, 7, 16), 2, np.zeros((16, 8), np.float32), matmul) == 7


def test_calibration_pass_statistics_round_as_quantize_own_pass(tmp_path, monkeypatch):
    """GPTQ's layer-input statistics gathered inside the calibration pass give the INT8
    model that quantize's own second pass gives, byte for byte."""
    import trtbuild
    from trtbuild.calib import merge
    from trtbuild.demo import CALIB_DIR

    def build(out):
        r = trtbuild.build("trtbuild.demo.digits:digits_cnn", out=tmp_path / out, int8=True,
                           calib=CALIB_DIR, max_samples=96, target="onnx", cache=False)
        return r.stage("quantize")["weight_rounding"], (tmp_path / out / "model.int8.onnx")

    fused, fused_model = build("fused")
    calibrate = merge.calibrate
    monkeypatch.setattr(merge, "calibrate",  # the calibration pass without GPTQ's taps
                        lambda *a, extra=None, **k: calibrate(*a[:6], **k))
    own, own_model = build("own")
    assert fused["layer_inputs"] == "calibration pass" and own["layer_inputs"] == "own pass"
    assert fused["layers"] == own["layers"] > 0
    assert fused_model.read_bytes() == own_model.read_bytes()


@pytest.mark.parametrize("case", ["strided", "grouped", "split", "matmul"])
def test_second_moments_equal_an_explicit_im2col(case, monkeypatch):
    """Moments.add's H (after _by_channel), on every output position, equals X X^T of the
    layer input unfolded as the weights lay out (torch's unfold: channel, then kernel row and
    column), block by block: the gather's order and padding change nothing."""
    import torch

    monkeypatch.setattr(rounding, "MAX_K", 24 if case == "split" else 1152)  # 60: 3 x 24
    rng = np.random.default_rng(3)
    if case == "matmul":
        w = rng.normal(0, 1, (20, 6)).astype(np.float32)
        node = helper.make_node("MatMul", ["x", "w"], ["y"])
        x = rng.normal(0, 1, (2, 5, 20)).astype(np.float32)
        cols = torch.from_numpy(x.reshape(-1, 20)).T[None]
        g, k = 1, 20
    else:
        groups = 2 if case == "grouped" else 1
        w = rng.normal(0, 1, (4, 10 // groups, 3, 2)).astype(np.float32)
        node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 0, 2, 1], strides=[2, 1],
                                dilations=[1, 2], group=groups)
        x = rng.normal(0, 1, (3, 10, 9, 8)).astype(np.float32)
        xp = torch.nn.functional.pad(torch.from_numpy(x), (0, 1, 1, 2))
        un = torch.nn.functional.unfold(xp, (3, 2), dilation=(1, 2), stride=(2, 1))
        g, k = groups, 10 // groups * 6
        cols = un.permute(1, 0, 2).reshape(groups, k, -1)   # (groups, K, positions)
    layer = rounding.Layer("w", 0, node, "x")
    size = rounding._block_size(k, rounding._taps(layer, w))
    h = sum(torch.matmul(c.mT, c) for c in rounding._columns(
        torch.from_numpy(x), w, node, 10 ** 6, size))
    got = rounding._by_channel(h, rounding._taps(layer, w)).numpy()
    nb = -(-k // size)
    padded = torch.nn.functional.pad(cols, (0, 0, 0, nb * size - k)).reshape(g * nb, size, -1)
    want = torch.matmul(padded, padded.mT).numpy()
    assert got.shape == want.shape == (g * nb, size, size)
    assert nb == (3 if case == "split" else 1)  # split: the last block padded by 2 channels
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
