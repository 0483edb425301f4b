"""The GPU path: full TensorRT and a CUDA GPU. Skipped cleanly on CPU-only machines (CI)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from trtbuild.demo import CALIB_DIR, VAL_DIR


def _gpu_ready() -> bool:
    try:
        import tensorrt  # noqa: F401
        import torch

        return hasattr(tensorrt, "Builder") and torch.cuda.is_available()
    except ImportError:
        return False


pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT and a CUDA GPU")]


def test_engine_validates_and_benchmarks_on_the_gpu(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--int8", "--calib", CALIB_DIR,
                   "--val", VAL_DIR, "--builder", "tensorrt", "--target", "engine", "--bench",
                   "--out", tmp_path / "o", "--cache-dir", tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    assert stages["bench"]["device"] == "gpu"
    assert {r["runner"] for r in stages["bench"]["runs"]} >= {"tensorrt", "torch-eager-cuda"}


def test_compare_engine_with_polygraphy(tmp_path):
    from trtbuild import onnxio
    from trtbuild.int8 import Int8Settings, open_dataset
    from trtbuild.validate import compare_engine

    out = tmp_path / "o"
    run_cli("trtbuild.demo.digits:digits_cnn", "--builder", "tensorrt", "--target", "engine",
            "--out", out, "--cache-dir", tmp_path / "c", check=True)
    engine = next((out / "engines").rglob("model.fp32.engine"))
    data = open_dataset(str(VAL_DIR), onnxio.load(out / "model.clean.onnx"), Int8Settings())
    record = compare_engine(out / "model.clean.onnx", engine, data, "fp32", VAL_DIR)
    assert record["outputs"]["output"]["top1_agreement"] > 0.99
