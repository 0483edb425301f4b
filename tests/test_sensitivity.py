"""--accuracy-target: the sensitivity search returns the fewest regions to float on a model
where plain INT8 misses the target, and the mixed model builds with TensorRT-RTX."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

from trtbuild.onnx import io
from trtbuild.quant.qdq import plan
from trtbuild.quant.regions import regions, without
from trtbuild.quant.sensitivity import Guide, output_error, search, switchable_model


def outlier_model(path, boost_by: float = 1000.0) -> None:
    """Three convs; the input of the middle one has one channel 1000x (`boost_by`) the
    others (its weights scaled back), so per-tensor INT8 there erases the seven small
    channels."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)
    boost = np.ones((1, 8, 1, 1), np.float32)
    boost[0, 0] = boost_by
    w2 = rng.normal(0, 0.4, (8, 8, 3, 3)).astype(np.float32)
    w2[:, 0] /= boost_by
    w3 = rng.normal(0, 0.4, (4, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1] * 4, name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Mul", ["r1", "boost"], ["m1"]),
             helper.make_node("Conv", ["m1", "w2"], ["c2"], pads=[1] * 4, name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Conv", ["r2", "w3"], ["y"], pads=[1] * 4, name="conv3")]
    g = helper.make_graph(
        nodes, "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (boost, "boost"),
                                                    (w2, "w2"), (w3, "w3"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    d = tmp_path_factory.mktemp("outlier")
    outlier_model(d / "m.onnx")
    rng = np.random.default_rng(1)
    for folder, n in (("calib", 16), ("val", 300)):  # val: searched on 160 (estimates on
        # 64 of them), the answer measured on the other 140
        (d / folder).mkdir()
        for k in range(n):
            np.save(d / folder / f"{k}.npy", rng.random((1, 3, 16, 16), dtype=np.float32))
    return d


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_search_falls_back_the_one_region_that_misses_the_target(outlier, tmp_path):
    plain = run_cli(outlier / "m.onnx", "--int8", "--calib", outlier / "calib", "--val",
                    outlier / "val", "--target", "onnx", "--out", tmp_path / "plain",
                    "--min-cosine", "0.99")
    assert plain.returncode == 1 and "cosine" in plain.stderr  # plain INT8 misses
    proc = run_cli(outlier / "m.onnx", "--int8", "--calib", outlier / "calib", "--val",
                   outlier / "val", "--out", tmp_path / "o", "--accuracy-target",
                   "cosine_mean>=0.99", "--arch", "sm_86", "--cache-dir", tmp_path / "c",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    sens = stages["sensitivity"]
    assert sens["before"] < 0.99 <= sens["after"] and sens["met"]
    assert (sens["searched_on"], sens["held_out"]) == (160, 140)
    assert sens["after"] != sens["search_value"] >= 0.99  # reported: the held-out half's
    assert [r["node"] for r in sens["regions"] if r["precision"] != "int8"] == ["conv2"]
    assert {r["precision"] for r in sens["regions"]} == {"int8", "fp16"}  # FP16 fallback
    by_node = {r["node"]: r for r in sens["regions"]}
    assert by_node["conv2"]["rank"] == 0  # the most sensitive region per MAC
    assert by_node["conv2"]["macs"] == 16 * 16 * 8 * 8 * 9  # one sample
    assert sens["int8_mac_coverage"] == pytest.approx(
        (by_node["conv1"]["macs"] + by_node["conv3"]["macs"])
        / sum(r["macs"] for r in sens["regions"]))
    # start, bisection over 3 regions estimated on 64 samples, its answer on the 160
    assert [st["measure"] for st in sens["steps"]] == ["full", "estimate", "full"]
    assert sens["samples"] == 300 and sens["steps"][-1]["holds"]
    # the written model is the mixed one, validated on all held-out samples
    assert stages["validate"]["outputs"]["y"]["cosine_mean"] >= 0.99
    assert stages["validate"]["samples"] == 300
    model = onnx.load(tmp_path / "o" / "model.int8.onnx")
    conv2 = next(n for n in model.graph.node if n.name == "conv2")
    assert list(conv2.input) == ["m1", "w2_fp16"]  # FP16 weights, no Q/DQ
    conv3 = next(n for n in model.graph.node if n.name == "conv3")
    assert all(i.endswith("_dequantized") for i in conv3.input)
    # INT8 + FP16 in one graph: DQs carry FP16 scales (opset 19), so they feed FP16 directly
    inits = {i.name: i for i in model.graph.initializer}
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(inits[n.input[1]].data_type == TensorProto.FLOAT16 for n in dqs)
    assert inits["w2_fp16"].data_type == TensorProto.FLOAT16
    assert model.opset_import[0].version == 19
    assert [e["precision"] for e in stages["build"]["engines"]] == ["int8"]  # TensorRT-RTX


def test_the_start_scored_on_the_estimate_rows_equals_an_estimate(outlier, tmp_path,
                                                                   monkeypatch):
    """The guide's start value comes from the start measurement's outputs, cut to the rows
    an estimate runs: it must be what the estimate itself gives with nothing in float."""
    import trtbuild
    from trtbuild.stages import sensitivity as stage

    seen = {}

    def spy(order, measure, holds, **kw):
        seen.update(kw, estimate=measure(set()))
        return search(order, measure, holds, **kw)

    monkeypatch.setattr(stage, "search", spy)
    outlier_model(tmp_path / "m.onnx", boost_by=100.0)  # INT8 cosine about 0.98, not 0
    trtbuild.build(str(tmp_path / "m.onnx"), out=tmp_path / "o", int8=True,
                   calib=str(outlier / "calib"), val=str(outlier / "val"), target="onnx",
                   accuracy_target="cosine_mean>=0.99")
    assert 0.9 < seen["start"] < 0.99
    assert seen["start_estimate"] == pytest.approx(seen["estimate"], abs=1e-6)
    assert seen["start_estimate"] != pytest.approx(seen["start"], abs=1e-6)  # other rows
    assert seen["guide"].perfect == pytest.approx(1.0)


def test_an_answer_that_misses_on_the_held_out_half_fails_the_gate(outlier, tmp_path):
    """The search chooses on the first half of --val; its answer is judged on the other
    half. Samples there at 1/100 of the calibrated range keep missing with the answer the
    first half chose: exit 1, the line says both values."""
    val = tmp_path / "val"
    val.mkdir()
    rng = np.random.default_rng(3)
    for k in range(128):
        scale = 1.0 if k < 64 else 0.01
        np.save(val / f"{k:03d}.npy", scale * rng.random((1, 3, 16, 16), dtype=np.float32))
    proc = run_cli(outlier / "m.onnx", "--int8", "--calib", outlier / "calib", "--val", val,
                   "--target", "onnx", "--out", tmp_path / "o", "--accuracy-target",
                   "cosine_mean>=0.99", "--no-cache")
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "on the 64 held-out samples the search did not choose on" in line, line
    sens = next(s for s in json.loads((tmp_path / "o" / "report.json").read_text())["stages"]
                if s["stage"] == "sensitivity")
    assert sens["search_value"] >= 0.99 > sens["after"] and not sens["met"]
    page = (tmp_path / "o" / "report.html").read_text()
    assert "<dt>held-out samples</dt><dd>64</dd>" in page and "search half" in page


def test_target_already_met_costs_no_sensitivity_pass(tmp_path):
    proc = run_cli("demo", "--int8", "--target", "onnx", "--out", tmp_path / "o",
                   "--accuracy-target", "top1_agreement>=0.99", "--json")
    assert proc.returncode == 0, proc.stderr
    sens = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}["sensitivity"]
    assert sens["evaluations"] == 1 and sens["fallback_regions"] == 0, sens["steps"]
    assert sens["sensitivity_samples"] == 0
    # every region in INT8; the classifier head (a Gemm feeding the output) stays float
    assert sens["macs_outside_regions"] > 0 and 0.99 < sens["int8_mac_coverage"] < 1.0


def test_switchable_model_equals_the_qdq_model_for_any_choice(outlier):
    from trtbuild.quant.qdq import insert_qdq

    model = onnx.load(outlier / "m.onnx")
    qplan = plan(model)
    found = regions(model, qplan)
    amaxes = {t: 3.0 for t in qplan.activations}
    switch, flags = switchable_model(model, qplan, amaxes, found)
    sess = io.session(switch)
    x = np.random.default_rng(3).random((2, 3, 16, 16), dtype=np.float32)
    for on in ({"conv1"}, {"conv1", "conv3"}, {r.node for r in found}):
        fallen = {r.node for r in found} - on
        flag_feed = {f: np.array(r.node in on) for f, r in zip(flags, found)}
        got = sess.run(None, {"x": x, **flag_feed})[0]
        want = io.session(insert_qdq(model, without(qplan, fallen), amaxes)).run(None, {"x": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_search_finds_the_smallest_prefix():
    calls = []

    def measure(fallen):
        calls.append(len(fallen))
        return len(fallen) / 10   # holds from 7 fallen regions on

    r = search([f"r{k}" for k in range(20)], measure, lambda v: v >= 0.7)
    assert r.met and len(r.fallen) == 7 and r.fallen == [f"r{k}" for k in range(7)]
    assert calls == [0, 10, 5, 7, 6]  # bisection: log2(20) + 1 measurements
    assert r.value == 0.7 and [s["holds"] for s in r.steps] == [False, True, False, True, False]
    never = search(["a", "b"], lambda f: 0.0, lambda v: v > 1)
    assert not never.met and never.fallen == ["a", "b"] and len(never.steps) == 3
    first = search(["a", "b"], lambda f: 5.0, lambda v: v > 1, start=0.0)
    assert first.met and first.fallen == ["a"]


def test_a_guided_search_takes_fewer_steps_to_the_same_smallest_prefix():
    """Values linear in the remaining sensitivity: the guide lands on the answer and its
    neighbour; a guide whose sensitivities are backwards still ends on the same prefix."""
    errors = [2.0 ** -k for k in range(20)]        # the order's regions, worst first
    remaining = [sum(errors[k:]) for k in range(21)]

    def run(guide, goal=0.99):
        calls = []

        def measure(fallen):
            calls.append(len(fallen))
            return 1.0 - 0.1 * remaining[len(fallen)]  # 0.8 with all in INT8, 1.0 with none

        return search([f"r{k}" for k in range(20)], measure, lambda v: v >= goal,
                      guide=guide), calls

    plain, plain_calls = run(None)
    guided, guided_calls = run(Guide(remaining, 0.99, 1.0))
    assert len(plain.fallen) == len(guided.fallen) == 5  # 0.1 * 2^-4 < 0.01 <= 0.1 * 2^-3
    assert guided.value == plain.value and guided.met
    assert len(plain_calls) == 6 and guided_calls == [0, 5, 4]
    wrong, wrong_calls = run(Guide(remaining[::-1], 0.99, 1.0))
    assert wrong.fallen == plain.fallen and len(wrong_calls) <= 2 * len(plain_calls)
    never, never_calls = run(Guide(remaining, 2.0, 1.0), 2.0)  # above perfect: bisection
    assert not never.met and len(never.fallen) == 20 and len(never_calls) == 7


def test_search_confirms_an_estimate_and_corrects_for_the_gap_when_it_misses():
    calls = []

    def estimate(fallen):          # optimistic by 0.2: holds from 5 fallen regions on
        calls.append(("estimate", len(fallen)))
        return len(fallen) / 10 + 0.2

    def confirm(fallen):           # the model as written: holds from 7 on
        calls.append(("confirm", len(fallen)))
        return len(fallen) / 10

    r = search([f"r{k}" for k in range(20)], estimate, lambda v: v >= 0.7 - 1e-9,
               confirm=confirm)
    assert r.met and len(r.fallen) == 7 and abs(r.value - 0.7) < 1e-9
    assert calls[0] == ("estimate", 0) and ("confirm", 5) in calls  # the estimate's answer
    # after the miss at 5, the search goes on with the estimate less the gap (0.2): one
    # more confirmation, at the right answer; never a confirmation below 5
    assert [c for c in calls if c[0] == "confirm"] == [("confirm", 5), ("confirm", 7)]
    first = [s["measure"] for s in r.steps].index("full")
    later = [s for s in r.steps[first:] if s["measure"] == "estimate"]
    assert later and all(s["bias"] == pytest.approx(0.2) for s in later)
    # out of correction rounds, the search climbs on the fuller measure alone
    wild = search([f"r{k}" for k in range(20)], lambda f: 1.0, lambda v: v >= 0.7 - 1e-9,
                  start=0.0, confirm=confirm, rounds=0)
    assert wild.met and len(wild.fallen) == 7 and wild.steps[-1]["measure"] == "full"


def test_a_goal_at_the_metrics_ceiling_climbs_on_full_measures():
    """top1_agreement>=1.0: an estimate on few samples reads 1.0 early, the full measure
    0.998; less that gap no estimate can reach 1.0, so the search climbs on full measures
    (the digits demo went 2 -> 4 of 4 regions in float without this)."""
    n = 12
    estimate = lambda f: 1.0 if len(f) >= 1 else 0.99   # noqa: E731
    confirm = lambda f: 1.0 if len(f) >= 3 else 0.998   # noqa: E731
    r = search([f"r{k}" for k in range(n)], estimate, lambda v: v >= 1.0, start=0.99,
               confirm=confirm, guide=Guide([float(n - k) for k in range(n + 1)], 1.0, 1.0))
    assert r.met and len(r.fallen) == 3
    assert not any("bias" in s for s in r.steps)


def test_unreachable_target_exits_1_and_says_so(tmp_path):
    # FP32 itself labels 98.4% of the first 64 validation digits right: no fallback helps
    from trtbuild.demo import CALIB_DIR, VAL_DIR

    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", CALIB_DIR, "--val",
                   VAL_DIR, "--target", "onnx", "--out", tmp_path / "o",
                   "--accuracy-target", "label_accuracy>=0.999")
    assert proc.returncode == 1 and "not reached even with 4 of 4 regions" in proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    sens = {s["stage"]: s for s in report["stages"]}["sensitivity"]
    assert not sens["met"] and sens["int8_mac_coverage"] == 0.0


def test_a_node_reading_one_tensor_twice_is_one_switch():
    # x @ x^T-style self products (attention scores) read the same tensor twice
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
         helper.make_node("MatMul", ["t", "t"], ["s"], name="self"),
         helper.make_node("Sigmoid", ["s"], ["y"])], "twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model = onnx.shape_inference.infer_shapes(model)
    qplan = plan(model)
    found = regions(model, qplan)
    assert [(r.node, r.inputs) for r in found] == [("self", ["t"])]
    switch, flags = switchable_model(model, qplan, {"t": 2.0}, found)
    x = np.random.default_rng(0).random((2, 4, 4), dtype=np.float32)
    on = io.session(switch).run(None, {"x": x, flags[0]: np.array(True)})[0]
    off = io.session(switch).run(None, {"x": x, flags[0]: np.array(False)})[0]
    t = x.transpose(0, 2, 1)
    np.testing.assert_allclose(off, 1 / (1 + np.exp(-(t @ t))), rtol=1e-5)
    assert np.abs(on - off).max() > 0  # the switch reaches both inputs


def stateful_model(path, state_batch: int | str = 1) -> None:
    """An LSTM-VAD-like model: windows x (T, 8) and a state h (`state_batch`, 8); a
    probability per window (T, 1) and the next state hn (1, 8) per feed, as silero-vad v6
    has them."""
    rng = np.random.default_rng(2)
    w1 = rng.normal(0, 0.5, (8, 16)).astype(np.float32)
    w1[:, 0] *= 50.0  # one loud channel: per-tensor INT8 loses the others
    w2 = rng.normal(0, 0.5, (16, 8)).astype(np.float32)
    w3 = rng.normal(0, 0.5, (16, 1)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["a"], name="mm1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MatMul", ["r", "w3"], ["p"], name="mm_prob"),
             helper.make_node("MatMul", ["r", "w2"], ["b"], name="mm_state"),
             helper.make_node("ReduceMean", ["b", "axes"], ["m"], keepdims=1),
             helper.make_node("Add", ["m", "h"], ["hn"])]
    g = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 8]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [state_batch, 8])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, ["T2", 1]),
         helper.make_tensor_value_info("hn", TensorProto.FLOAT, [state_batch, 8])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (w2, "w2"), (w3, "w3"),
                                                    (np.array([0], np.int64), "axes"))])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), path)


@pytest.mark.parametrize("state_batch", [1, "B"])
def test_a_target_on_a_model_whose_outputs_are_not_one_row_per_input_row(
        state_batch, tmp_path, monkeypatch):
    """silero-vad v6 (faster-whisper's copy) exited 2: the search cut its state output by
    input rows. Every output is judged, estimates agree with the start measurement, and with
    a symbolic state batch ("B") feeds of 32 windows and one state are never joined."""
    import trtbuild
    from trtbuild.stages import sensitivity as stage

    seen = {}

    def spy(order, measure, holds, **kw):
        seen.update(kw, estimate=measure(set()))
        return search(order, measure, holds, **kw)

    monkeypatch.setattr(stage, "search", spy)
    stateful_model(tmp_path / "m.onnx", state_batch)
    rng = np.random.default_rng(3)
    for folder, n in (("calib", 16), ("val", 150)):
        (tmp_path / folder).mkdir()
        for k in range(n):
            np.savez(tmp_path / folder / f"{k:03d}.npz",
                     x=rng.normal(0, 1, (32, 8)).astype(np.float32),
                     h=rng.normal(0, 1, (1, 8)).astype(np.float32))
    result = trtbuild.build(str(tmp_path / "m.onnx"), out=tmp_path / "o", int8=True,
                            calib=str(tmp_path / "calib"), val=str(tmp_path / "val"),
                            target="onnx", high_precision="fp32",
                            accuracy_target="cosine_mean>=0.99999")
    stages = {s["stage"]: s for s in result.report["stages"]}
    sens = stages["sensitivity"]
    assert sens["before"] < 0.99999 <= sens["after"] and sens["met"]
    assert "estimate" in [st["measure"] for st in sens["steps"]]
    assert seen["start_estimate"] == pytest.approx(seen["estimate"], abs=1e-6)
    assert stages["validate"]["outputs"]["hn"]["cosine_mean"] >= 0.99999


def test_a_small_range_slice_counts_in_the_sensitivity():
    """A YOLOv8-like output: rows of box coordinates in pixels beside rows of class scores in
    0-1. Scores moved by 0.2 are a lost detection; over the whole output that error is
    below 1e-6, per row it is what it is."""
    rng = np.random.default_rng(4)
    ref = np.concatenate([rng.uniform(0, 320, (4, 2, 64)),      # boxes (N=4, 2 rows, anchors)
                          rng.uniform(0, 0.3, (4, 2, 64))], 1)  # class scores
    boxes_off, scores_off = ref.copy(), ref.copy()
    boxes_off[:, :2] += 0.2
    scores_off[:, 2:] += 0.2
    whole = lambda c: float(np.sum((c - ref) ** 2) / np.sum(ref ** 2))  # noqa: E731
    assert whole(scores_off) == pytest.approx(whole(boxes_off))  # the same energy
    assert output_error({"y": ref}, {"y": scores_off}) > 100 * output_error({"y": ref},
                                                                              {"y": boxes_off})
    assert output_error({"y": ref}, {"y": boxes_off}) == pytest.approx(whole(boxes_off),
                                                                       rel=0.5)
