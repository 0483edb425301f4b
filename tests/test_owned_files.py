"""A failed stage removes only what it created, and only in a directory the run owns
(issue 19, finding 4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from trtbuild import api
from trtbuild.errors import TrtBuildError


def _relu(path: Path) -> Path:
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _linear(path: Path) -> Path:
    """MatMul -> Relu -> MatMul (the first gets Q/DQ; a head feeding an output stays float)."""
    rng = np.random.default_rng(0)
    ws = [helper.make_tensor(f"w{k}", TensorProto.FLOAT, [4, 4],
                             rng.normal(size=16).astype(np.float32)) for k in (1, 2)]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "w2"], ["y"])],
        "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], ws)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_failed_validate_keeps_files_beside_the_users_model(tmp_path):
    """validate runs in the user's model folder: a file that appears there while the
    stage fails (another process's, here the metric's) is not the run's to delete."""
    models = tmp_path / "models"
    models.mkdir()
    ref, cand = _relu(models / "ref.onnx"), _relu(models / "cand.onnx")
    val = tmp_path / "val"
    val.mkdir()
    np.save(val / "0.npy", np.ones((1, 4), np.float32))
    users = models / "notes.txt"

    def metric(ref_out, cand_out, names):
        users.write_text("written while validate ran")
        raise ValueError("metric broke")

    with pytest.raises(TrtBuildError, match="metric broke"):
        api.validate(ref, cand, str(val), precision="fp16", metric_script=metric)
    assert users.read_text() == "written while validate ran"
    assert sorted(p.name for p in models.iterdir()) == ["cand.onnx", "notes.txt", "ref.onnx"]


def test_failed_bench_keeps_files_beside_the_users_model(tmp_path, monkeypatch):
    """bench runs in the user's model folder too (issue 19, finding 4); the timing is made
    to fail after another file appeared there (a fake failure: our control flow)."""
    from trtbuild import timing

    models = tmp_path / "models"
    models.mkdir()
    model = _relu(models / "m.onnx")
    users = models / "notes.txt"

    def fails(*args, **kwargs):
        users.write_text("written while bench ran")
        raise TrtBuildError("timing broke")

    monkeypatch.setattr(timing, "bench_onnxruntime", fails)
    with pytest.raises(TrtBuildError, match="timing broke"):
        api.bench(model)
    assert sorted(p.name for p in models.iterdir()) == ["m.onnx", "notes.txt"]


def test_a_failed_stage_removes_only_the_files_it_wrote(tmp_path):
    """In the run's own OUT, a failed stage's files go (nothing stale, nothing half-made),
    but a file another process put there meanwhile stays (issue 19, finding 4). The stages
    are fakes around files.write_text: our control flow under test."""
    from trtbuild import pipeline
    from trtbuild.config import build_settings
    from trtbuild.files import write_text
    from trtbuild.records import StageRecord

    out = tmp_path / "o"
    out.mkdir()
    ctx = pipeline.new_context(build_settings("demo"), out, "demo")

    def fails(ctx):
        write_text(out / "model.int8.onnx", "half a model")  # the stage's own, atomically
        (out / "theirs.txt").write_text("another process")   # not through trtbuild
        raise TrtBuildError("quantize broke")

    with pytest.raises(TrtBuildError, match="quantize broke"):
        pipeline.run_stages(ctx, [("first", lambda ctx: StageRecord()), ("quantize", fails)])
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json", "theirs.txt"]


def test_an_engine_that_fails_does_not_remove_the_engines_that_built(tmp_path, monkeypatch):
    """fp16 and int8 engines for sm_86 with real TensorRT-RTX builds, the int8 one failed by
    a fake failure wrapped around the real builder (our control flow under test): the fp16
    engine stays, report.json lists it and the failure, and the run fails with the
    builder's exit code. The failed stage removed the FP16 engine it had built (issue 19,
    finding 12)."""
    import json

    pytest.importorskip("tensorrt_rtx")
    from trtbuild.errors import MISSING_CAPABILITY
    from trtbuild.trt import builder

    real = builder.build

    def int8_fails(backend, onnx_path, arch, *args, **kwargs):
        if Path(onnx_path).name == "model.int8.onnx":
            raise TrtBuildError(f"{onnx_path}: fake build failure", MISSING_CAPABILITY)
        return real(backend, onnx_path, arch, *args, **kwargs)

    monkeypatch.setattr(builder, "build", int8_fails)
    calib = tmp_path / "calib"
    calib.mkdir()
    for k in range(4):
        np.save(calib / f"{k}.npy", np.random.default_rng(k).normal(size=(2, 4)).astype(np.float32))
    out = tmp_path / "o"
    with pytest.raises(TrtBuildError) as failed:
        api.build(str(_linear(tmp_path / "linear.onnx")), out, fp16=True, int8=True,
                  calib=str(calib), archs=("sm_86",), cache_dir=tmp_path / "c",
                  target="engine")
    assert failed.value.code == MISSING_CAPABILITY
    assert "int8@sm_86" in failed.value.message and "fake build failure" in failed.value.message
    assert (out / "engines" / "sm_86" / "model.fp16.engine").stat().st_size > 0
    assert not (out / "engines" / "sm_86" / "model.int8.engine").exists()
    report = json.loads((out / "report.json").read_text())
    build = next(s for s in report["stages"] if s["stage"] == "build")
    assert [(e["precision"], e["arch"]) for e in build["engines"]] == [("fp16", "sm_86")]
    assert [(f["precision"], f["code"]) for f in build["failed"]] == [("int8", 3)]
    assert report["status"] == "failed" and "int8@sm_86" in report["error"]
    page = (out / "report.html").read_text()
    engines = page.split('<section id="engines">', 1)[1].split("</section>", 1)[0]
    assert "model.fp16.engine" in engines and "FAILED: " in engines


def test_builder_out_of_memory_says_what_to_change():
    from trtbuild.config import EngineSettings
    from trtbuild.onnx.shapes import Profile
    from trtbuild.trt.builder import memory_hint

    s = EngineSettings(workspace_mb=4096, profiles=(
        Profile("x", (1, 3, 64, 64), (8, 3, 640, 640), (32, 3, 640, 640)),
        Profile("m", (1, 10), (1, 10), (1, 10))))
    hint = memory_hint("Error Code 2: OutOfMemory (Requested size was 2147777620 bytes.)", s)
    assert "--workspace (now 4096 MiB)" in hint and "x:32x3x640x640" in hint
    assert memory_hint("Error Code 4: Internal Error (no implementation)", s) == ""


def test_a_link_inside_out_is_refused_before_anything_is_removed(tmp_path):
    """A symbolic link planted inside --out (OUT/engines/sm_86 -> a user's folder) made the
    stale-artifact cleanup delete the user's model.fp16.engine there (issue 19, finding 11);
    now the build stops first with one line naming the link, and the user's files stay."""
    from conftest import run_cli

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "model.fp16.engine").write_bytes(b"the user's engine")
    out = tmp_path / "out"
    (out / "engines").mkdir(parents=True)
    (out / "engines" / "sm_86").symlink_to(elsewhere, target_is_directory=True)
    proc = run_cli(_relu(tmp_path / "relu.onnx"), "--out", out, "--target", "onnx")
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "engines/sm_86: a symbolic link inside the output directory" in last, last
    assert (elsewhere / "model.fp16.engine").read_bytes() == b"the user's engine"
    (out / "engines" / "sm_86").unlink()
    (out / "report.json").symlink_to(elsewhere / "model.fp16.engine")
    proc = run_cli(_relu(tmp_path / "relu.onnx"), "--out", out, "--target", "onnx")
    assert proc.returncode == 2 and "report.json: a symbolic link" in proc.stderr


def test_a_release_refuses_a_link_anywhere_in_its_out(tmp_path):
    from conftest import run_cli
    from test_release import write_manifest

    manifest = write_manifest(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    out.mkdir()
    (out / "digits").symlink_to(elsewhere, target_is_directory=True)
    proc = run_cli("release", manifest, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "digits: a symbolic link inside the output directory" in proc.stderr
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep.txt"]
    assert not (out / "release.json").exists()
