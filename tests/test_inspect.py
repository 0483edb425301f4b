"""`trtbuild inspect` and `trtbuild cache ls` on engines that TensorRT-RTX really built."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
from conftest import run_cli

from trtbuild import api
from trtbuild.errors import BAD_INPUT, MISSING_CAPABILITY, TrtBuildError

DIGITS = "trtbuild.demo.digits:digits_cnn"
pytest.importorskip("tensorrt_rtx")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """fp16 engines for sm_86: one build through a cache, one with --no-cache."""
    tmp = tmp_path_factory.mktemp("inspect")
    cached = api.build(DIGITS, tmp / "cached", fp16=True, archs=("sm_86",),
                       cache_dir=tmp / "cache", target="engine")
    uncached = api.build(DIGITS, tmp / "uncached", fp16=True, archs=("sm_89",),
                         cache=False, target="engine")
    return tmp, cached, uncached


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_engine_file_is_described_from_its_cache_manifest(built):
    tmp, cached, _ = built
    engine = cached.out / "engines" / "sm_86" / "model.fp16.engine"
    info = api.inspect(engine, tmp / "cache")
    assert info["builder"].startswith("tensorrt-rtx 1.") and info["arch"] == "sm_86"
    assert info["precision"] == "fp16" and info["record_kind"] == "cache manifest"
    assert info["verified"] and info["sha256"] == _sha(engine)
    assert info["bytes"] == engine.stat().st_size
    assert (info["hardware_compat"], info["version_compatible"]) == ("none", False)
    assert info["source"] == DIGITS and info["trtbuild_version"]
    assert info["onnx_sha256"] == _sha(cached.out / "model.fp16.onnx")
    inputs = [t for t in info["io"] if t["mode"] == "input"]
    assert [(t["name"], t["dtype"], t["shape"]) for t in inputs] == [
        ("input", "float32", [-1, 1, 8, 8])]
    assert inputs[0]["profile"] == [[1, 1, 8, 8], [8, 1, 8, 8], [32, 1, 8, 8]]
    assert [t["name"] for t in info["io"] if t["mode"] == "output"] == ["output"]
    # a copy anywhere is found by its bytes; the key and a prefix of it give the same entry
    copy = tmp / "elsewhere.engine"
    shutil.copyfile(engine, copy)
    assert api.inspect(copy, tmp / "cache")["key"] == info["key"]
    assert api.inspect(info["key"][:10], tmp / "cache")["sha256"] == info["sha256"]


def test_engine_without_a_cache_entry_is_described_from_its_report(built):
    tmp, _, uncached = built
    engine = uncached.out / "engines" / "sm_89" / "model.fp16.engine"
    info = api.inspect(engine, tmp / "cache")
    assert info["record_kind"] == "report.json" and info["arch"] == "sm_89"
    assert info["source"] == DIGITS and info["precision"] == "fp16"
    assert info["onnx_sha256"] == _sha(uncached.out / "model.fp16.onnx")
    assert [t["name"] for t in info["io"]] == ["input", "output"]


def test_damaged_entry_and_unknown_targets(built, tmp_path):
    from trtbuild.trt.runtime import machine_refusal

    tmp, cached, _ = built
    key = api.inspect(cached.out / "engines" / "sm_86" / "model.fp16.engine",
                      tmp / "cache")["key"]
    cache = tmp_path / "cache"
    shutil.copytree(tmp / "cache", cache)
    plan = next(cache.glob(f"sm_86/*/{key}/engine.plan"))
    data = bytearray(plan.read_bytes())
    data[-1] ^= 0xFF
    plan.write_bytes(bytes(data))
    damaged = api.inspect(key, cache)
    assert not damaged["verified"] and "sha256" in damaged["problem"]
    for target in ("nothex", "0123abcd"):
        with pytest.raises(TrtBuildError) as e:
            api.inspect(target, cache)
        assert e.value.code == BAD_INPUT
    stray = tmp_path / "stray.engine"
    stray.write_bytes(b"\x00" * 100)
    if machine_refusal():  # no GPU: nothing can read an engine no record describes
        with pytest.raises(TrtBuildError) as e:
            api.inspect(stray, cache)
        assert e.value.code == MISSING_CAPABILITY and "stray.engine" in e.value.message


def test_cli_inspect_and_cache_ls(built):
    tmp, cached, _ = built
    engine = cached.out / "engines" / "sm_86" / "model.fp16.engine"
    proc = run_cli("inspect", engine, "--cache-dir", tmp / "cache", check=True)
    assert "target:       sm_86" in proc.stdout and "input:        input  float32" in proc.stdout
    proc = run_cli("cache", "ls", "--cache-dir", tmp / "cache", check=True)
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:4] == ["MODEL", "PRECISION", "ARCH", "BUILDER"]
    assert any(line.startswith(DIGITS) and " fp16 " in line and " sm_86 " in line
               for line in lines)
    assert "engines" in lines[-1] and str(tmp / "cache") in lines[-1]
    listed = json.loads(run_cli("cache", "ls", "--cache-dir", tmp / "cache", "--arch", "sm_86",
                                "--json", check=True).stdout)
    assert {r["arch"] for r in listed["entries"]} == {"sm_86"}
    assert listed["total_bytes"] == sum(r["bytes"] for r in listed["entries"])
    none = json.loads(run_cli("cache", "ls", "--cache-dir", tmp / "cache", "--model", "resnet",
                              "--json", check=True).stdout)
    assert none["entries"] == [] and none["total_bytes"] == 0
