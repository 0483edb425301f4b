"""Emulating a written FP16-typed model (trtbuild.quant.emulate): the same numbers as the
emulation trtbuild builds from the FP32 graph, and the overflow ONNX Runtime's FP16 kernels
miss, seen from the written file alone (`trtbuild validate`)."""

from __future__ import annotations

import json

import numpy as np
import onnx
from conftest import run_cli
from test_fp16 import _square_model

from trtbuild.config import Fp16Settings
from trtbuild.onnx import io
from trtbuild.quant import fp16
from trtbuild.quant.emulate import emulate_typed, has_fp16
from trtbuild.stages.clean import clean_model


def _run(model, feed):
    return io.session(model).run(None, feed)


def test_typed_emulation_equals_the_one_built_from_the_fp32_graph(encoder_onnx):
    encoder = clean_model(onnx.load(encoder_onnx))[0]
    keep = next(n.name for n in encoder.graph.node if n.op_type == "MatMul")
    s = Fp16Settings(keep=(keep,))
    half, _ = fp16.convert(encoder, s)
    assert has_fp16(half) and not has_fp16(encoder)
    typed = emulate_typed(half)
    g = typed.graph  # FP16 only inside the round trips: weights and I/O are FP32
    assert {i.data_type for i in g.initializer} <= {onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    assert {v.type.tensor_type.elem_type for v in [*g.input, *g.output]} == {onnx.TensorProto.FLOAT}
    onnx.checker.check_model(typed)
    feed = {i.name: np.random.default_rng(0).standard_normal(
        [d.dim_value or 2 for d in i.type.tensor_type.shape.dim]).astype(np.float32)
        for i in encoder.graph.input}
    want = _run(fp16.emulated(encoder, s), feed)
    got = _run(typed, feed)
    for w, g in zip(want, got):
        assert np.abs(w - _run(encoder, feed)[0]).max() > 0  # FP16 rounding shows
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6)


def test_typed_emulation_overflows_where_the_gpu_would(tmp_path):
    half, _ = fp16.convert(_square_model(tmp_path), Fp16Settings(io=True))
    x = {"x": np.full((1, 8), 300, np.float32)}
    assert np.allclose(_run(half, {"x": x["x"].astype(np.float16)})[0], 90.0)  # ORT FP16
    assert np.isinf(_run(emulate_typed(half), x)[0]).all()


def test_validate_command_checks_a_written_fp16_model_by_emulation(tmp_path):
    """`trtbuild validate` on a file with FP16 tensors: the emulation, so a node that
    overflows (written without trtbuild's FP32 keep) fails the check."""
    model = _square_model(tmp_path)
    onnx.save(model, str(tmp_path / "sq.onnx"))
    half, _ = fp16.convert(model)     # no range keeps: the square overflows in FP16
    onnx.save(half, str(tmp_path / "sq.fp16.onnx"))
    val = tmp_path / "val"
    val.mkdir()
    for k in range(3):
        np.save(val / f"{k}.npy", np.full((1, 8), 250 + 20 * k, np.float32))
    proc = run_cli("validate", tmp_path / "sq.onnx", tmp_path / "sq.fp16.onnx",
                   "--val", val, "--json")
    record = json.loads(proc.stdout) if proc.stdout.strip() else {}
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "emulated" in record["cpu_check"] and record["outputs"]["y"]["non_finite"] > 0


def test_fp16_graph_inputs_feeding_an_fp32_node(tmp_path):
    """--fp16-io with the first node kept FP32: the graph input is FP16, cast to FP32 for
    it; the emulation feeds FP32, rounds it, and matches the one built from the FP32 graph."""
    model, s = _square_model(tmp_path), Fp16Settings(io=True, keep=("square",))
    half, _ = fp16.convert(model, s)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    typed = emulate_typed(half)
    assert "Identity" in [n.op_type for n in typed.graph.node]  # the FP16 -> FP32 Cast
    x = np.linspace(-3, 3, 8, dtype=np.float32)[None] + np.float32(1e-4)
    # the input is FP16 in the written model: the emulation rounds it on the way in
    rounded = {"x": x.astype(np.float16).astype(np.float32)}
    np.testing.assert_array_equal(_run(typed, {"x": x})[0], _run(typed, rounded)[0])
    np.testing.assert_allclose(_run(typed, rounded)[0],
                               _run(fp16.emulated(model, s), rounded)[0], rtol=1e-6)
