"""Emulating a written FP16-typed model (trtbuild.quant.emulate, the one emulator): the same
numbers as an emulation built another way, from the FP32 graph and the FP16 decisions; the
overflow ONNX Runtime's FP16 kernels miss, seen from the written file alone (`trtbuild
validate`); the build's checks run the graph they write, so a conversion bug shows."""

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


def _from_fp32_graph(model, s=Fp16Settings(), keep_at=frozenset()):
    """The emulation built from the FP32 graph and the FP16 decisions, as trtbuild did
    before the build's checks ran the written graph (a reference made another way: the
    emulation of convert's graph must compute the same)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    floats = io.float_tensors(m)
    half = fp16.half_nodes(g, floats, s, keep_at)
    used_by_half = {i for n, h in zip(g.node, half) if h for i in n.input}
    for init in g.initializer:
        if init.name in used_by_half and init.data_type == TensorProto.FLOAT:
            big = np.finfo(np.float16).max
            arr = np.clip(numpy_helper.to_array(init), -big, big).astype(np.float16).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(arr, init.name))
    producer_half = {o: h for n, h in zip(g.node, half) for o in n.output}
    inits = {i.name for i in g.initializer}
    rounded: dict[str, str] = {}  # FP32 tensor -> its FP16 round trip (the boundary Cast)
    rebuilt = []
    for node, h in zip(g.node, half):
        if h:  # inputs from FP32 nodes or graph inputs are cast to FP16 on the way in
            for k, name in enumerate(node.input):
                if name in floats and name not in inits and not producer_half.get(name) \
                        and node.op_type not in fp16.TYPE_AGNOSTIC \
                        and k not in fp16.FLOAT32_INPUTS.get(node.op_type, set()):
                    if name not in rounded:
                        rounded[name] = f"{name}_tofp16"
                        rebuilt += [helper.make_node("Cast", [name], [f"{name}_tofp16_h"],
                                                     to=TensorProto.FLOAT16),
                                    helper.make_node("Cast", [f"{name}_tofp16_h"],
                                                     [rounded[name]], to=TensorProto.FLOAT)]
                    node.input[k] = rounded[name]
        rebuilt.append(node)
        if not h:
            continue
        for k, name in enumerate(node.output):
            if name not in floats:
                continue
            raw = f"{name}_prefp16"
            node.output[k] = raw
            rebuilt += [helper.make_node("Cast", [raw], [f"{raw}_h"], to=TensorProto.FLOAT16),
                        helper.make_node("Cast", [f"{raw}_h"], [name], to=TensorProto.FLOAT)]
    del g.node[:]
    g.node.extend(rebuilt)
    del g.value_info[:]
    return m


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
    want = _run(_from_fp32_graph(encoder, s), feed)
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
                               _run(_from_fp32_graph(model, s), rounded)[0], rtol=1e-6)


def test_the_builds_checks_run_the_graph_they_write(tmp_path, monkeypatch):
    """A bug in fp16.convert (one weight written 1.5x too large) shows in the build's FP16
    and INT8 checks, which emulate the graphs written; the checks built from the FP32 graph
    and the keep list (before) reported the same agreement as with a correct conversion."""
    import trtbuild
    from trtbuild.demo import CALIB_DIR, VAL_DIR

    def cosines(out):
        report = json.loads((out / "report.json").read_text())
        return {s["stage"]: s["outputs"]["output"]["cosine_min"] for s in report["stages"]
                if s["stage"] in ("fp16", "validate")}

    options = dict(fp16=True, int8=True, calib=CALIB_DIR, val=VAL_DIR, target="onnx",
                   cache=False)
    trtbuild.build("trtbuild.demo.digits:digits_cnn", tmp_path / "ok", **options)
    good = cosines(tmp_path / "ok")
    convert = fp16.convert

    def broken(model, *args, **kwargs):
        half, info = convert(model, *args, **kwargs)
        from onnx import numpy_helper

        # the first FP16 weight of more than one value (INT8 graph: a bias or a scale)
        w = next(i for i in half.graph.initializer
                 if i.data_type == onnx.TensorProto.FLOAT16 and np.prod(i.dims) > 1)
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * np.float16(1.5), w.name))
        return half, info

    monkeypatch.setattr(fp16, "convert", broken)
    trtbuild.build("trtbuild.demo.digits:digits_cnn", tmp_path / "bug", **options)
    bad = cosines(tmp_path / "bug")
    assert min(good.values()) > 0.999 and set(good) == set(bad) == {"fp16", "validate"}
    assert bad["fp16"] < good["fp16"] - 1e-4 and bad["validate"] < good["validate"] - 1e-4, (
        good, bad)


def test_an_op_shape_inference_cannot_type_is_checked_unemulated(tmp_path):
    """A com.microsoft Gelu between Relus: shape inference cannot type its output, so the
    FP16 graph cannot be emulated; the fp16 stage checks the written file on ONNX Runtime's
    kernels and says so (the first one-emulator version ended in an internal error)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["a"]),
             helper.make_node("Gelu", ["a"], ["b"], domain="com.microsoft"),
             helper.make_node("Relu", ["b"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 8])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    onnx.save(model, str(tmp_path / "gelu.onnx"))
    proc = run_cli(tmp_path / "gelu.onnx", "--fp16", "--target", "onnx", "--out",
                   tmp_path / "o", "--json")
    assert proc.returncode == 0, proc.stderr
    fp16_record = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "fp16")
    assert fp16_record["cpu_check"].startswith("not emulated (")
