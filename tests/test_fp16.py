"""The graph-level FP16 pass, run in ONNX Runtime on the CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from trtbuild.config import Fp16Settings
from trtbuild.onnx import io as onnxio
from trtbuild.quant import fp16
from trtbuild.stages.clean import clean_model, outputs_diff


def _types(model) -> dict[str, int]:
    g = model.graph
    vis = list(g.input) + list(g.output) + list(g.value_info)
    return {vi.name: vi.type.tensor_type.elem_type for vi in vis}


@pytest.fixture(scope="module")
def encoder(encoder_onnx):
    return clean_model(onnx.load(encoder_onnx))[0]


def test_digits_weights_half_io_float(digits_onnx):
    model = onnx.load(str(digits_onnx / "model.clean.onnx"))
    half, info = fp16.convert(model)
    onnx.checker.check_model(half)
    types = _types(half)
    assert types["input"] == TensorProto.FLOAT and types["output"] == TensorProto.FLOAT
    weights = [i for i in half.graph.initializer if len(i.dims) >= 2]
    assert weights and all(w.data_type == TensorProto.FLOAT16 for w in weights)
    assert info["fp16_nodes"] == len(model.graph.node)
    diff = outputs_diff(model, half)
    assert 0 < diff < 0.1  # FP16 rounding is visible, and small


def test_fp16_io(digits_onnx):
    half, _ = fp16.convert(onnx.load(str(digits_onnx / "model.clean.onnx")),
                           Fp16Settings(io=True))
    types = _types(half)
    assert types["input"] == TensorProto.FLOAT16 and types["output"] == TensorProto.FLOAT16
    sess = onnxio.session(half)
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float16)
    assert sess.run(None, {"input": x})[0].dtype == np.float16


def test_encoder_keeps_layernorm_and_softmax_fp32(encoder):
    half, info = fp16.convert(encoder)
    onnx.checker.check_model(half)
    assert {"LayerNormalization", "Softmax"} <= set(info["fp32_ops"])
    types = _types(half)
    for n in half.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax"):
            assert types[n.output[0]] == TensorProto.FLOAT
        if n.op_type == "MatMul":
            assert types[n.output[0]] == TensorProto.FLOAT16
    for batch in (1, 3):
        assert outputs_diff(encoder, half, batch=batch) < 0.02


def test_keep_nodes_override(encoder):
    matmul = next(n.name for n in encoder.graph.node if n.op_type == "MatMul")
    half, info = fp16.convert(encoder, Fp16Settings(keep=(matmul,)))
    types = _types(half)
    node = next(n for n in half.graph.node if n.name == matmul)
    assert types[node.output[0]] == TensorProto.FLOAT
    assert info["fp32_nodes"] == fp16.convert(encoder)[1]["fp32_nodes"] + 1


def test_simulation_tracks_the_real_fp16_model(encoder):
    half, info = fp16.convert(encoder)
    sim = fp16.simulated(encoder)
    d_sim, d_real = outputs_diff(encoder, sim), outputs_diff(encoder, half)
    assert 0 < d_sim < 0.02 and 0 < d_real < 0.02
    assert outputs_diff(sim, half) < 0.02


def test_mask_constants_saturate_instead_of_inf():
    assert fp16._to_half(np.array([-3.4e38, 1.0], np.float32)).tolist() == [-65504.0, 1.0]
