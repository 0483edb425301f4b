"""`trtbuild release` (#11 parts 2, 3, 5, 6): real TensorRT-RTX builds of a 2-model manifest
(the digits demo + a tiny ONNX model) x fp16/int8 x sm_86/sm_89 on 2 worker processes;
resume, kill -9 of the driver, a corrupt journal, a failing gate, the baseline comparison;
and the issue's 3-model manifest (digits, a torchvision model, PP-OCR's classifier)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import REPO, SESSION_CACHE, TRTBUILD, run_cli

DATA = REPO / "trtbuild" / "demo" / "data"
EXAMPLE = REPO / "examples" / "release" / "manifest.toml"
PREPARE_STAGES = {"digits": ["export", "clean", "fp16", "calibrate", "quantize", "validate"],
                  "tiny": ["export", "clean", "fp16", "calibrate", "quantize", "sensitivity",
                           "validate"]}
ENGINE_KEYS = [f"{m}/{p}/{a}" for m in ("digits", "tiny") for p in ("fp16", "int8")
               for a in ("sm_86", "sm_89")]
ALL_KEYS = sorted(ENGINE_KEYS + ["digits/prepare", "tiny/prepare"])


# the defaults and the digits demo's table, shared by the test manifests
DIGITS_MANIFEST = f"""\
[defaults]
precisions = ["fp16", "int8"]
archs = ["sm_86", "sm_89"]

[models.digits]
src = "trtbuild.demo.digits:digits_cnn"
calib = "{DATA / 'calib'}"
val = "{DATA / 'val'}"
gates = ["cosine_mean>=0.99"]
"""


def tiny_model(folder: Path) -> Path:
    """x[N,8] -> MatMul -> Add -> Relu -> MatMul -> y[N,4], with .npy calib and val data."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((16, 4)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("Add", ["h", "b1"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "tiny.onnx")
    for name, seed in (("calib", 1), ("val", 2)):
        (folder / name).mkdir(exist_ok=True)
        for i in range(4):
            np.save(folder / name / f"{i}.npy", np.random.default_rng(seed * 10 + i)
                    .standard_normal((16, 8)).astype(np.float32))
    return folder / "tiny.onnx"


def write_manifest(folder: Path, tiny_gates: str = "") -> Path:
    tiny_model(folder / "tiny")
    path = folder / "release.toml"
    path.write_text(f"""\
{DIGITS_MANIFEST}
[models.tiny]
src = "tiny/tiny.onnx"
calib = "tiny/calib"
val = "tiny/val"
accuracy_target = "cosine_mean>=0.99"
{tiny_gates}
""")
    return path


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": SESSION_CACHE}


def journal(out: Path) -> dict:
    return json.loads((out / "release.json").read_text())


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if "trtbuild-tmp-" in p.name]


def kill_9_when(args: list, ready: Callable[[], bool], seconds: float = 120) -> dict[int, int]:
    """Run `trtbuild release ARGS` and kill -9 it once `ready()` holds (or it ended, or
    `seconds` passed). Returns its descendants just before the kill ({pid: start time})."""
    from trtbuild.release.reaper import descendants

    driver = subprocess.Popen([*TRTBUILD, "release", *map(str, args)], env=env(),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + seconds
    found: dict[int, int] = {}
    try:
        while time.monotonic() < deadline and driver.poll() is None and not ready():
            time.sleep(0.01)
        found = descendants(driver.pid)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    return found


def alive(processes: dict[int, int], seconds: float) -> list[str]:
    """The command lines of `processes` ({pid: start time}) still alive after up to
    `seconds`."""
    from trtbuild.release.reaper import proc_stat

    def left() -> list[int]:
        return [p for p, start in processes.items() if (proc_stat(p) or (0, None))[1] == start]
    deadline = time.monotonic() + seconds
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    names = []
    for p in left():
        try:
            names.append(Path(f"/proc/{p}/cmdline").read_text().replace("\0", " ")[:80])
        except OSError:
            pass
    return names


def a_job(out: Path, holds: Callable[[dict], bool]) -> bool:
    """Whether out/release.json exists and `holds` for one of its jobs."""
    path = out / "release.json"
    return path.is_file() and any(holds(j) for j in json.loads(path.read_text())["jobs"].values())


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict, float]:
    """(manifest, out, release.json, seconds) of one uninterrupted release."""
    folder = tmp_path_factory.mktemp("release")
    manifest, out = write_manifest(folder), folder / "out"
    start = time.perf_counter()
    proc = run_cli("release", manifest, "--out", out, "--workers", "2")
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return manifest, out, journal(out), seconds


def test_release_builds_each_engine_from_stages_run_once(first: tuple) -> None:
    manifest, out, data, _ = first
    assert sorted(data["jobs"]) == ALL_KEYS
    assert all(j["status"] == "ok" and not j["reused"] for j in data["jobs"].values())
    assert data["workers"] == 2 and data["totals"]["ok"] == 10 and data["totals"]["engines"] == 8
    for model in ("digits", "tiny"):
        # the CPU stages ran once per model: one report, each stage once, no engine stage
        report = json.loads((out / model / "report.json").read_text())
        assert [s["stage"] for s in report["stages"]] == PREPARE_STAGES[model]
        prep = data["jobs"][f"{model}/prepare"]
        assert [s for s, _ in prep["record"]["stages"]] == PREPARE_STAGES[model]
        assert prep["peak_rss_mb"] > 0
        assert set(prep["record"]["accuracy"]) == {"fp16", "int8"}
    for key in ENGINE_KEYS:
        j = data["jobs"][key]
        model, precision, arch = key.split("/")
        engine = j["record"]["engine"]
        path = out / model / "engines" / arch / f"model.{precision}.engine"
        assert Path(engine["path"]) == path.resolve() and path.stat().st_size == engine["bytes"]
        assert [s for s, _ in j["record"]["stages"]] == ["build", "validate_engines"]
        assert j["record"]["accuracy"]["cosine_mean"] > 0.9 and j["peak_rss_mb"] > 0
        if key.startswith("tiny/int8/"):  # from the sensitivity record
            assert 0 < j["record"]["int8_mac_coverage"] <= 1
    assert data["manifest"]["path"] == str(manifest.resolve())
    html = (out / "release.html").read_text()
    assert "<script" not in html and html.count("<tr><td>") == 8
    assert "Model digits" in html and "not measured" in html and "every job passed" in html
    assert html.count("%</td>") == 2  # the INT8 MAC coverage of tiny's two int8 engines


def test_engine_cache_key_is_a_plain_runs(first: tuple, tmp_path: Path) -> None:
    """A plain `trtbuild` run of the same model and settings gets every engine from the cache
    the release filled (the same cache key)."""
    _, out, data, _ = first
    proc = run_cli("trtbuild.demo.digits:digits_cnn", "--out", tmp_path / "plain", "--fp16",
                   "--int8", "--calib", DATA / "calib", "--val", DATA / "val", "--arch",
                   "sm_86,sm_89", "--json")
    assert proc.returncode == 0, proc.stderr
    build = next(s for s in json.loads(proc.stdout)["stages"] if s["stage"] == "build")
    assert build["cache_hits"] == 4
    keys = {f"digits/{e['precision']}/{e['arch']}": e["key"] for e in build["engines"]}
    assert keys == {k: data["jobs"][k]["record"]["engine"]["key"] for k in keys}


def test_rerun_redoes_nothing(first: tuple) -> None:
    manifest, out, data, seconds = first
    start = time.perf_counter()
    proc = run_cli("release", manifest, "--out", out, "--workers", "2")
    rerun = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    again = journal(out)
    assert all(j["reused"] for j in again["jobs"].values())
    assert proc.stdout.count("done by an earlier run") == 11  # 10 jobs + the totals line
    assert rerun < seconds / 2, (rerun, seconds)
    strip = lambda d: {k: {**j, "reused": None} for k, j in d["jobs"].items()}  # noqa: E731
    assert strip(again) == strip(data)


def test_resume_rehashes_every_file_it_reuses(first: tuple, tmp_path: Path) -> None:
    """Resume reuses a job only while its files are inside OUT and hash to what it recorded:
    an engine overwritten with random bytes of its size, a garbage model.int8.onnx (its
    model's prepare job and engines run again), and a journal entry pointing at an identical
    copy outside OUT are all redone; the rest is reused. (At 2daa95f all were 'ok, done by
    an earlier run'.)"""
    from trtbuild.files import file_sha256

    manifest, out, data, _ = first
    jobs = data["jobs"]
    forged = out / "tiny" / "engines" / "sm_86" / "model.fp16.engine"
    assert Path(jobs["tiny/fp16/sm_86"]["record"]["engine"]["path"]) == forged.resolve()
    forged.write_bytes(np.random.default_rng(0).bytes(forged.stat().st_size))
    (out / "digits" / "model.int8.onnx").write_bytes(b"not a model")
    outside = tmp_path / "elsewhere.engine"
    moved = jobs["tiny/int8/sm_89"]["record"]["engine"]["path"]
    outside.write_bytes(Path(moved).read_bytes())  # same bytes, same sha256
    edited = json.loads((out / "release.json").read_text())
    edited["jobs"]["tiny/int8/sm_89"]["record"]["engine"]["path"] = str(outside)
    (out / "release.json").write_text(json.dumps(edited))
    proc = run_cli("release", manifest, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    again = journal(out)
    redone = {k for k, j in again["jobs"].items() if not j["reused"]}
    assert redone == {"digits/prepare", "tiny/fp16/sm_86", "tiny/int8/sm_89",
                      *(k for k in ENGINE_KEYS if k.startswith("digits/"))}, redone
    for key in ENGINE_KEYS:
        engine = again["jobs"][key]["record"]["engine"]
        assert Path(engine["path"]).resolve().is_relative_to(out.resolve())
        assert file_sha256(Path(engine["path"])) == engine["sha256"]


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_kill_9_then_resume(first: tuple, tmp_path: Path) -> None:
    manifest, _, data, _ = first
    out = tmp_path / "out"
    started = kill_9_when([manifest, "--out", out, "--workers", "2"],
                          lambda: a_job(out, lambda j: j["status"] != "pending"))
    killed = journal(out)
    finished = [k for k, j in killed["jobs"].items() if j["status"] == "ok"]
    assert finished and len(finished) < len(ALL_KEYS)
    # the workers die with the driver (PR_SET_PDEATHSIG), multiprocessing's resource
    # tracker when its pipe from the driver closes (issue 19, finding 11)
    assert len(started) >= 2 and alive(started, 10) == []
    proc = run_cli("release", manifest, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    resumed = journal(out)
    assert sorted(resumed["jobs"]) == ALL_KEYS
    assert all(j["status"] == "ok" for j in resumed["jobs"].values())
    assert {k for k, j in resumed["jobs"].items() if j["reused"]} >= set(finished)
    assert not temp_files(out)
    for key in ENGINE_KEYS:  # the same engines as the uninterrupted run
        assert (resumed["jobs"][key]["record"]["engine"]["key"]
                == data["jobs"][key]["record"]["engine"]["key"])


def test_kill_9_mid_prepare_then_resume(tmp_path: Path) -> None:
    """Killed while a prepare job writes its artifacts (nothing journaled as done yet)."""
    tiny_model(tmp_path / "tiny")
    manifest = tmp_path / "m.toml"
    manifest.write_text('[models.tiny]\nsrc = "tiny/tiny.onnx"\nprecisions = ["fp16", "int8"]\n'
                        'archs = ["sm_86"]\ncalib = "tiny/calib"\nval = "tiny/val"\n')
    out = tmp_path / "out"
    started = kill_9_when([manifest, "--out", out], (out / "tiny" / "model.onnx").exists)
    assert all(j["status"] == "pending" for j in journal(out)["jobs"].values())
    assert started and alive(started, 10) == []
    proc = run_cli("release", manifest, "--out", out)
    assert proc.returncode == 0, proc.stderr
    jobs = journal(out)["jobs"]
    assert sorted(jobs) == ["tiny/fp16/sm_86", "tiny/int8/sm_86", "tiny/prepare"]
    assert all(j["status"] == "ok" and not j["reused"] for j in jobs.values())
    report = json.loads((out / "tiny" / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == PREPARE_STAGES["digits"]
    assert not temp_files(out)


def test_corrupt_journal_is_one_line_exit_2(first: tuple, tmp_path: Path) -> None:
    manifest = first[0]
    out = tmp_path / "out"
    out.mkdir()
    (out / "release.json").write_text('{"jobs": {')
    proc = run_cli("release", manifest, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"{out / 'release.json'}: corrupt release journal" in proc.stderr
    assert "delete it" in proc.stderr
    assert not (out / "digits").exists()


def test_bad_manifest_and_baseline_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[models.x]\nsrc = "nope.onnx"\nprecisions = ["fp8"]\n')
    proc = run_cli("release", bad)
    assert proc.returncode == 2 and "problem" in proc.stderr
    proc = run_cli("release", EXAMPLE, "--baseline", tmp_path / "missing.json",
                   "--out", tmp_path / "o")
    assert proc.returncode == 2 and "no such baseline release.json" in proc.stderr


def test_failing_gate_among_passing_models_with_baseline(first: tuple, tmp_path: Path) -> None:
    _, old_out, old, _ = first
    manifest = write_manifest(tmp_path, tiny_gates='gates = ["cosine_mean>=1.01"]')
    out = tmp_path / "out"
    proc = run_cli("release", manifest, "--out", out, "--baseline", old_out / "release.json",
                   "--json")
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    jobs = data["jobs"]
    assert jobs["tiny/prepare"]["status"] == "gate_failed"
    assert "cosine_mean" in jobs["tiny/prepare"]["error"]
    assert jobs["tiny/prepare"]["exit_code"] == 1
    assert all(jobs[k]["status"] == "skipped" and jobs[k]["error"] == "skipped (prepare gate "
               "failed)" for k in ENGINE_KEYS if k.startswith("tiny/"))
    # what was measured before the gate stopped it: FP16 accuracy, on its skipped engines
    assert jobs["tiny/fp16/sm_86"]["record"]["accuracy"]["gate_failures"]
    assert all(jobs[k]["status"] == "ok" for k in ["digits/prepare", *ENGINE_KEYS[:4]])
    err = proc.stderr.splitlines()
    listed = [ln for ln in err if ln.startswith("  tiny/")]
    assert "5 of 10 release jobs did not pass" in proc.stderr and len(listed) >= 5
    # the baseline: same digits engines (cache hits), so no change in size or accuracy
    for key in ENGINE_KEYS[:4]:
        vs = jobs[key]["vs_baseline"]
        assert vs["engine_bytes"] == old["jobs"][key]["record"]["engine"]["bytes"]
        assert vs["engine_bytes_change"] == 0 and vs["latency"] == "not measured"
        assert vs["cosine_mean_change"] == pytest.approx(0.0, abs=1e-9)
    html = (out / "release.html").read_text()
    assert "Failures (5)" in html and "+0 B" in html and "gate_failed" in html


@pytest.mark.slow  # about 8-10 s on 2 cores
def test_changed_manifest_rebuilds_and_the_example_runs(tmp_path: Path) -> None:
    """The README's example manifest (examples/release/), without its torchvision model."""
    text = EXAMPLE.read_text()
    assert text in (REPO / "README.md").read_text()  # the README shows this very file
    folder = tmp_path / "examples" / "release"
    folder.mkdir(parents=True)
    (tmp_path / "trtbuild").symlink_to(REPO / "trtbuild")  # its ../../trtbuild/demo/data
    manifest = folder / "manifest.toml"
    manifest.write_text(text.split("\n[models.resnet18]")[0].rsplit("\n#", 1)[0] + "\n")
    proc = run_cli("release", manifest, "--workers", "2", cwd=tmp_path)
    out = tmp_path / "trtbuild-out" / "release-manifest"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(journal(out)["jobs"]) == ["digits/fp16/sm_86", "digits/fp16/sm_89",
                                            "digits/int8/sm_86", "digits/int8/sm_89",
                                            "digits/prepare"]
    manifest.write_text(manifest.read_text() + "# edited\n")
    proc = run_cli("release", manifest, "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    changed = [ln for ln in proc.stderr.splitlines() if "changed since" in ln]
    assert len(changed) == 1 and "rebuilding every job" in changed[0]
    assert not any(j["reused"] for j in journal(out)["jobs"].values())


def test_memory_bound_holds_jobs_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With less free memory than a job's peak RSS, no second job starts beside a running
    one (the API, in this process, with MemAvailable faked to 1 MB)."""
    from trtbuild.api import release
    from trtbuild.release import run

    tiny_model(tmp_path / "tiny")
    manifest = tmp_path / "m.toml"
    manifest.write_text('[models.tiny]\nsrc = "tiny/tiny.onnx"\nprecisions = ["fp32", "fp16"]\n'
                        'archs = ["sm_86"]\nval = "tiny/val"\n')
    monkeypatch.setenv("XDG_CACHE_HOME", SESSION_CACHE)
    monkeypatch.setattr(run, "mem_available_mb", lambda: 1.0)
    seen = []
    data = release(manifest, tmp_path / "out", workers=2, on_job=lambda k, j: seen.append(k))
    assert seen == ["tiny/prepare", "tiny/fp32/sm_86", "tiny/fp16/sm_86"]
    assert data["workers"] == 2 and data["memory_waits"] >= 1
    a, b = (data["jobs"][k] for k in seen[1:])
    assert a["status"] == b["status"] == "ok" and a["ended"] <= b["started"]
    assert Path(a["record"]["engine"]["path"]).name == "model.fp32.engine"
    assert a["record"]["accuracy"] is None  # FP32 is the reference itself


CRASH = '''
import os, signal, torch

def net():
    os.kill(os.getpid(), signal.SIGKILL)  # a library crashing the worker process
'''


def test_a_worker_crash_fails_only_its_job(tmp_path: Path) -> None:
    tiny_model(tmp_path / "tiny")
    (tmp_path / "crash.py").write_text(CRASH)
    manifest = tmp_path / "m.toml"
    manifest.write_text('[defaults]\nprecisions = ["fp16"]\narchs = ["sm_86"]\n'
                        '[models.crash]\nsrc = "crash.py:net"\n'
                        '[models.tiny]\nsrc = "tiny/tiny.onnx"\nval = "tiny/val"\n')
    proc = run_cli("release", manifest, "--out", tmp_path / "out", "--workers", "2")
    assert proc.returncode == 1, proc.stderr
    jobs = journal(tmp_path / "out")["jobs"]
    assert jobs["crash/prepare"]["status"] == "failed"
    assert "worker process died" in jobs["crash/prepare"]["error"]
    assert jobs["crash/fp16/sm_86"]["error"] == "skipped (prepare failed)"
    assert jobs["tiny/prepare"]["status"] == jobs["tiny/fp16/sm_86"]["status"] == "ok"
    assert "2 of 4 release jobs did not pass" in proc.stderr


def test_a_job_submitted_to_a_pool_broken_meanwhile_is_lost_not_raised() -> None:
    """A worker died after the driver's last wait: the next submit finds the pool broken.
    That job is lost with the pool (and reruns), as the jobs in it are; the release goes on."""
    from trtbuild.release.run import Local

    backend = Local(1)
    try:
        crashed = backend.submit(os._exit, (1,), 0)
        assert backend.result(next(iter(backend.wait([crashed])))) is None  # the pool broke
        assert backend.result(backend.submit(os.getpid, (), 0)) is None
        backend.restart()
        assert backend.result(backend.submit(os.getpid, (), 0)) != os.getpid()
    finally:
        backend.close()


def test_failure_list_is_capped_at_20_lines() -> None:
    from trtbuild.release.journal import Job, Journal
    from trtbuild.release.run import failure_message

    jobs = {f"m{i}/prepare": Job(model=f"m{i}", kind="prepare", status="failed",
                                 error=f"boom {i}") for i in range(25)}
    jobs["ok/prepare"] = Job(model="ok", kind="prepare", status="ok")
    head, *lines = failure_message(Journal(manifest={}, jobs=jobs),
                                   Path("o/release.json")).splitlines()
    assert head == "25 of 26 release jobs did not pass (o/release.json):"
    assert lines[0] == "  m0/prepare: failed: boom 0" and len(lines) == 21
    assert lines[-1] == "  and 5 more"
    assert failure_message(Journal(manifest={}, jobs={"ok/prepare": jobs["ok/prepare"]}),
                           Path("x")) is None


def test_one_driver_per_output_directory(tmp_path: Path) -> None:
    import fcntl

    manifest, out = write_manifest(tmp_path), tmp_path / "out"
    out.mkdir()
    with open(out / ".release.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running driver holds it
        proc = run_cli("release", manifest, "--out", out)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"trtbuild: error: {out.resolve()}: another trtbuild "
                                   "release is running in this directory")
    assert not (out / "release.json").exists()


@pytest.mark.slow  # over ~12 s on 2 cores
def test_three_model_manifest_with_real_models(tmp_path: Path) -> None:
    """The issue's manifest: the digits demo, a torchvision model (random weights) and an
    ONNX model from the real-model corpus (PP-OCR's text-direction classifier, as rapidocr
    ships it) x fp16/int8 x sm_86/sm_89, real TensorRT-RTX builds on 2 workers."""
    from corpus import ENTRIES

    cls = next(e for e in ENTRIES if e.name == "ppocr_cls")
    if cls.locate() is None:
        pytest.skip("rapidocr-onnxruntime is not installed")
    for name, seed in (("calib", 1), ("val", 2)):
        cls.make(tmp_path / "cls" / name, 4, seed)
        (tmp_path / "mnv3" / name).mkdir(parents=True)
        for i in range(4):
            np.save(tmp_path / "mnv3" / name / f"{i}.npy", np.random.default_rng(seed * 10 + i)
                    .random((1, 3, 64, 64), dtype=np.float32))
    manifest = tmp_path / "release.toml"
    manifest.write_text(f"""\
{DIGITS_MANIFEST}
[models.mnv3]
src = "torchvision:mobilenet_v3_small"
inputs = ["input:1x3x64x64"]
calib = "mnv3/calib"
val = "mnv3/val"

[models.cls]
src = "{cls.locate()}"
shapes = ["x:1x3x48x192,1x3x48x192,1x3x48x192"]
calib = "cls/calib"
val = "cls/val"
gates = ["cosine_mean>=0.95"]
""")
    out = tmp_path / "out"
    proc = run_cli("release", manifest, "--out", out, "--workers", "2", "--json")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    jobs = journal(out)["jobs"]
    engines = [f"{m}/{p}/{a}" for m in ("digits", "mnv3", "cls") for p in ("fp16", "int8")
               for a in ("sm_86", "sm_89")]
    assert sorted(jobs) == sorted(engines + ["cls/prepare", "digits/prepare", "mnv3/prepare"])
    for key in engines:
        record = jobs[key]["record"]
        assert jobs[key]["status"] == "ok" and record["engine"]["bytes"] > 0, (key, record)
        assert Path(record["engine"]["path"]).is_file()


def test_a_baseline_of_another_shape_is_compared_field_by_field(tmp_path: Path) -> None:
    """A --baseline release.json whose jobs hold other shapes (a record that is a string,
    an engine entry that is a list) raised AttributeError after every job had run; read as
    typed records, such fields are absent, a job without its model or kind is new, and a
    file that is not a journal is one error line."""
    from trtbuild.errors import TrtBuildError
    from trtbuild.release import journal as jn

    def job(key, record, **more):
        return {"model": key[0], "kind": "engine", "status": "ok", "record": record, **more}

    ours = jn.Journal.from_json({"manifest": {}, "jobs": {k: job(k, {
        "engine": {"path": "e", "bytes": 100}, "accuracy": {"cosine_mean": 0.99}})
        for k in ("a/fp16/sm_86", "b/fp16/sm_86", "c/fp16/sm_86", "d/fp16/sm_86")}})
    odd = jn.Journal.from_json({"manifest": {}, "jobs": {
        "a/fp16/sm_86": job("a", "not a table"),
        "b/fp16/sm_86": job("b", {"engine": [1, 2], "accuracy": 5}),
        "c/fp16/sm_86": job("c", {"engine": {"path": "e", "bytes": 80},
                                  "accuracy": {"cosine_mean": 0.98}}),
        "d/fp16/sm_86": {"status": "ok", "record": {}}}})  # no model, no kind
    jn.compare(ours, odd)
    vs = {k: j.vs_baseline for k, j in ours.jobs.items()}
    assert vs["a/fp16/sm_86"] == vs["b/fp16/sm_86"] == {"latency": "not measured"}
    assert vs["c/fp16/sm_86"]["engine_bytes_change"] == 20
    assert abs(vs["c/fp16/sm_86"]["cosine_mean_change"] - 0.01) < 1e-9
    assert vs["d/fp16/sm_86"] == {"new": True}
    (tmp_path / "old.json").write_text(json.dumps({"manifest": {}, "jobs": ["not", "a"]}))
    with pytest.raises(TrtBuildError, match="not a trtbuild release.json"):
        jn.read(tmp_path / "old.json", "baseline")


@pytest.mark.parametrize("src,arch,code,says", [
    ("nosuchpkg.models:make", "sm_86", 2, "cannot import module 'nosuchpkg'"),
    ("torchvision:resnet19", "sm_86", 2, "no such torchvision model"),
    ("trtbuild.demo.digits:digits_cnn", "sm_99", 3, "sm_99")])
def test_a_model_that_cannot_build_stops_the_release_before_any_job(
        tmp_path: Path, src: str, arch: str, code: int, says: str) -> None:
    """A src that cannot be imported or an arch the builder cannot target passed the
    manifest check and failed in every job after the workers started; now the release
    stops first, as a plain build does, naming the model."""
    pytest.importorskip("tensorrt_rtx")
    path = tmp_path / "release.toml"
    path.write_text(f'[defaults]\nprecisions = ["fp16"]\narchs = ["{arch}"]\n'
                    f'[models.m]\nsrc = "{src}"\n')
    proc = run_cli("release", path, "--out", tmp_path / "out")
    assert proc.returncode == code, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert "[models.m]" in last and says in last, last
    assert not (tmp_path / "out").exists()


def test_a_worker_whose_driver_died_while_it_started_exits() -> None:
    """A worker spawned just before kill -9 of the driver asked for its death signal only
    after the driver was gone (it then never comes): worker_init sees another parent and
    exits; with its driver alive it goes on (review finding 11)."""
    code = ("import os, sys\nfrom trtbuild.release.jobs import worker_init\n"
            "worker_init(int(sys.argv[1]))\nprint('alive')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    alive = subprocess.run([sys.executable, "-c", code, str(os.getpid())], env=env,
                           capture_output=True, text=True, timeout=120)
    assert alive.returncode == 0 and alive.stdout.strip() == "alive", alive.stderr
    orphan = subprocess.run([sys.executable, "-c", code, str(os.getpid() + 10 ** 6)], env=env,
                            capture_output=True, text=True, timeout=120)
    assert orphan.returncode == 1 and orphan.stdout == ""


def test_a_journal_entry_missing_a_field_is_redone_not_a_crash(tmp_path: Path) -> None:
    """Issue 19, finding 11: a journal job without a field ended in KeyError (exit 4) on
    resume. Read as typed records: a job without model or kind is dropped, one without
    status or record reads as pending (both are redone), the others are kept as written."""
    from trtbuild.release import journal as jn

    path = tmp_path / "release.json"
    path.write_text(json.dumps({"manifest": {"path": "m.toml", "sha256": "x"}, "jobs": {
        "a/prepare": {"model": "a", "kind": "prepare", "status": "ok", "seconds": 1.0,
                      "record": {"artifacts": {"clean": "a/model.clean.onnx"},
                                 "sha256": {"clean": "00"}}},
        "a/fp16/sm_86": {"model": "a", "kind": "engine", "precision": "fp16"},
        "b/prepare": {"kind": "prepare", "status": "ok"}}}))
    journal = jn.read(path)
    assert sorted(journal.jobs) == ["a/fp16/sm_86", "a/prepare"]
    prep, engine = journal.jobs["a/prepare"], journal.jobs["a/fp16/sm_86"]
    assert prep.status == "ok" and prep.record.artifacts == {"clean": "a/model.clean.onnx"}
    assert engine.status == "pending" and engine.record.engine is None
    from trtbuild.release.run import _files_there

    assert not _files_there(prep, (tmp_path,))  # the file is not there: redone
