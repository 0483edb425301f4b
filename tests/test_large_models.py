"""Models past protobuf's 2 GiB (issue 21, part 1), run small: with io.PROTO_LIMIT lowered
every model counts as large, so each stage takes the path a 2.5 GB ViT-H takes (weights as
external data, checker, shape inference and ONNX Runtime sessions by path) on the digits
demo, and must give the numbers the in-memory path gives."""

from __future__ import annotations

import json

import onnx
import pytest

import trtbuild
from trtbuild.demo import CALIB_DIR, VAL_DIR
from trtbuild.onnx import io

OPTIONS = dict(fp16=True, int8=True, calib=CALIB_DIR, val=VAL_DIR, cache=False,
               archs="sm_86")


def _metrics(out):
    report = json.loads((out / "report.json").read_text())
    return {s["stage"]: s["outputs"]["output"]["cosine_min"] for s in report["stages"]
            if s["stage"] in ("fp16", "validate")}


def test_every_stage_past_the_protobuf_limit_gives_the_same_numbers(tmp_path, monkeypatch):
    target = "engine" if _has_rtx() else "onnx"
    trtbuild.build("trtbuild.demo.digits:digits_cnn", tmp_path / "small", target=target,
                   **OPTIONS)
    monkeypatch.setattr(io, "PROTO_LIMIT", 2000)   # the demo's weights: about 100 kB
    model = onnx.load(str(tmp_path / "small" / "model.clean.onnx"))
    assert io.is_large(model)
    inferred = io.infer_shapes(onnx.load(str(tmp_path / "small" / "model.onnx")))
    assert len(inferred.graph.value_info) > 0 and io.is_large(inferred)  # weights put back
    trtbuild.build("trtbuild.demo.digits:digits_cnn", tmp_path / "large", target=target,
                   **OPTIONS)
    large = tmp_path / "large"
    for name in ("model.onnx", "model.clean.onnx", "model.fp16.onnx", "model.int8.onnx"):
        assert (large / f"{name}.data").is_file(), name   # weights beside each artifact
        assert io.uses_external_data(large / name)
    assert _metrics(large) == pytest.approx(_metrics(tmp_path / "small"), abs=1e-6)
    # the written graphs are the same graphs (not, say, their FP32 emulation)
    from trtbuild.quant.emulate import has_fp16
    for name in ("model.fp16.onnx", "model.int8.onnx"):
        written = [onnx.load(str(d / name)) for d in (tmp_path / "small", large)]
        assert [n.op_type for n in written[0].graph.node] == \
            [n.op_type for n in written[1].graph.node], name
        assert has_fp16(written[1]), name
    if target == "engine":  # TensorRT-RTX parsed the external-data files
        assert sorted(p.name for p in (large / "engines" / "sm_86").iterdir()) == [
            "model.fp16.engine", "model.int8.engine"]


def _has_rtx() -> bool:
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_model_protobuf_cannot_measure_counts_as_large():
    """Past 2 GiB protobuf's ByteSize itself raises EncodeError (a 2.5 GB vit_h_14 export
    failed 'ONNX checker failed: Failed to serialize proto'); such a model is large. A
    stand-in object, not a 2 GB proto: this is trtbuild's own control flow."""
    from google.protobuf.message import EncodeError

    class Unmeasurable:
        def ByteSize(self):
            raise EncodeError("Failed to serialize proto")

    assert io.is_large(Unmeasurable())
    assert not io.is_large(b"bytes") and not io.is_large("model.onnx")


def test_saving_twice_replaces_the_weights_file(tmp_path, monkeypatch):
    """onnx appends external data to an existing file: a second save of the same large
    model (the sensitivity search rewrites model.int8.onnx) doubled model.onnx.data."""
    import numpy as np

    monkeypatch.setattr(io, "PROTO_LIMIT", 2000)
    out = tmp_path / "small"
    trtbuild.build("trtbuild.demo.digits:digits_cnn", out, target="onnx", cache=False)
    model = onnx.load(str(out / "model.onnx"))
    for _ in range(2):
        io.save(model, tmp_path / "m.onnx")
        size = (tmp_path / "m.onnx.data").stat().st_size
    assert size == (out / "model.onnx.data").stat().st_size
    again = onnx.load(str(tmp_path / "m.onnx"))
    from onnx import numpy_helper
    for a, b in zip(model.graph.initializer, again.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trtbuild")]
