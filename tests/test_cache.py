"""Engine cache with real files and real concurrent processes. The builds here are a fake
builder (FakeSlowBuild) on purpose: these tests check the cache's own control flow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO

from trtbuild.cache import ENGINE, MANIFEST, EngineCache, cache_key

WORKER = '''
import sys, time, hashlib
from pathlib import Path
from trtbuild.cache import EngineCache

root, log = Path(sys.argv[1]), Path(sys.argv[2])

def fake_slow_build():
    with open(log, "a") as f:
        f.write(f"build {sys.argv[3]}\\n")
    time.sleep(1.0)
    return b"ENGINE" * 1000, {"precision": "fp32"}

found = EngineCache(root).get_or_build("sm_86", "trt-rtx-1.7.1", "k" * 64, fake_slow_build)
print("hit" if found.hit else "built", hashlib.sha256(found.engine).hexdigest())
'''


def fake_build(payload: bytes = b"PLAN" * 256):
    calls = []

    def build():
        calls.append(1)
        return payload, {"precision": "fp16"}
    return build, calls


def test_two_processes_one_key_build_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "cache"),
                               str(tmp_path / "builds.log"), str(i)], env=env,
                              stdout=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len((tmp_path / "builds.log").read_text().splitlines()) == 1
    assert sorted(o[0] for o in outs) == ["built", "hit"] and outs[0][1] == outs[1][1]


def test_layout_and_hit(tmp_path):
    cache = EngineCache(tmp_path)
    build, calls = fake_build()
    first = cache.get_or_build("sm_89", "trt-rtx-1.7.1", "a" * 64, build)
    second = cache.get_or_build("sm_89", "trt-rtx-1.7.1", "a" * 64, build)
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    entry = tmp_path / "sm_89" / "trt-rtx-1.7.1" / ("a" * 64)
    assert sorted(p.name for p in entry.iterdir()) == [ENGINE, MANIFEST]
    manifest = json.loads((entry / MANIFEST).read_text())
    assert manifest["engine_bytes"] == 1024 and manifest["arch"] == "sm_89"
    assert not list(tmp_path.rglob("*.trtbuild-tmp-*"))  # no temp left behind


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "extra_file", "bad_json",
                                    "forged_as_stage_entry"])
def test_damaged_entries_are_quarantined_and_rebuilt(tmp_path, damage):
    cache = EngineCache(tmp_path)
    build, calls = fake_build()
    cache.get_or_build("sm_86", "trt-rtx-1.7.1", "b" * 64, build)
    entry = cache.entry("sm_86", "trt-rtx-1.7.1", "b" * 64)
    engine, manifest = entry / ENGINE, entry / MANIFEST
    if damage == "truncate":
        engine.write_bytes(engine.read_bytes()[:100])
    elif damage == "flip":
        data = bytearray(engine.read_bytes())
        data[10] ^= 0xFF
        engine.write_bytes(bytes(data))
    elif damage == "foreign":
        m = json.loads(manifest.read_text())
        m["key"] = "c" * 64
        manifest.write_text(json.dumps(m))
    elif damage == "extra_file":
        (entry / "notes.txt").write_text("x")
    elif damage == "forged_as_stage_entry":  # other bytes, hashed into a stage entry's list
        import hashlib

        engine.write_bytes(b"forged")
        m = json.loads(manifest.read_text())
        m["files"] = {ENGINE: {"bytes": 6, "sha256": hashlib.sha256(b"forged").hexdigest()}}
        manifest.write_text(json.dumps(m))
    else:
        manifest.write_text("{not json")
    again = cache.get_or_build("sm_86", "trt-rtx-1.7.1", "b" * 64, build)
    assert not again.hit and len(calls) == 2 and again.engine == b"PLAN" * 256
    quarantined = list((tmp_path / "quarantine").glob("*.reason"))
    assert len(quarantined) == 1
    assert cache.problem(entry) is None


def test_verify_reports_and_quarantines(tmp_path):
    cache = EngineCache(tmp_path)
    for k in "de":
        cache.get_or_build("sm_86", "trt-rtx-1.7.1", k * 64, fake_build()[0])
    (cache.entry("sm_86", "trt-rtx-1.7.1", "e" * 64) / ENGINE).write_bytes(b"x")
    results = dict(cache.verify())
    assert sum(p is not None for p in results.values()) == 1
    assert len(cache.entries()) == 1


def test_prune_by_age_and_size(tmp_path):
    cache = EngineCache(tmp_path)
    for i, k in enumerate("fgh"):
        cache.get_or_build("sm_86", "trt-rtx-1.7.1", k * 64, fake_build(bytes(200_000))[0])
        os.utime(cache.entry("sm_86", "trt-rtx-1.7.1", k * 64),
                 (time.time() - (3 - i) * 86400,) * 2)  # f oldest
    removed = cache.prune(max_age_days=2.5)
    assert [p.name[0] for p in removed] == ["f"]
    removed = cache.prune(max_size_mb=0.25)
    assert [p.name[0] for p in removed] == ["g"] and len(cache.entries()) == 1


def test_key_covers_weights_calibration_settings_arch_and_builder():
    base = cache_key(b"onnx", b"cache", {"opt": 3}, "sm_86", "trt-rtx-1.7.1")
    assert base == cache_key(b"onnx", b"cache", {"opt": 3}, "sm_86", "trt-rtx-1.7.1")
    assert len({base, cache_key(b"onnx2", b"cache", {"opt": 3}, "sm_86", "trt-rtx-1.7.1"),
                cache_key(b"onnx", b"other", {"opt": 3}, "sm_86", "trt-rtx-1.7.1"),
                cache_key(b"onnx", b"cache", {"opt": 4}, "sm_86", "trt-rtx-1.7.1"),
                cache_key(b"onnx", b"cache", {"opt": 3}, "sm_89", "trt-rtx-1.7.1"),
                cache_key(b"onnx", b"cache", {"opt": 3}, "sm_86", "trt-10.13.0")}) == 6


def test_cache_cli_ls_verify_prune(tmp_path):
    from conftest import run_cli

    cache = EngineCache(tmp_path)
    cache.get_or_build("sm_86", "trt-rtx-1.7.1", "i" * 64, fake_build()[0])
    proc = run_cli("cache", "ls", "--cache-dir", tmp_path, "--json")
    assert json.loads(proc.stdout)["entries"][0]["precision"] == "fp16"
    assert run_cli("cache", "verify", "--cache-dir", tmp_path).returncode == 0
    proc = run_cli("cache", "prune", "--cache-dir", tmp_path)
    assert proc.returncode == 2 and "--max-age-days" in proc.stderr
    assert run_cli("cache", "prune", "--max-size-mb", "0", "--cache-dir", tmp_path).returncode == 0
    assert cache.entries() == []


def test_timing_cache_file_is_read_and_merged(tmp_path, monkeypatch):
    """FakeTimingBuilder stands in for TensorRT (which this machine cannot run) to check that
    the engine stage feeds the stored timing cache in and writes the merged one back."""
    from trtbuild.config import build_settings
    from trtbuild.context import Context
    from trtbuild.report import Report
    from trtbuild.stages import engines
    from trtbuild.trt import backend as trt_backend
    from trtbuild.trt import builder

    seen = []

    def fake_timing_build(backend, onnx_path, arch, settings, timing_cache=None, on_phase=None,
                          calibrator=None):
        seen.append(timing_cache)
        return builder.BuildOutput(b"E" * 64, 0.01, (timing_cache or b"") + b"+t")

    backend = trt_backend.Backend("tensorrt", None, "10.13.0.35")
    monkeypatch.setattr(trt_backend, "load_backend", lambda choice: backend)
    monkeypatch.setattr(builder, "build", fake_timing_build)
    onnx_path = tmp_path / "m.onnx"
    settings = build_settings(str(onnx_path), archs=["ampere+"], cache_dir=tmp_path / "c")
    from onnx import TensorProto, helper

    for k in range(2):  # a different model: a cache miss each time
        graph = helper.make_graph(
            [helper.make_node("Relu", ["x"], ["y"])], f"g{k}",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        onnx_path.write_bytes(helper.make_model(graph).SerializeToString())
        ctx = Context(settings, tmp_path / "out", Report(None))
        ctx.artifacts.clean = onnx_path
        record = engines.run(ctx)
        assert record.engines[0].builder_version == "10.13.0.35"
        assert ctx.artifacts.engines[0].builder == "tensorrt"
    assert seen == [None, b"+t"]
    assert (tmp_path / "c" / "ampere+" / "trt-10.13.0" / "timing.cache").read_bytes() == b"+t+t"


def test_renames_are_made_durable_with_a_directory_fsync(tmp_path, monkeypatch):
    """After os.replace, the folder holding the new name is fsynced (issue 19, finding 10):
    atomic writes into OUT, and a cache entry (its own folder, then the tag folder)."""
    import os
    import stat

    from trtbuild.files import write_bytes

    synced: list[tuple[int, int]] = []  # (device, inode) of each directory fsynced
    real = os.fsync

    def record(fd):
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            synced.append((st.st_dev, st.st_ino))
        return real(fd)

    def ident(p):
        st = os.stat(p)
        return st.st_dev, st.st_ino

    monkeypatch.setattr(os, "fsync", record)
    write_bytes(tmp_path / "report.json", b"{}")
    assert ident(tmp_path) in synced
    synced.clear()
    cache = EngineCache(tmp_path / "c")
    found = cache.get_or_build("sm_86", "trt-rtx-1.7.1", "k" * 64, fake_build()[0])
    assert found.path is not None and ident(found.path) in synced
    assert ident(found.path.parent) in synced
