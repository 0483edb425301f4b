"""`trtbuild validate` on a build's models reads images as the build did: the preprocessing
is in its report.json, and flags given now override it key by key (issue 20, part 6)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trtbuild import api
from trtbuild.errors import TrtBuildError

DEMO = Path(__file__).parents[1] / "trtbuild" / "demo" / "data"
DIGITS = "trtbuild.demo.digits:digits_cnn"
PRE = {"grayscale": True, "scale": 1 / 255, "layout": "NCHW"}


def _pngs(src: Path, dest: Path, n: int = 24) -> Path:
    """The demo's images without their preprocess.json: only flags say how to read them."""
    dest.mkdir()
    for p in sorted(src.glob("*.png"))[:n]:
        shutil.copy(p, dest / p.name)
    return dest


def test_validate_takes_the_builds_preprocessing(tmp_path):
    calib, val = _pngs(DEMO / "calib", tmp_path / "calib"), _pngs(DEMO / "val", tmp_path / "val")
    out = tmp_path / "o"
    api.build(DIGITS, out, int8=True, calib=str(calib), val=str(val), target="onnx",
              cache=False, preprocess=PRE)
    assert json.loads((out / "report.json").read_text())["preprocess"] == PRE
    record = api.validate(out / "model.clean.onnx", out / "model.int8.onnx", str(val))
    assert record["preprocess_from"] == str(out / "report.json")
    assert record["samples"] == 24 and record["outputs"]["output"]["cosine_mean"] > 0.99
    # a flag given now wins over the recorded value of that key only
    with pytest.raises(TrtBuildError) as e:
        api.validate(out / "model.clean.onnx", out / "model.int8.onnx", str(val),
                     preprocess={"grayscale": False})
    assert e.value.code == 2 and "val" in e.value.message
    # a model without a build's report next to it: the flags are needed, as before
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("model.clean.onnx", "model.int8.onnx"):
        shutil.copy(out / name, alone / name)
    with pytest.raises(TrtBuildError):
        api.validate(alone / "model.clean.onnx", alone / "model.int8.onnx", str(val))
