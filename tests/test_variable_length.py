"""Samples of different lengths (sentences, text lines, clips) are never stacked: a
variable-length calibration and validation set ended in an internal error (exit 4,
`ValueError: all the input array dimensions except for the concatenation axis must match`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from trtbuild.metrics import stack

LENGTHS = (16, 24, 40)


def conv1d_model(path) -> None:
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.3, (8, 4, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (6, 8, 3)).astype(np.float32)
    g = helper.make_graph([
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["y"])], "variable_length",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "T"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, "T"])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def test_int8_build_with_samples_of_three_lengths(tmp_path):
    import trtbuild

    conv1d_model(tmp_path / "m.onnx")
    rng = np.random.default_rng(1)
    for folder in ("calib", "val"):
        (tmp_path / folder).mkdir()
        for k in range(12):
            x = rng.normal(0, 1, (1, 4, LENGTHS[k % 3])).astype(np.float32)
            np.save(tmp_path / folder / f"{k:02d}.npy", x)
    result = trtbuild.build(str(tmp_path / "m.onnx"), out=tmp_path / "o", int8=True,
                            calib=str(tmp_path / "calib"), val=str(tmp_path / "val"),
                            target="onnx", cache=False)
    stages = {s["stage"]: s for s in result.report["stages"]}
    assert stages["calibrate"]["samples"] == 12
    assert stages["validate"]["samples"] == 12
    assert stages["validate"]["outputs"]["y"]["cosine_mean"] > 0.99


def test_outputs_of_other_lengths_are_padded_alike():
    rng = np.random.default_rng(2)
    ref = [rng.normal(0, 1, (1, 6, n)).astype(np.float32) for n in LENGTHS]
    out = stack(ref, 0)
    assert out.shape == (3, 6, 40)
    for k, n in enumerate(LENGTHS):
        np.testing.assert_array_equal(out[k, :, :n], ref[k][0])
        assert not out[k, :, n:].any()
    # a batch axis other than 0 (sequence-first outputs): padded on the others only
    seq_first = [np.moveaxis(a, 0, 1) for a in ref]  # (6, 1, n)
    assert stack(seq_first, 1).shape == (3, 6, 40)


def test_named_batches_stops_at_the_limit_across_batches():
    """`limit` counts every row read, not the rows of the batch being filled (it read the
    whole set: bias correction took 64 samples for 16)."""
    from types import SimpleNamespace

    from trtbuild.data import named_batches

    feeds = [(f"{k}.npy", {"x": np.full((1, 3), k, np.float32)}) for k in range(10)]
    data = SimpleNamespace(batch_size=4, samples=lambda: iter(feeds))
    got = list(named_batches(data, limit=6))
    assert [len(names) for names, _ in got] == [4, 2]
    assert np.concatenate([b["x"] for _, b in got])[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert sum(len(n) for n, _ in named_batches(data)) == 10
