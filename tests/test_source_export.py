"""SRC forms and the export stage, checked against real ONNX Runtime sessions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from trtbuild.config import ExportSettings
from trtbuild.errors import TrtBuildError
from trtbuild.onnx import io as onnxio
from trtbuild.onnx import source
from trtbuild.onnx.inputs import random_feed
from trtbuild.stages.export import export


def _run_batch(path, batch: int) -> list[np.ndarray]:
    sess = onnxio.session(path)
    return sess.run(None, random_feed(onnx.load(str(path)), batch=batch))


def test_file_factory_with_examples_exports_and_matches_torch(factory_file, tmp_path):
    src = source.load(source.parse(f"{factory_file}:make"))
    result = export(src, tmp_path / "m.onnx")
    assert result.max_abs_err < 1e-5
    assert result.inputs == {"input": ["batch", 3, 16, 16]}
    onnx.checker.check_model(onnx.load(str(result.path)))
    # dynamic batch: the model runs at batch 5 and agrees with torch there too
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    got = onnxio.session(result.path).run(None, {"input": x})[0]
    want = src.module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_factory_without_examples_uses_input_spec(factory_file, tmp_path):
    src = source.load(source.parse(f"{factory_file}:make_plain"), {"images": (2, 3, 8, 8)})
    result = export(src, tmp_path / "m.onnx", ExportSettings(inputs=(("images", (2, 3, 8, 8)),),
                                                             dynamic_batch=False))
    assert result.inputs == {"images": [2, 3, 8, 8]}


def test_factory_without_examples_or_input_is_rejected(factory_file):
    with pytest.raises(TrtBuildError, match="no example inputs"):
        source.load(source.parse(f"{factory_file}:make_plain"))


def test_module_factory_digits(tmp_path):
    src = source.load(source.parse("trtbuild.demo.digits:digits_cnn"))
    result = export(src, tmp_path / "d.onnx")
    assert result.outputs == ["output"] and result.max_abs_err < 1e-5
    assert _run_batch(result.path, 7)[0].shape == (7, 10)


def test_torchvision_resnet18(tmp_path):
    src = source.load(source.parse("torchvision:resnet18"))
    result = export(src, tmp_path / "r.onnx")
    assert result.inputs["input"] == ["batch", 3, 224, 224]
    assert result.max_abs_err < 1e-4


def test_onnx_passthrough_is_checked_and_copied(digits_onnx, tmp_path):
    src = source.load(source.parse(str(digits_onnx / "model.onnx")))
    result = export(src, tmp_path / "copy.onnx")
    assert result.path.read_bytes() == (digits_onnx / "model.onnx").read_bytes()
    assert result.opset == 17


@pytest.mark.parametrize("text, message", [
    ("missing.onnx", "no such ONNX file"),
    ("missing.py:make", "no such Python file"),
    ("justaname", "SRC must be"),
    ("torchvision:resnet_does_not_exist", "no such torchvision model"),
    ("no_such_pkg_xyz.mod:make", "cannot import module"),
])
def test_bad_sources(text, message):
    with pytest.raises(TrtBuildError, match=message) as e:
        source.load(source.parse(text))
    assert e.value.code == 2


@pytest.mark.parametrize("fn, message", [("nope", "has no callable 'nope'"),
                                         ("boom", "factory raised RuntimeError: weights missing"),
                                         ("not_a_module", "returned int")])
def test_bad_factories(factory_file, fn, message):
    with pytest.raises(TrtBuildError, match=message):
        source.load(source.parse(f"{factory_file}:{fn}"))


def test_input_of_wrong_rank_is_rejected(factory_file):
    with pytest.raises(TrtBuildError, match="rank 3 given"):
        source.load(source.parse(f"{factory_file}:make"), {"input": (1, 3, 16)})


@pytest.mark.parametrize("blob", [b"", b"not an onnx model at all", None])
def test_truncated_or_garbage_onnx(digits_onnx, tmp_path, blob):
    bad = tmp_path / "bad.onnx"
    data = (digits_onnx / "model.onnx").read_bytes()
    bad.write_bytes(data[: len(data) // 3] if blob is None else blob)
    with pytest.raises(TrtBuildError, match="bad.onnx"):
        onnxio.load(bad)
