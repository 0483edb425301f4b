"""Real TensorRT-RTX engine builds on a CPU-only machine, and the --target fallbacks."""

from __future__ import annotations

import json

import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper

from trtbuild.cache import EngineCache
from trtbuild.demo import CALIB_DIR, VAL_DIR
from trtbuild.trt.backend import load_backend

trt = pytest.importorskip("tensorrt_rtx", reason="TensorRT-RTX (the [rtx] extra) not installed")


def _stages(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    return {s["stage"]: s for s in json.loads(proc.stdout)["stages"]}


@pytest.fixture(scope="module")
def digits_engines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eng")
    args = ["trtbuild.demo.digits:digits_cnn", "--fp32", "--fp16", "--int8", "--calib", CALIB_DIR,
            "--val", VAL_DIR, "--builder", "tensorrt-rtx", "--arch", "sm_86,sm_89",
            "--cache-dir", tmp / "cache", "--json"]
    proc = run_cli(*args, "--out", tmp / "a")
    first = _stages(proc)
    # the end of the run names every engine file (the summary is on stderr with --json)
    assert sorted(line.split()[-1] for line in proc.stderr.splitlines()
                  if line.startswith("  engine ")) == sorted(
        str(tmp / "a" / "engines" / a / f"model.{p}.engine")
        for p in ("fp32", "fp16", "int8") for a in ("sm_86", "sm_89"))
    second = _stages(run_cli(*args, "--out", tmp / "b"))
    return tmp, first, second


def test_digits_fp32_fp16_int8_for_two_archs(digits_engines):
    tmp, first, _ = digits_engines
    build = first["build"]
    assert build["builder"] == "tensorrt-rtx" and build["built"] == 6
    assert {(e["precision"], e["arch"]) for e in build["engines"]} == {
        (p, a) for p in ("fp32", "fp16", "int8") for a in ("sm_86", "sm_89")}
    cache = EngineCache(tmp / "cache")
    for e in build["engines"]:
        data = (tmp / "a" / "engines" / e["arch"] / f"model.{e['precision']}.engine").read_bytes()
        assert len(data) == e["bytes"] > 10_000
        entry = cache.entry(e["arch"], load_backend("tensorrt-rtx").tag, e["key"])
        assert entry.parent.parent.name == e["arch"] and cache.problem(entry) is None
        manifest = json.loads((entry / "manifest.json").read_text())
        assert manifest["precision"] == e["precision"] and manifest["engine_sha256"] == e["sha256"]
    # the precision reached the strongly typed network: FP16 layers, INT8 (quantize) layers
    dtypes = {e["precision"]: e["layer_dtypes"] for e in build["engines"] if e["arch"] == "sm_86"}
    assert "HALF" not in dtypes["fp32"] and "INT8" not in dtypes["fp32"]
    assert dtypes["fp16"].get("HALF", 0) > dtypes["fp16"].get("FLOAT", 0)
    assert dtypes["int8"].get("INT8", 0) >= 3


def test_second_run_is_all_cache_hits(digits_engines):
    _, first, second = digits_engines
    assert second["build"]["built"] == 0 and second["build"]["cache_hits"] == 6
    assert {e["sha256"] for e in second["build"]["engines"]} == \
        {e["sha256"] for e in first["build"]["engines"]}


@pytest.mark.slow  # about 9 s
def test_resnet18_int8_and_dynamic_profile(tmp_path):
    # Q/DQ placement must build in TensorRT (catches e.g. INT32 bias DQs); explicit profile
    proc = run_cli("torchvision:resnet18", "--int8", "--calib", tmp_path / "calib",
                   "--out", tmp_path / "o", "--cache-dir", tmp_path / "c", "--arch", "sm_89",
                   "--shapes", "input:1x3x224x224,4x3x224x224,8x3x224x224", "--json",
                   setup=lambda: _random_npy(tmp_path / "calib", 6))
    build = _stages(proc)["build"]
    assert [e["precision"] for e in build["engines"]] == ["int8"] and build["built"] == 1


def _random_npy(folder, n):
    import numpy as np

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(folder / f"{i}.npy", rng.random((1, 3, 224, 224), dtype=np.float32))


def test_transformer_encoder_fp16_engine(tmp_path):
    f = tmp_path / "enc.py"
    f.write_text("import torch\ndef make():\n    torch.manual_seed(0)\n"
                 "    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, batch_first=True)\n"
                 "    enc = torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)\n"
                 "    return enc.eval(), torch.randn(1, 8, 32)\n")
    stages = _stages(run_cli(f"{f}:make", "--fp16", "--out", tmp_path / "o", "--cache-dir",
                             tmp_path / "c", "--arch", "sm_80,sm_120", "--json"))
    assert stages["fp16"]["outputs"]["output"]["cosine_mean"] > 0.999
    assert "LayerNormalization" in stages["fp16"]["fp32_ops"]
    assert stages["build"]["built"] == 2


def test_parser_error_names_node_and_op(tmp_path):
    node = helper.make_node("MyCustomOp", ["x"], ["y"], name="custom_node_1", domain="my.domain")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("my.domain", 1)])
    from trtbuild import TrtBuildError
    from trtbuild.config import EngineSettings
    from trtbuild.trt import builder

    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    with pytest.raises(TrtBuildError) as e:
        builder.build(load_backend("tensorrt-rtx"), path, "sm_86", EngineSettings())
    assert "custom_node_1" in e.value.message and "MyCustomOp" in e.value.message
    assert e.value.code == 3


def test_unknown_arch_is_exit_3(digits_onnx, tmp_path):
    proc = run_cli(digits_onnx / "model.onnx", "--arch", "sm_90", "--out", tmp_path / "o",
                   "--cache-dir", tmp_path / "c")
    assert proc.returncode == 3 and "sm_90" in proc.stderr


def test_target_auto_without_builder_completes_cpu_stages(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--int8", "--calib", CALIB_DIR,
                   "--val", VAL_DIR, "--builder", "tensorrt", "--out", tmp_path / "o", "--json")
    stages = _stages(proc)
    assert stages["build"]["skipped"].startswith("no engine built: no TensorRT builder")
    assert stages["validate"]["label_accuracy"]["candidate"] > 0.97
    assert stages["fp16"]["label_accuracy"]["candidate"] > 0.97
    warnings = [ln for ln in proc.stderr.splitlines() if "WARNING" in ln]
    assert len(warnings) == 1 and "no engine built" in warnings[0]
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--builder", "tensorrt",
                   "--target", "engine", "--out", tmp_path / "o2")
    assert proc.returncode == 3 and "tensorrt is not installed" in proc.stderr


def test_info_works():
    proc = run_cli("info", "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["builders"]["tensorrt-rtx"]["version"] == trt.__version__
    assert any("trt-rtx-" in p for p in info["cache_key_prefixes"])


def test_only_the_trt_package_imports_tensorrt():
    # every module imports TensorRT lazily, and only trtbuild/trt/ names it at all
    import re
    import subprocess
    import sys

    from conftest import REPO

    code = ("import sys, pkgutil, importlib, trtbuild\n"
            "for m in pkgutil.walk_packages(trtbuild.__path__, 'trtbuild.'):\n"
            "    importlib.import_module(m.name)\n"
            "assert not [m for m in ('tensorrt', 'tensorrt_rtx') if m in sys.modules]\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    pattern = r"^\s*(import|from) tensorrt|import_module\(MODULES|polygraphy\.backend\.trt"
    importers = sorted(str(p.relative_to(REPO)) for p in (REPO / "trtbuild").rglob("*.py")
                       if re.search(pattern, p.read_text(), re.M))
    assert importers and all(p.startswith("trtbuild/trt/") for p in importers), importers


def test_trt_calibrator_needs_tensorrt_10(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--int8", "--calib", CALIB_DIR,
                   "--calibrator", "trt", "--builder", "tensorrt-rtx", "--arch", "sm_86",
                   "--out", tmp_path / "o", "--cache-dir", tmp_path / "c")
    assert proc.returncode == 3 and "needs TensorRT <= 10" in proc.stderr
    engines = [e for e in EngineCache(tmp_path / "c").entries() if e.parts[-3] != "stages"]
    assert not engines  # nothing half-built in the cache


def test_fp16_flag_mode_needs_a_builder_with_the_flag(tmp_path):
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--fp16", "--fp16-mode", "flag",
                   "--builder", "tensorrt-rtx", "--out", tmp_path / "o", "--cache-dir",
                   tmp_path / "c")
    assert proc.returncode == 3 and "no FP16 builder flag" in proc.stderr


@pytest.mark.slow  # about 9 s
def test_mobilenet_v3_small_int8_and_fp16(tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("calib", 12), ("val", 8)):
        (tmp_path / split).mkdir()
        for i in range(n):
            np.save(tmp_path / split / f"{i}.npy", rng.random((1, 3, 224, 224), dtype=np.float32))
    stages = _stages(run_cli("torchvision:mobilenet_v3_small", "--int8", "--fp16", "--calib",
                             tmp_path / "calib", "--val", tmp_path / "val", "--arch", "sm_89",
                             "--out", tmp_path / "o", "--cache-dir", tmp_path / "c", "--json"))
    assert stages["validate"]["outputs"]["output"]["cosine_mean"] > 0.95
    assert stages["fp16"]["outputs"]["output"]["cosine_mean"] > 0.999
    assert {e["precision_from"] for e in stages["build"]["engines"]} == {"graph", "Q/DQ graph"}
