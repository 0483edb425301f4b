"""Sharded calibration (trtbuild.calib.merge) equals one process bit for bit, without Ray:
the digits demo at every method, a model whose ranges grow across batches (values at the
range's edge, then doublings: what a naive per-shard histogram would bin differently), and
sentinels, NaN, empty and all-zero tensors over more shards than batches."""

from __future__ import annotations

import numpy as np
import pytest

from trtbuild.calib import cachefile, merge
from trtbuild.calib.observer import Histogram
from trtbuild.calib.stream import calibrate
from trtbuild.config import DataSettings
from trtbuild.data import open_dataset
from trtbuild.demo import CALIB_DIR
from trtbuild.onnx import io
from trtbuild.quant.qdq import plan
from trtbuild.stages.calibrate import required_tensors


def same(a, b, method: str) -> None:
    assert a.amaxes == b.amaxes and a.methods == b.methods  # exact floats, not approx
    assert a.samples == b.samples and a.ignored == b.ignored
    assert cachefile.encode(a.amaxes, method) == cachefile.encode(b.amaxes, method)


def growing_model(folder):
    """x[N,8] -> Mul(x, 1) -> h -> MatMul -> y, calibration batches whose max grows."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4))
                                .astype(np.float32), "w")
    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "one"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])],
        "grow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w, one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = folder / "calib"
    calib.mkdir()
    rng = np.random.default_rng(1)
    # zeros first (bin 0 before any range), then maxima that grow, fall back and jump
    for i, scale in enumerate([0.0, 1.0, 0.5, 1.9, 3.0, 3.0, 10.0, 0.2, 41.0, 5.0]):
        x = rng.standard_normal((16, 8)).astype(np.float32) * scale
        if scale:
            x[0, 0] = scale  # a value exactly at this batch's max: the range's edge
        np.save(calib / f"{i:02d}.npy", x)
    return model, calib


@pytest.mark.parametrize("shards", [2, 3])
def test_growing_ranges_merge_exactly(tmp_path, shards):
    model, calib = growing_model(tmp_path)
    data = open_dataset(calib, model, DataSettings(batch_size=16))
    tensors = ["x", "h", "y"]
    for method in ("entropy", "max", "percentile", "mse", "auto"):
        one = calibrate(model, tensors, data, method, 99.99)
        split = merge.sharded(model, tensors, data, method, 99.99, shards)
        same(one, split, method)
    # the histograms themselves: same counts and range as the single process's
    blob = merge.observed_model(model, tensors).SerializeToString()
    found = {}
    for i in range(shards):
        found.update(merge.tops(blob, tensors, data, i, shards))
    hists, ranges = merge.schedule(found, 3)
    parts = [merge.counts(blob, tensors, [1, 2], data, i, shards,
                          {b: r[1:] for b, r in ranges.items() if b % shards == i})
             for i in range(shards)]
    single = {t: Histogram() for t in ("h", "y")}
    sess = io.session(merge.observed_model(model, ["h", "y"]))
    for feed in data.batches():
        for t, x in zip(("h", "y"), sess.run(["h", "y"], feed)):
            single[t].observe(x)
    for k, t in ((1, "h"), (2, "y")):
        merge.merge(hists[k], [p[k - 1] for p in parts])
        assert hists[k].range == single[t].range and hists[k].amax == single[t].amax
        np.testing.assert_array_equal(hists[k].counts, single[t].counts)
    # the schedule matters: binning every batch at the final range lands edge values apart
    direct = Histogram()
    for feed in data.batches():
        direct.observe(sess.run(["h"], feed)[0], range_=single["h"].range)
    assert (direct.counts != single["h"].counts).any()


def edge_model(folder):
    """x[N,8] -> h = x * 1 (sentinels pass through), Sqrt(x) (NaN), x * 0 (max 0), an empty
    slice of x, Relu(x), and y: their concat. The first batch is all sentinels, then zeros
    before any range, sentinels in every third batch, maxima that grow and fall."""
    from onnx import TensorProto, helper, numpy_helper

    def const(value, name, dtype=np.float32):
        return numpy_helper.from_array(np.array(value, dtype), name)

    nodes = [helper.make_node("Mul", ["x", "one"], ["h"]), helper.make_node("Sqrt", ["x"], ["nan"]),
             helper.make_node("Mul", ["x", "zero"], ["z"]),
             helper.make_node("Slice", ["x", "s0", "s0", "ax"], ["e"]),
             helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Concat", ["h", "nan", "z", "r"], ["y"], axis=1)]
    graph = helper.make_graph(
        nodes, "edge", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32]),
         helper.make_tensor_value_info("e", TensorProto.FLOAT, ["N", 0])],
        [const([1.0], "one"), const([0.0], "zero"), const([0], "s0", np.int64),
         const([1], "ax", np.int64)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = folder / "calib"
    calib.mkdir()
    rng = np.random.default_rng(2)
    for i, scale in enumerate([1.0, 0.0, 0.0, 1.0, 0.5, 2.0, 3.0, 10.0, 0.2, 41.0]):
        x = (rng.standard_normal((16, 8)) * scale).astype(np.float32)
        if i % 3 == 1:
            x[1, 1] = -3.0e38  # a mask's sentinel (finite, so the data reader takes it)
        if i == 0:
            x[:] = -3.0e38
        np.save(calib / f"{i:02d}.npy", x)
    return model, calib


@pytest.mark.parametrize("use_c", [True, False])
def test_sentinels_nan_empty_and_zero_tensors_merge_exactly(tmp_path, monkeypatch, use_c):
    """More shards than batches (some shards get none), with the C kernel and without."""
    from trtbuild.calib import observer

    if not use_c:
        monkeypatch.setattr(observer, "_hist", None)
    model, calib = edge_model(tmp_path)
    data = open_dataset(calib, model, DataSettings(batch_size=16))
    tensors = ["x", "h", "nan", "z", "e", "r", "y"]
    for method in ("entropy", "max", "percentile", "mse", "auto"):
        one = calibrate(model, tensors, data, method, 99.99)
        assert one.ignored["nan"] > one.ignored["h"] > 0 and one.amaxes["z"] == 0.0
        for shards in (3, 12):
            same(one, merge.sharded(model, tensors, data, method, 99.99, shards), method)


def test_digits_calibration_sharded_equals_single(digits_onnx):
    model = io.load(digits_onnx / "model.clean.onnx")
    tensors = required_tensors(model, plan(model))
    data = open_dataset(CALIB_DIR, model, DataSettings())
    for method in ("entropy", "auto"):
        one = calibrate(model, tensors, data, method, 99.99)
        same(one, merge.sharded(model, tensors, data, method, 99.99, 4), method)


def test_sharding_applies_above_the_shard_size(digits_onnx):
    model = io.load(digits_onnx / "model.clean.onnx")
    tensors = required_tensors(model, plan(model))
    data = open_dataset(CALIB_DIR, model, DataSettings())
    assert merge.calibrate(model, tensors, data, "entropy", 99.99)[1] == 1  # none installed
    calls = []

    def run(fn, args):
        calls.append(len(args))
        return merge.local_map(fn, args)

    with merge.sharding(run, shard_samples=100):
        found, shards = merge.calibrate(model, tensors, data, "entropy", 99.99)
    assert shards == 3 == len(data) // 100 + 1 and calls == [3, 3]
    with merge.sharding(run, shard_samples=len(data)):
        assert merge.calibrate(model, tensors, data, "entropy", 99.99)[1] == 1
    same(found, calibrate(model, tensors, data, "entropy", 99.99), "entropy")
