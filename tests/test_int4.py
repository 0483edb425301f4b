"""Weight-only INT4 (--int4-weights): block quantization, AWQ's scale and clip searches, the
written graph (DequantizeLinear-21 block_size), its CPU check and its TensorRT-RTX engine."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import run_cli

import trtbuild
from trtbuild.quant import int4
from trtbuild.quant.emulate import dequantize_linear, dequantized, has_int4


def test_blocks_round_within_half_a_step_and_dequantize_as_onnx_says():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 24)).astype(np.float32)
    w[:16, 3] = 0  # an all-zero block
    q, scale = int4.quantize_blocks(w, 16)
    assert q.dtype == np.int8 and q.min() >= -8 and q.max() <= 7 and scale.shape == (4, 24)
    deq = int4.dequantize_blocks(q, scale, 16)
    step = np.repeat(scale, 16, axis=0)
    assert np.all(np.abs(deq - w) <= step / 2 + 1e-6) and np.all(deq[:16, 3] == 0)
    loop = np.array([[q[k, n] * scale[k // 16, n] for n in range(24)] for k in range(64)])
    assert np.allclose(deq, loop) and np.allclose(dequantize_linear(q, scale, None, 0, 16), loop)


def test_awq_and_clipping_never_lose_to_rounding_on_their_rows():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((256, 128)).astype(np.float32)
    x[:, :4] *= 30  # outlier channels: where activation-aware scaling pays
    w = rng.standard_normal((128, 64)).astype(np.float32)
    plain = int4.nearest(w, 32)
    ref = x @ w

    def error(qz):
        return np.square((x / qz.divisor) @ int4.dequantize_blocks(qz.q, qz.scale, 32) - ref).sum()

    for clip in (False, True):
        found = int4.awq(w, x, np.abs(x).mean(axis=0), 32, clip=clip)
        assert found.error_ratio == pytest.approx(error(found) / error(plain), rel=1e-4)
        assert found.error_ratio < 0.9 and found.alpha > 0
    # no output column does worse than unclipped rounding on the rows it was chosen on
    q, scale = int4.clipped_blocks(w, x, 32)
    diff_c = int4.dequantize_blocks(q, scale, 32) - w
    diff_p = int4.dequantize_blocks(plain.q, plain.scale, 32) - w
    clipped, unclipped = (np.square(x @ d).sum(0) for d in (diff_c, diff_p))
    assert np.all(clipped <= unclipped * (1 + 1e-5)) and clipped.sum() < unclipped.sum()


def test_gptq_blocks_round_on_the_clipped_grid_and_beat_rounding():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((512, 96)) @ rng.standard_normal((96, 96)) * 0.3  # correlated
    x = x.astype(np.float32)
    w = rng.standard_normal((96, 40)).astype(np.float32)
    found = int4.gptq_blocks(w, x.T @ x, x, 32)
    _, grid = int4.clipped_blocks(w, x, 32)
    assert np.array_equal(found.scale, grid) and np.all(found.divisor == 1)
    assert found.q.min() >= -8 and found.q.max() <= 7 and found.error_ratio < 0.8


def _gemm_model(path, same_names: bool = False):
    """MatMul [K=64] then Gemm(transB=1) [K=32]: both weight layouts (`same_names`: both
    nodes named 'mm', as some exporters write)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.zeros(16, np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1,
                              name="mm" if same_names else "gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 64])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 16])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_written_graph_runs_in_onnx_runtime_as_its_emulation(tmp_path):
    model = _gemm_model(tmp_path / "g.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    rng = np.random.default_rng(3)
    for i in range(8):
        np.save(calib / f"{i}.npy", rng.standard_normal((4, 64)).astype(np.float32))
    gptq = trtbuild.build(str(model), tmp_path / "g", int4_weights=True, int4_block_size=16,
                          int4_method="gptq", calib=str(calib), target="onnx", cache=False)
    record = next(s for s in gptq.report["stages"] if s["stage"] == "int4")
    assert record["method"] == "gptq" and record["layers_by_method"] == {"gptq": 2}
    assert record["error_ratio_median"] < 1
    result = trtbuild.build(str(model), tmp_path / "o", int4_weights=True, int4_block_size=16,
                            calib=str(calib), target="onnx", cache=False)  # awq, the default
    record = next(s for s in result.report["stages"] if s["stage"] == "int4")
    assert record["quantized_weights"] == 2 and record["method"] == "awq"
    written = onnx.load(tmp_path / "o" / "model.int4.onnx")
    onnx.checker.check_model(written, full_check=True)
    dqs = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    assert sorted(a.i for n in dqs for a in n.attribute if a.name == "axis") == [0, 1]
    assert has_int4(written) and not has_int4(dequantized(written))
    # ONNX Runtime's exact path (fp32 accuracy level) computes what the emulation does
    options = ort.SessionOptions()
    options.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", "1")
    direct = ort.InferenceSession(str(tmp_path / "o" / "model.int4.onnx"), options,
                                  providers=["CPUExecutionProvider"])
    emulated = ort.InferenceSession(dequantized(written).SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    x = rng.standard_normal((5, 64)).astype(np.float32)
    assert np.allclose(direct.run(None, {"x": x})[0], emulated.run(None, {"x": x})[0],
                       atol=1e-4)
    assert record["outputs"]["y"]["cosine_mean"] > 0.98


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_transformer_int4_engine_from_tensorrt_rtx(encoder_onnx, tmp_path):
    """With --fp16 the INT4 model's activations and scales are FP16 too."""
    proc = run_cli(encoder_onnx, "--int4-weights", "--int4-method", "nearest", "--fp16",
                   "--int4-block-size", "16", "--arch", "sm_89", "--out", tmp_path / "o",
                   "--cache-dir", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["int4"]["quantized_weights"] >= 4 and stages["int4"]["activations"] == "fp16"
    assert stages["int4"]["outputs"]["y"]["cosine_mean"] > 0.95
    written = onnx.load(tmp_path / "o" / "model.int4.onnx")
    scales = {i.name: i.data_type for i in written.graph.initializer}
    dqs = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(scales[n.input[1]] == onnx.TensorProto.FLOAT16 for n in dqs)
    engine = next(e for e in stages["build"]["engines"] if e["precision"] == "int4")
    assert engine["layer_dtypes"].get("INT4", 0) >= 4 and engine["layer_dtypes"].get("HALF")


def test_nodes_sharing_a_name_each_get_their_weights(tmp_path):
    """Nodes are addressed by position (ONNX Runtime refuses such a model, onnx does not)."""
    from trtbuild.quant.mixed import at_opset

    model = at_opset(onnx.load(_gemm_model(tmp_path / "g.onnx", same_names=True)), 21)
    found, skipped = int4.targets(model, 16)
    assert len(found) == 2 and not skipped
    inits = {i.name: i for i in model.graph.initializer}
    written = int4.insert(model, {t.index: (t, int4.nearest(int4.weight(inits[t.weight], t), 16))
                                  for t in found}, 16)
    onnx.checker.check_model(written, full_check=True)
    dqs = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dqs) == 2 and len({n.output[0] for n in dqs}) == 2


def test_int4_settings_fail_before_any_stage(tmp_path):
    model = str(_gemm_model(tmp_path / "g.onnx"))
    proc = run_cli(model, "--int4-method", "nearest", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "need --int4-weights" in proc.stderr
    proc = run_cli(model, "--int4-weights", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--calib" in proc.stderr and "nearest" in proc.stderr
    proc = run_cli(model, "--int4-weights", "--int4-block-size", "100", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "power of two" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_an_unchanged_int4_build_reuses_the_stage(tmp_path):
    model = _gemm_model(tmp_path / "g.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    np.save(calib / "a.npy", np.random.default_rng(5).standard_normal((16, 64)).astype(np.float32))
    runs = []
    for out, block in (("a", 16), ("b", 16), ("c", 32)):
        result = trtbuild.build(str(model), tmp_path / out, int4_weights=True,
                                int4_block_size=block, calib=str(calib), target="onnx",
                                cache_dir=tmp_path / "cache")
        runs.append(next(s for s in result.report["stages"] if s["stage"] == "int4"))
    assert "reused" not in runs[0] and runs[1]["reused"] and "reused" not in runs[2]
    assert (tmp_path / "a" / "model.int4.onnx").read_bytes() == \
        (tmp_path / "b" / "model.int4.onnx").read_bytes()
    assert runs[1]["output"] == str(tmp_path / "b" / "model.int4.onnx")


def test_validate_runs_an_int4_file_as_an_engine_computes_it(tmp_path):
    model = _gemm_model(tmp_path / "g.onnx")
    trtbuild.build(str(model), tmp_path / "o", int4_weights=True, int4_block_size=16,
                   int4_method="nearest", target="onnx", cache=False)
    val = tmp_path / "val"
    val.mkdir()
    np.save(val / "a.npy", np.random.default_rng(4).standard_normal((6, 64)).astype(np.float32))
    record = trtbuild.validate(tmp_path / "o" / "model.clean.onnx",
                               tmp_path / "o" / "model.int4.onnx", str(val), precision="int4")
    assert record["cpu_check"].startswith("INT4 weights dequantized")
    assert record["outputs"]["y"]["cosine_mean"] > 0.98
