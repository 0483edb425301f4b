"""Engines for large models: weight streaming, refittable and weight-stripped engines
(--weight-streaming, --weight-streaming-budget, --refittable, --strip-weights), built with
TensorRT-RTX."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from conftest import run_cli
from onnx import TensorProto, helper, numpy_helper

import trtbuild
from trtbuild import TrtBuildError
from trtbuild.config import parse_stream_budget
from trtbuild.engine_info import describe, lines
from trtbuild.trt import runtime
from trtbuild.trt.gpu import gpu_info


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory) -> str:
    """Two 3x3 convs, 0.6 MB of weights: big next to the plan's own bytes."""
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32) * 0.05, n)
               for n, s in (("w0", (64, 3, 3, 3)), ("w1", (256, 64, 3, 3)))]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w1"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256, 32, 32])], weights)
    path = tmp_path_factory.mktemp("weights") / "convs.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


def _engine(result) -> dict:
    build = next(s for s in result.report["stages"] if s["stage"] == "build")
    (engine,) = build["engines"]
    return engine


def test_weight_streaming_engine_is_its_own_cache_entry(conv_model, tmp_path):
    common = dict(archs=["sm_89"], cache_dir=tmp_path / "c", target="engine")
    plain = _engine(trtbuild.build(conv_model, tmp_path / "plain", **common))
    streaming = trtbuild.build(conv_model, tmp_path / "ws", weight_streaming=True, **common)
    ws = _engine(streaming)
    assert ws["weight_streaming"] and not plain["weight_streaming"] and not ws["refittable"]
    assert ws["key"] != plain["key"] and not ws["cache_hit"]
    assert ws["refit_from"] is None and not ws["weights_stripped"]
    # the budget is how the engine is run, not how it is built: same engine, from the cache
    again = _engine(trtbuild.build(conv_model, tmp_path / "ws2", weight_streaming=True,
                                   weight_streaming_budget="50%", **common))
    assert again["cache_hit"] and again["key"] == ws["key"]
    assert streaming.engines[0].weight_budget == "auto"
    info = describe(ws["path"], tmp_path / "c")
    assert info["weight_streaming"] and not info["weights_stripped"]
    assert "weights:      streamable" in lines(info)


@pytest.mark.skipif(gpu_info() is not None, reason="a CUDA driver can build stripped engines")
def test_strip_weights_without_a_driver_fails_first_in_one_line(conv_model, tmp_path):
    start = time.perf_counter()
    proc = run_cli(conv_model, "--strip-weights", "--arch", "sm_89", "--out", tmp_path / "o",
                   "--cache-dir", tmp_path / "c")
    assert proc.returncode == 3, proc.stderr
    assert time.perf_counter() - start < 10
    (line,) = [ln for ln in proc.stderr.splitlines() if "error" in ln]
    assert "--strip-weights" in line and "no CUDA driver" in line and "sm_89" in line
    assert "Internal Error" not in proc.stderr  # Myelin's own print stays in the debug log
    assert not (tmp_path / "o").exists()


def test_streaming_settings_that_cannot_work_fail_before_any_stage(conv_model, tmp_path):
    proc = run_cli(conv_model, "--weight-streaming-budget", "50%", "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--weight-streaming-budget is for engines built with " \
        "--weight-streaming" in proc.stderr
    proc = run_cli(conv_model, "--weight-streaming", "--weight-streaming-budget", "0%",
                   "--out", tmp_path / "o")
    assert proc.returncode == 2 and "'0%'" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_stream_budget_values():
    assert parse_stream_budget("auto") == ("auto", 0.0)
    assert parse_stream_budget("50%") == ("fraction", 0.5)
    assert parse_stream_budget("512MiB") == ("bytes", 512 << 20)
    assert parse_stream_budget("2GB") == ("bytes", 2e9)
    assert parse_stream_budget("1000") == ("bytes", 1000)
    assert parse_stream_budget("0.5GiB") == ("bytes", 1 << 29)
    for bad in ("0%", "101%", "-5", "lots", "0", "0.5", "1.5.2MiB"):
        with pytest.raises(TrtBuildError):
            parse_stream_budget(bad)


def test_stream_budget_bytes_from_an_engine():
    # a stand-in for ICudaEngine's two weight-streaming properties: our arithmetic only
    fake_engine = SimpleNamespace(streamable_weights_size=1000,
                                  get_weight_streaming_automatic_budget=lambda: 640)
    assert runtime.stream_budget(fake_engine, "auto") == 640
    assert runtime.stream_budget(fake_engine, "25%") == 250
    assert runtime.stream_budget(fake_engine, "300") == 300
    assert runtime.stream_budget(fake_engine, "1GiB") == 1000  # never more than it has


def test_weights_beside_the_model_are_in_the_engine_key(conv_model, tmp_path):
    """A model with external data: other weights in its .data file, same .onnx bytes, must
    not be served the engine built from the first ones."""
    for name, scale in (("a", 1.0), ("b", 2.0)):
        model = onnx.load(conv_model)  # saving with external data rewrites it in place
        folder = tmp_path / name
        folder.mkdir()
        for init in model.graph.initializer:
            values = numpy_helper.to_array(init) * scale
            init.CopyFrom(numpy_helper.from_array(values.astype(np.float32), init.name))
        onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True,
                  location="m.onnx.data", size_threshold=0)
    assert (tmp_path / "a" / "m.onnx").read_bytes() == (tmp_path / "b" / "m.onnx").read_bytes()
    common = dict(archs=["sm_89"], cache_dir=tmp_path / "c", target="engine")
    first = _engine(trtbuild.build(str(tmp_path / "a" / "m.onnx"), tmp_path / "oa", **common))
    second = _engine(trtbuild.build(str(tmp_path / "b" / "m.onnx"), tmp_path / "ob", **common))
    assert not second["cache_hit"] and second["key"] != first["key"]


def _rtx_gpu() -> bool:
    from trtbuild.trt.backend import RTX_ARCHS

    gpu = gpu_info()
    return gpu is not None and gpu["arch"] in RTX_ARCHS


@pytest.mark.gpu
@pytest.mark.skipif(not _rtx_gpu(), reason="needs a GPU TensorRT-RTX runs on")
def test_stripped_engine_is_small_and_refits_to_the_full_engines_outputs(conv_model, tmp_path):
    arch = gpu_info()["arch"]
    full = _engine(trtbuild.build(conv_model, tmp_path / "full", archs=[arch],
                                  cache_dir=tmp_path / "c", target="engine"))
    stripped_run = trtbuild.build(conv_model, tmp_path / "strip", archs=[arch],
                                  cache_dir=tmp_path / "c", target="engine",
                                  strip_weights=True)
    stripped = _engine(stripped_run)
    assert stripped["bytes"] <= 0.05 * full["bytes"]
    assert stripped["refit_from"] == str((tmp_path / "strip" / "model.clean.onnx").resolve())
    checks = next(s for s in stripped_run.report["stages"] if s["stage"] == "validate_engines")
    (check,) = checks["engines"]
    assert "refused" not in check and check["outputs"]["y"]["cosine_mean"] > 0.999
