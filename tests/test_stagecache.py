"""The CPU stages' cache on real builds of the digits CNN (ONNX Runtime, files on disk)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import trtbuild
from trtbuild.demo import CALIB_DIR, VAL_DIR
from trtbuild.files import file_sha256

CPU_STAGES = ["export", "clean", "calibrate", "quantize", "validate"]
OUTPUTS = ["model.onnx", "model.clean.onnx", "calib.cache", "model.int8.onnx"]


def _build(src: Path, out: Path, store: Path, calib: Path = Path(CALIB_DIR), **kw):
    return trtbuild.build(str(src), out=out, int8=True, calib=str(calib), val=VAL_DIR,
                          max_samples=64, target="onnx", cache_dir=store, **kw)


def _reused(result) -> list[str]:
    return [r["stage"] for r in result.report["stages"] if r.get("reused")]


@pytest.fixture
def model(digits_onnx: Path, tmp_path: Path) -> Path:
    shutil.copy(digits_onnx / "model.onnx", tmp_path / "digits.onnx")
    return tmp_path / "digits.onnx"


def test_a_rerun_reuses_every_cpu_stage_and_writes_the_same_files(model, tmp_path):
    cache = tmp_path / "cache"
    first = _build(model, tmp_path / "a", cache)
    assert _reused(first) == []
    again = _build(model, tmp_path / "b", cache)
    assert _reused(again) == CPU_STAGES
    for name in OUTPUTS:
        assert file_sha256(tmp_path / "b" / name) == file_sha256(tmp_path / "a" / name)
    before = {r["stage"]: r for r in first.report["stages"]}
    measured = ("seconds", "reused", "peak_rss_mb")  # of this run, not of the stored one
    for r in again.report["stages"]:  # the same record, its paths in the new OUT
        same = {k: v for k, v in before[r["stage"]].items() if k not in measured}
        moved = json.loads(json.dumps(same).replace(str(tmp_path / "a"), str(tmp_path / "b")))
        assert {k: v for k, v in r.items() if k not in measured} == moved
    # a stage after a reused one gets what it needs in memory: the sensitivity-free INT8
    # check runs on the restored model and check graph
    assert again.stage("validate")["outputs"] == first.stage("validate")["outputs"]


def test_changed_data_or_settings_recompute_what_depends_on_them(model, tmp_path):
    cache = tmp_path / "cache"
    _build(model, tmp_path / "a", cache)
    assert _reused(_build(model, tmp_path / "b", cache, calib_method="max")) == [
        "export", "clean"]
    calib = tmp_path / "calib"
    shutil.copytree(CALIB_DIR, calib)
    first = sorted(p for p in calib.iterdir() if p.suffix != ".json")[0]
    first.write_bytes(first.read_bytes()[:-1] + bytes([first.read_bytes()[-1] ^ 1]))
    assert _reused(_build(model, tmp_path / "c", cache, calib=calib)) == ["export"]
    assert _reused(_build(model, tmp_path / "d", cache, cache=False)) == []


def test_a_damaged_entry_is_quarantined_and_recomputed(model, tmp_path, caplog):
    cache = tmp_path / "cache"
    _build(model, tmp_path / "a", cache)
    [entry] = [p for p in (cache / "stages" / "quantize").iterdir() if p.is_dir()]
    path = entry / "model.int8.onnx"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")  # same size, other bytes
    again = _build(model, tmp_path / "b", cache)
    assert _reused(again) == ["export", "clean", "calibrate", "validate"]
    assert any("sha256 mismatch; quarantined" in r.message for r in caplog.records)
    assert file_sha256(tmp_path / "b" / "model.int8.onnx") == file_sha256(
        tmp_path / "a" / "model.int8.onnx")
    assert [p for p in (cache / "quarantine").iterdir() if p.suffix != ".reason"]


@pytest.mark.slow  # about 9 s
def test_cli_no_cache_and_prune_cover_the_stage_entries(model, tmp_path):
    cache = tmp_path / "cache"
    args = ["build", model, "--int8", "--calib", CALIB_DIR, "--max-samples", "32",
            "--target", "onnx", "--cache-dir", cache]
    run_cli(*args, "--out", tmp_path / "a", "--no-cache", check=True)
    assert not (cache / "stages").exists()
    run_cli(*args, "--out", tmp_path / "b", check=True)
    proc = run_cli(*args, "--out", tmp_path / "c", check=True)
    assert proc.stdout.count("(reused from the cache)") == 5  # export .. validate (calib data)
    listing = run_cli("cache", "ls", "--cache-dir", cache, check=True).stdout
    assert "stage calibrate" in listing and "stage quantize" in listing
    run_cli("cache", "prune", "--max-size-mb", "0", "--cache-dir", cache, check=True)
    assert not [e for d in (cache / "stages").iterdir() for e in d.iterdir() if e.is_dir()]


def test_keys_follow_what_the_stage_reads(model, tmp_path):
    """A regenerated --calib-cache at the same path, the same folder given as --val rather
    than --calib, and an edited external-data file each change the key."""
    import onnx

    from trtbuild import pipeline
    from trtbuild.config import build_settings
    from trtbuild.stagecache import StageCache

    def key(stage, src=model, **options):
        settings = build_settings(str(src), int8=True, **options)
        ctx = pipeline.new_context(settings, tmp_path / "o", str(src))
        ctx.artifacts.clean = ctx.artifacts.model = src
        return StageCache(tmp_path / "cache").key(ctx, stage)[0]

    cache = tmp_path / "calib.cache"
    cache.write_text("TRT-8600-EntropyCalibration2\ninput: 3c010204\n")
    first = key("calibrate", calib=CALIB_DIR, calib_cache=cache)
    cache.write_text("TRT-8600-EntropyCalibration2\ninput: 3c010205\n")
    assert key("calibrate", calib=CALIB_DIR, calib_cache=cache) != first
    assert len({key("fp16", calib=CALIB_DIR), key("fp16", val=CALIB_DIR, calib=CALIB_DIR),
                key("fp16", val=CALIB_DIR)}) == 3

    external = tmp_path / "ext" / "m.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(str(model)), str(external), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    before = key("clean", src=external, calib=CALIB_DIR)
    weights = external.parent / "weights.bin"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert key("clean", src=external, calib=CALIB_DIR) != before


def test_torch_is_imported_early_on_a_first_build_and_never_on_a_rerun(model, tmp_path):
    """GPTQ's torch import (1.1-1.4 s) runs in a thread from the first stage that is not
    served from the cache (under way or done when export ends); a rerun of an unchanged
    ONNX build never imports torch. Polygraphy is imported before the thread starts: its
    modules call inspect.getmodule at import, whose caches race with torch's (CI once failed
    in the fp16 check with "'NoneType' object has no attribute '__all__'")."""
    import subprocess
    import sys

    from conftest import REPO

    code = f"""
import sys, threading
from trtbuild import pipeline
from trtbuild.config import build_settings
seen = []
def on_stage(name, record):
    if name == "export":
        seen.append("torch" in sys.modules or any(
            t.name == "trtbuild-import-torch" for t in threading.enumerate()))
        seen.append("polygraphy.comparator" in sys.modules)
s = build_settings(sys.argv[1], out=sys.argv[2], int8=True, calib={str(CALIB_DIR)!r},
                   val={str(VAL_DIR)!r}, max_samples=64, target="onnx", cache_dir=sys.argv[3])
pipeline.run(s, on_stage)
print(*seen, "torch" in sys.modules)
"""

    def imported(out: str) -> str:
        return subprocess.run([sys.executable, "-c", code, str(model), str(tmp_path / out),
                               str(tmp_path / "cache")], capture_output=True, text=True,
                              check=True, cwd=REPO).stdout.strip()
    assert imported("a") == "True True True"
    assert imported("b") == "False False False"


def test_a_loader_script_importing_torch_submodules_builds_with_gptq(model, tmp_path):
    """`from torch.utils.data import ...` in another thread while torch is half-imported
    fails ("partially initialized module"): no torch import runs beside the user's code."""
    import onnx

    x = onnx.load(str(model)).graph.input[0]
    shape = [d.dim_value or 4 for d in x.type.tensor_type.shape.dim]
    loader = tmp_path / "loader.py"
    loader.write_text(f"""
import numpy as np
from torch.utils.data import DataLoader, TensorDataset
import torch

def load():
    data = TensorDataset(torch.rand(16, *{shape[1:]!r}))
    for (batch,) in DataLoader(data, batch_size=4):
        yield {{{x.name!r}: batch.numpy()}}
""")
    proc = run_cli(model, "--int8", "--data-loader-script", f"{loader}:load", "--val",
                   f"{loader}:load", "--target", "onnx", "--out", tmp_path / "out",
                   "--no-cache")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "model.int8.onnx").is_file()



def test_the_first_sample_is_read_for_the_model_asked_about(model, tmp_path):
    """Context.first_sample(model) used to return the first model's feed to any later
    model (review finding 5): a model whose input has another name gets its own."""
    import onnx

    from trtbuild import pipeline
    from trtbuild.config import build_settings

    a = onnx.load(str(model))
    b = onnx.load(str(model))
    old = b.graph.input[0].name
    b.graph.input[0].name = "renamed"
    for node in b.graph.node:
        node.input[:] = ["renamed" if i == old else i for i in node.input]
    ctx = pipeline.new_context(build_settings(str(model), val=VAL_DIR), tmp_path, "m")
    feed_a, _ = ctx.first_sample(a)
    feed_b, _ = ctx.first_sample(b)
    assert list(feed_a) == [old] and list(feed_b) == ["renamed"]
    assert ctx.first_sample(a)[0] is feed_a  # read once per input signature
    assert np.array_equal(feed_a[old], feed_b["renamed"])
