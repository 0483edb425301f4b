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
    runs = stages["bench"]["runs"]
    assert {r["runner"] for r in runs} >= {"tensorrt", "torch-eager-cuda"}
    assert all(r["device"] != "cpu" for r in runs)


def test_engines_validated_with_the_runtime_that_built_them(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--builder", "tensorrt", "--target",
                   "engine", "--val", VAL_DIR, "--out", tmp_path / "o", "--cache-dir",
                   tmp_path / "c", "--json")
    assert proc.returncode == 0, proc.stderr
    stages = {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}
    (engine,) = stages["validate_engines"]["engines"]
    assert engine["builder"] == "tensorrt" and "refused" not in engine
    assert engine["outputs"]["output"]["top1_agreement"] > 0.99
