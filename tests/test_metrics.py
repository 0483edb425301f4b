"""Metrics that cannot hide a collapse, the batch axis from the model, --max-samples for
calibration only, and the --metric-script plug-in with its gates (CLI and API)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

import trtbuild
from trtbuild.config import GateSettings
from trtbuild.metrics import batch_axes, compare, feature_outputs, gate_failures, output_metrics

DEMO = Path(trtbuild.__file__).parent / "demo" / "data"


def test_per_channel_cosine_catches_collapsed_class_scores():
    rng = np.random.default_rng(0)
    boxes = rng.uniform(0, 320, (16, 4, 100))       # coordinates: exact
    scores = rng.uniform(0, 1, (16, 80, 100))       # class scores: collapsed to noise
    ref = np.concatenate([boxes, scores], axis=1).astype(np.float32)
    cand = np.concatenate([boxes, rng.uniform(0, 1, scores.shape)], axis=1).astype(np.float32)
    m = output_metrics(ref, cand)
    assert m["cosine_mean"] > 0.99                  # the whole-output view hides it
    assert m["channel_cosine_mean"] < 0.9 and m["channel_worst"].startswith("axis 1 ")
    fails = gate_failures({"outputs": {"det": m}}, GateSettings(min_cosine=0.98))
    assert any("channel_cosine_mean" in f for f in fails)


def test_one_value_per_sample_is_judged_by_error_and_correlation():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1, (64, 1)).astype(np.float32)   # a VAD probability per sample
    cand = rng.uniform(0, 1, (64, 1)).astype(np.float32)  # unrelated
    m = output_metrics(ref, cand)
    assert "cosine_mean" not in m and m["correlation"] < 0.5 and m["max_abs_err"] > 0.3
    assert any("correlation" in f for f in
               gate_failures({"outputs": {"p": m}}, GateSettings(min_cosine=0.9)))
    good = output_metrics(ref, ref + 1e-4)
    assert good["correlation"] > 0.999 and not gate_failures(
        {"outputs": {"p": good}}, GateSettings(min_cosine=0.9))


def time_major_model(path: Path) -> None:
    """x (N, 4, 6) -> Transpose -> y (6, N, 4): the batch on axis 1, as a CTC output."""
    w = np.random.default_rng(2).normal(0, 1, (4, 4)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"], perm=[2, 0, 1]),
         helper.make_node("MatMul", ["t", "w"], ["m"]),
         helper.make_node("Sigmoid", ["m"], ["y"])], "tm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6, "N", 4])],
        [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_batch_axis_comes_from_the_model(tmp_path):
    src = tmp_path / "tm.onnx"
    time_major_model(src)
    assert batch_axes(onnx.load(src)) == {"y": 1}
    val = tmp_path / "val"
    val.mkdir()
    for k in range(6):
        np.save(val / f"{k}.npy", np.random.default_rng(k).normal(0, 1, (1, 4, 6)).astype(np.float32))
    seen = {}

    def metric(ref, cand, names):
        seen.update(shape=ref["y"].shape, names=list(names))
        return {"rows": len(names)}

    r = trtbuild.build(str(src), out=str(tmp_path / "o"), int8=True, calib=str(val),
                       val=str(val), target="onnx", metric_script=metric,
                       gates=["rows>=6"], calib_batch_size=3)
    v = {s["stage"]: s for s in r.report["stages"]}["validate"]
    assert seen["shape"] == (6, 6, 4)  # batch first: 6 samples x (T=6, C=4)
    assert [Path(n).name for n in seen["names"]] == [f"{k}.npy" for k in range(6)]
    assert v["scores"] == {"rows": 6.0}


def test_max_samples_limits_calibration_only(tmp_path):
    proc = run_cli("demo", "--int8", "--max-samples", "8", "--target", "onnx",
                   "--out", tmp_path / "o", "--json", check=True)
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["calibrate"]["samples"] == 8
    assert stages["validate"]["samples"] == len(list((DEMO / "val").glob("*.png")))


AGREE = '''
import numpy as np

def agree(reference, candidate, names):
    (r,), (c,) = reference.values(), candidate.values()
    return {"agree": float((r.argmax(1) == c.argmax(1)).mean()), "n": len(names)}

def boom(reference, candidate, names):
    raise ValueError("no labels here")

def wrong(reference, candidate, names):
    return [1, 2]
'''


@pytest.fixture(scope="module")
def script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("metric") / "m.py"
    path.write_text(AGREE)
    return path


@pytest.mark.parametrize("gate, code", [("agree>=0.9", 0), ("agree>1.0", 1), ("n<=10", 1),
                                        ("output.cosine_mean>=0.9", 0)])
def test_metric_plugin_scores_and_gates(script, tmp_path, gate, code):
    proc = run_cli("demo", "--int8", "--target", "onnx", "--out", tmp_path / "o", "--json",
                   "--metric-script", f"{script}:agree", "--gate", gate)
    assert proc.returncode == code, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    checked = [s for s in report["stages"] if "scores" in s]  # fp16, then validate (int8)
    assert checked and all(v["scores"]["agree"] >= 0.9 and v["scores"]["n"] == v["samples"]
                           for v in checked)
    if code:  # the stages that ran, then one error line; --json says the same on stdout
        lines = proc.stderr.strip().splitlines()
        assert "does not meet" in lines[-1] and lines[-1].startswith("trtbuild: error:")
        assert not [x for x in lines[:-1] if "rror" in x or "Traceback" in x]
        assert json.loads(proc.stdout)["error"]["exit_code"] == 1


@pytest.mark.parametrize("fn, gate, needle", [
    ("boom", "agree>=0.9", "metric raised ValueError: no labels here"),
    ("wrong", "agree>=0.9", "metric returned list, expected a dict"),
    ("agree", "strings_equal>=0.95", "no metric 'strings_equal'"),
    ("missing", "agree>=0.9", "has no callable 'missing'")])
def test_metric_plugin_failures_are_one_line_exit_2(script, tmp_path, fn, gate, needle):
    proc = run_cli("demo", "--int8", "--target", "onnx", "--out", tmp_path / "o",
                   "--metric-script", f"{script}:{fn}", "--gate", gate)
    assert proc.returncode == 2 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("text", ["agree", "agree>=x", "agree=>1", ">=0.9"])
def test_bad_gate_expressions_exit_2_before_work(tmp_path, text):
    proc = run_cli("demo", "--int8", "--target", "onnx", "--out", tmp_path / "o",
                   "--gate", text)
    assert proc.returncode == 2 and "is not NAME>=NUMBER" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_compare_runs_the_plugin_on_whole_outputs():
    ref = {"y": np.eye(4, dtype=np.float32)}
    rec = compare(ref, {"y": np.eye(4, dtype=np.float32)[::-1]}, list("abcd"),
                  metric_script=lambda r, c, n: {"same": float((r["y"] == c["y"]).all())})
    assert rec["scores"] == {"same": 0.0} and rec["outputs"]["y"]["top1_agreement"] == 0.0


def test_scale_or_offset_error_on_one_value_outputs_fails_the_cosine_gate():
    ref = np.random.default_rng(4).uniform(0.1, 1, (32, 1)).astype(np.float32)
    m = output_metrics(ref, ref * 0.3 + 0.5)  # correlation 1.0, values wrong
    assert m["correlation"] > 0.999
    assert any("mean relative error" in f for f in
               gate_failures({"outputs": {"p": m}}, GateSettings(min_cosine=0.99)))
    single = output_metrics(ref[:1], ref[:1] + 5)  # one sample: no correlation at all
    assert single["correlation"] is None and gate_failures(
        {"outputs": {"p": single}}, GateSettings(min_cosine=0.99))


def test_slice_cosine_ignores_dead_channels_and_tiny_slices():
    rng = np.random.default_rng(5)
    ref = rng.normal(0, 1, (16, 32)).astype(np.float32)
    ref[:, 3] = 0.0                                   # a dead channel
    m = output_metrics(ref, ref + 1e-7)
    assert m["channel_cosine_mean"] > 0.999
    one = rng.normal(0, 1, (1, 1000)).astype(np.float32)  # batch 1: slices of one value
    m1 = output_metrics(one, one + rng.normal(0, 0.05, one.shape).astype(np.float32))
    assert "channel_cosine_mean" not in m1 and m1["cosine_mean"] > 0.99


def test_shape_mismatch_and_empty_outputs_are_reported_not_crashed():
    m = output_metrics(np.zeros((4, 6), np.float32), np.zeros((3, 6), np.float32))
    assert "shape_mismatch" in m
    assert gate_failures({"outputs": {"boxes": m}}, GateSettings())
    empty = output_metrics(np.zeros((0, 6), np.float32), np.zeros((0, 6), np.float32))
    assert empty.get("empty") and not gate_failures({"outputs": {"b": empty}}, GateSettings())


def test_tolerance_check_gives_polygraphy_simple_compare_verdicts():
    """validate computes CompareFunc.simple's elementwise verdict itself (Polygraphy's
    compare_accuracy also computes and logs medians of every output): the same answers."""
    from trtbuild.thirdparty import polygraphy

    polygraphy()
    from polygraphy.comparator import CompareFunc, IterationResult

    from trtbuild.stages.validate import tolerance_check

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4, 50)).astype(np.float32)
    near = ref + np.float32(5e-3) * rng.standard_normal(ref.shape).astype(np.float32)
    outlier = near.copy()
    outlier[2, 7] += 5.0
    zeros = np.zeros_like(ref)
    with_nan = near.copy()
    with_nan[0, 0] = np.nan
    small = np.full((3, 4), 1e-3, np.float32)
    seen = set()
    for cand, ref_ in ((near, ref), (outlier, ref), (zeros, ref), (ref, zeros), (with_nan, ref),
                       (small * 1.5, small), (ref, ref)):
        for atol, rtol in ((1e-2, 1e-2), (1e-1, 1e-1), (1e-4, 1e-4)):
            verdict = CompareFunc.simple(atol=atol, rtol=rtol)(
                IterationResult({"y": ref_}, runner_name="ref"),
                IterationResult({"y": cand}, runner_name="cand"))
            assert tolerance_check(ref_, cand, atol, rtol) == bool(verdict["y"]), (atol, rtol)
            seen.add(bool(verdict["y"]))
    assert seen == {True, False}


def test_integer_outputs_get_no_top1_agreement():
    """paraphrase-MiniLM-L3-v2 passes its int64 token ids through as outputs: they are not
    class scores; a float (N, C) output is."""
    ids = np.array([[101, 2023, 102], [101, 7592, 102]], np.int64)
    assert "top1_agreement" not in output_metrics(ids, ids.copy())
    logits = np.random.default_rng(0).standard_normal((2, 10)).astype(np.float32)
    assert output_metrics(logits, logits.copy())["top1_agreement"] == 1.0


def test_a_few_values_per_sample_are_judged_value_by_value():
    """A speech-quality model's three MOS figures: cosine 0.9986 with MOS off by 0.17 on
    average (issue 18); they get relative errors, which the --min-cosine gate reads, and no
    top-1 agreement (their cosine stays, for gates that name it). Two softmax probabilities
    (PP-OCR cls) stay a classifier, and labels still give label accuracy on few-class
    logits."""
    rng = np.random.default_rng(1)
    mos = rng.uniform(2.5, 4.5, (64, 3)).astype(np.float32)
    off = mos + rng.normal(0.17, 0.05, mos.shape).astype(np.float32)
    m = output_metrics(mos, off)
    assert m["cosine_mean"] > 0.99 and "top1_agreement" not in m  # cosine hides it
    assert 0.03 < m["mean_rel_err"] < 0.06 and "3 values per sample" in m["judged_by"]
    failed = gate_failures({"outputs": {"mos": m}}, GateSettings(min_cosine=0.99))
    assert len(failed) == 1 and "mean relative error" in failed[0]
    probs = np.exp(mos) / np.exp(mos).sum(1, keepdims=True)
    assert output_metrics(probs[:, :2] / probs[:, :2].sum(1, keepdims=True),
                          probs[:, :2] / probs[:, :2].sum(1, keepdims=True))[
        "top1_agreement"] == 1.0
    labels = {f"{k}.npy": int(np.argmax(mos[k])) for k in range(64)}
    record = compare({"y": mos}, {"y": off}, [f"{k}.npy" for k in range(64)], labels)
    assert record["label_accuracy"]["reference"] == 1.0


def _head(last: list, extra_inits: list | None = None) -> onnx.ModelProto:
    """x [N, 8, 16] -> MatMul w [16, 16] -> h, then the nodes `last` (ending in y [N, 16])."""
    w = numpy_helper.from_array(np.eye(16, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), *last], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [w, *(extra_inits or [])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_pooled_or_normalized_outputs_get_no_top1_agreement():
    """A sentence embedding (mean over tokens, or divided by its norm) is no class score;
    logits through a Gemm, or divided by a constant temperature, are."""
    t = numpy_helper.from_array(np.array(2.0, np.float32), "t")
    pooled = _head([helper.make_node("ReduceMean", ["h"], ["y"], axes=[1], keepdims=0)])
    normed = _head([helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=0),
                    helper.make_node("ReduceL2", ["m"], ["n"], axes=[1], keepdims=1),
                    helper.make_node("Div", ["m", "n"], ["y0"]),
                    helper.make_node("Identity", ["y0"], ["y"])])
    logits = _head([helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=0),
                    helper.make_node("Gemm", ["m", "w"], ["y"])])
    tempered = _head([helper.make_node("ReduceMean", ["h"], ["m"], axes=[1], keepdims=0),
                      helper.make_node("Gemm", ["m", "w"], ["g"]),
                      helper.make_node("Div", ["g", "t"], ["y"])], [t])
    assert feature_outputs(pooled) == feature_outputs(normed) == {"y"}
    assert feature_outputs(logits) == feature_outputs(tempered) == set()
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((32, 16)).astype(np.float32)
    cand = ref + rng.standard_normal((32, 16)).astype(np.float32) * 0.3
    names = [f"s{k}" for k in range(32)]
    assert "top1_agreement" in compare({"y": ref}, {"y": cand}, names)["outputs"]["y"]
    m = compare({"y": ref}, {"y": cand}, names, features={"y"})["outputs"]["y"]
    assert "top1_agreement" not in m and m["cosine_mean"] < 1.0
