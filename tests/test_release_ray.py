"""`trtbuild release --ray` (#11 part 4) on a real Ray runtime on loopback: a local runtime
(`--ray`), a cluster started with `ray start --head --node-ip-address 127.0.0.1` (`--ray
127.0.0.1:PORT`, writing into a shared_dir), calibration sharded over Ray tasks equal bit
for bit to one process, and `--ray` without Ray installed. The digits demo at fp16 + int8
for one architecture: the smallest release with a prepare job, engines and calibration."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, SESSION_CACHE, run_cli
from test_release import a_job, alive, kill_9_when

pytest.importorskip("ray")
# a Ray runtime per test module and cluster: about a minute in all, left to the full run
pytestmark = pytest.mark.slow

DATA = REPO / "trtbuild" / "demo" / "data"
KEYS = ["digits/fp16/sm_86", "digits/int8/sm_86", "digits/prepare"]
RAY = Path(sys.executable).parent / "ray"


def write_manifest(folder: Path, release: str = "", defaults: str = "") -> Path:
    """256 calibration images in shards of 100: 3 calibration shards over Ray tasks."""
    path = folder / "release.toml"
    path.write_text(f"""\
[defaults]
precisions = ["fp16", "int8"]
archs = ["sm_86"]
{defaults}
[models.digits]
src = "trtbuild.demo.digits:digits_cnn"
calib = "{DATA / 'calib'}"
val = "{DATA / 'val'}"
calib_method = "auto"

[release]
calib_shard_samples = 100
{release}""")
    return path


def journal(out: Path) -> dict:
    return json.loads((out / "release.json").read_text())


def calibrate_record(model_dir: Path) -> dict:
    report = json.loads((model_dir / "report.json").read_text())
    return next(s for s in report["stages"] if s["stage"] == "calibrate")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(manifest, out) of the same release on the local pool: calibrated in one process."""
    folder = tmp_path_factory.mktemp("ray")
    manifest, out = write_manifest(folder), folder / "pool"
    proc = run_cli("release", manifest, "--out", out, "--workers", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return manifest, out


def test_local_ray_runtime_equals_the_pool_and_resumes(pool: tuple, tmp_path: Path) -> None:
    _, pool_out = pool
    out = tmp_path / "out"
    # --no-cache: the Ray run calibrates itself rather than reuse the pool run's stages
    manifest = write_manifest(tmp_path, defaults="cache = false\n")
    proc = run_cli("release", manifest, "--out", out, "--ray")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not [ln for ln in proc.stderr.splitlines() if "Traceback" in ln]
    data, before = journal(out), journal(pool_out)
    assert data["backend"] == "ray (local)" and data["workers"] >= 1
    assert sorted(data["jobs"]) == KEYS
    assert all(j["status"] == "ok" and not j["reused"] for j in data["jobs"].values())
    # the files came back to the driver's directory, their records name the driver's paths
    model = out / "digits"
    assert not list(out.rglob("*.trtbuild-tmp-*"))
    for path in (model / "report.json", model / "report.html", out / "release.json"):
        assert "trtbuild-ray-" not in path.read_text() and str(model) in path.read_text()
    for key in KEYS[:2]:
        engine = data["jobs"][key]["record"]["engine"]
        path = model / "engines" / "sm_86" / f"model.{key.split('/')[1]}.engine"
        assert Path(engine["path"]) == path.resolve()
        assert path.stat().st_size == engine["bytes"] > 0
        assert engine["key"] == before["jobs"][key]["record"]["engine"]["key"]  # a plain run's
    # calibration sharded over 3 Ray tasks: bit for bit the single process's thresholds
    ray_cal, one = calibrate_record(model), calibrate_record(pool_out / "digits")
    assert ray_cal["shards"] == 3 and "shards" not in one
    assert ray_cal["per_tensor"] == one["per_tensor"]  # float64 amaxes, exactly
    assert ray_cal["samples"] == one["samples"] == 256
    for name in ("calib.cache", "model.int8.onnx"):
        assert (model / name).read_bytes() == (pool_out / "digits" / name).read_bytes()
    # resume: the same journal semantics as the pool (the driver writes it)
    proc = run_cli("release", manifest, "--out", out, "--ray")
    assert proc.returncode == 0, proc.stderr
    assert all(j["reused"] for j in journal(out)["jobs"].values())


def test_kill_9_of_the_ray_driver_then_resume(pool: tuple, tmp_path: Path) -> None:
    """The driver writes the journal whichever backend runs the jobs: killed with -9 once a
    job is journaled, the rerun redoes only what was not finished. The local runtime's
    processes end with their driver (its raylet's agents stayed alive for good)."""
    manifest = pool[0]
    out = tmp_path / "out"
    started = kill_9_when([manifest, "--out", out, "--ray"],
                          lambda: a_job(out, lambda j: j["status"] == "ok"))
    assert len(started) >= 4  # the reaper, GCS, raylet, agents, workers
    assert alive(started, 10) == []
    done = {k for k, j in journal(out)["jobs"].items() if j["status"] == "ok"}
    assert done and len(done) < len(KEYS)
    proc = run_cli("release", manifest, "--out", out, "--ray")
    assert proc.returncode == 0, proc.stderr
    jobs = journal(out)["jobs"]
    assert all(j["status"] == "ok" for j in jobs.values())
    assert {k for k, j in jobs.items() if j["reused"]} == done
    assert not list(out.rglob("*.trtbuild-tmp-*"))
    assert not dead_scratch()  # the killed workers' scratch, removed by the rerun's jobs


def dead_scratch() -> list[Path]:
    """Scratch directories of Ray workers that are gone."""
    import tempfile

    from trtbuild.files import pid_alive

    found = Path(tempfile.gettempdir()).glob("trtbuild-ray-*-*")
    return [d for d in found if d.name.split("-")[2].isdigit()
            and not pid_alive(int(d.name.split("-")[2]))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster() -> str:
    """A one-node Ray cluster on loopback, as `ray start` makes one; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "XDG_CACHE_HOME": SESSION_CACHE}
    try:
        subprocess.run([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1",
                        "--port", str(port), "--num-cpus", "2", "--include-dashboard=false",
                        "--disable-usage-stats"], env=env, check=True, capture_output=True,
                       timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([str(RAY), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_joined_cluster_writes_into_the_shared_dir(pool: tuple, cluster: str,
                                                   tmp_path: Path) -> None:
    _, pool_out = pool
    shared = tmp_path / "nfs"
    manifest = write_manifest(tmp_path, f'shared_dir = "{shared}"\n')
    out = tmp_path / "out"
    # temp files of a killed writer: this release's are swept, another release's stay
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    mine = shared / "digits" / "old" / f"x.trtbuild-tmp-{gone}"
    theirs = shared / "other" / f"y.trtbuild-tmp-{gone}"
    for path in (mine, theirs):
        path.parent.mkdir(parents=True)
        path.write_text("half")
    proc = run_cli("release", manifest, "--out", out, "--ray", cluster)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not mine.exists() and theirs.exists()
    data = journal(out)
    assert data["backend"] == f"ray {cluster}" and data["workers"] == 2
    assert all(j["status"] == "ok" for j in data["jobs"].values())
    assert not (out / "digits").exists()  # the models' directories are in the shared one
    for key in KEYS[:2]:
        engine = data["jobs"][key]["record"]["engine"]
        assert Path(engine["path"]).parent == (shared / "digits" / "engines" / "sm_86").resolve()
        assert Path(engine["path"]).stat().st_size == engine["bytes"]
        assert engine["cache_hit"]  # the cluster's workers share this session's engine cache
    assert calibrate_record(shared / "digits")["per_tensor"] == \
        calibrate_record(pool_out / "digits")["per_tensor"]
    assert (out / "release.html").is_file()


def test_ray_not_installed_is_exit_3_in_one_line(tmp_path: Path) -> None:
    """The real CLI with `import ray` failing (a package in front of the real one raises
    ImportError, as a missing install does)."""
    blocker = tmp_path / "blocker" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    manifest, out = write_manifest(tmp_path), tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{blocker.parent}{os.pathsep}{REPO}",
           "XDG_CACHE_HOME": SESSION_CACHE}
    proc = subprocess.run([sys.executable, "-m", "trtbuild", "release", str(manifest), "--out",
                           str(out), "--ray"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 3
    assert proc.stderr.strip() == ("trtbuild: error: --ray needs Ray, an optional extra: pip "
                                   "install 'trtbuild[ray]'")
    assert not out.exists()


def test_bad_ray_flags_are_one_line(pool: tuple, tmp_path: Path) -> None:
    """Refused before Ray starts or anything is written: --workers with --ray (argparse,
    exit 2), an address that is no HOST:PORT (exit 2), one where nothing answers (exit 3)."""
    manifest = pool[0]
    out = tmp_path / "out"
    proc = run_cli("release", manifest, "--out", out, "--workers", "2", "--ray")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr
    for address in ("headnode", "headnode:0", "headnode:65536", "headnode:" + "9" * 20):
        proc = run_cli("release", manifest, "--out", out, "--ray", address)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"trtbuild: error: --ray {address}: expected HOST:PORT, "
                                       "the Ray head node's GCS address (`ray start --head "
                                       "--port PORT`)")
    proc = run_cli("release", manifest, "--out", out, "--ray", f"127.0.0.1:{free_port()}")
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1
    assert "no Ray cluster answers there (Connection refused)" in proc.stderr
    assert not out.exists()


def test_scratch_of_a_killed_worker_is_swept(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray worker killed mid-job (kill -9 of its driver) leaves its scratch directory: the
    next job on that node removes it; a live worker's, and other names, stay."""
    import tempfile

    from trtbuild.release import ray_backend

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead = tmp_path / f"trtbuild-ray-{gone}-abc" / "digits"
    live = tmp_path / f"trtbuild-ray-{os.getpid()}-def" / "digits"
    other = tmp_path / "trtbuild-ray-xyz" / "digits"
    for folder in (dead, live, other):
        folder.mkdir(parents=True)
        (folder / "model.clean.onnx").write_bytes(b"onnx")
    ray_backend._sweep_scratch()
    assert not dead.parent.exists() and live.is_dir() and other.is_dir()


def test_a_file_the_driver_cannot_write_fails_its_job_only(pool: tuple, tmp_path: Path) -> None:
    """The driver writes what a task returns: a file where the engines' directory goes fails
    those jobs (exit 1, each listed), as it would in a pool worker, not the release."""
    manifest = pool[0]
    out = tmp_path / "out"
    (out / "digits" / "engines").mkdir(parents=True)
    (out / "digits" / "engines" / "sm_86").write_text("in the way")
    proc = run_cli("release", manifest, "--out", out, "--ray")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    jobs = journal(out)["jobs"]
    assert jobs["digits/prepare"]["status"] == "ok"
    for key in KEYS[:2]:
        assert jobs[key]["status"] == "failed" and jobs[key]["exit_code"] == 2
        assert "output directory is an existing file" in jobs[key]["error"]
        assert key in proc.stderr


def test_paths_in_a_returned_record_name_the_drivers_directory() -> None:
    """A task's record names its scratch directory: every path in it is rewritten, also
    inside an error line; a path that merely contains the old one is not."""
    from trtbuild.release.ray_backend import _swap

    old, new = "/tmp/trtbuild-ray-7-x/digits", "/home/u/rel/digits"
    job = {"error": f"internal error: FileNotFoundError: [Errno 2] No such file: '{old}/a.onnx'",
           "record": {"report": f"{old}/report.json", "dir": old,
                      "stages": [["build", 1.0], f"{old}: nothing to quantize"]},
           "others": [f"/data{old}/x", f"{old}2/x", "int8"]}
    assert _swap(job, old, new) == {
        "error": f"internal error: FileNotFoundError: [Errno 2] No such file: '{new}/a.onnx'",
        "record": {"report": f"{new}/report.json", "dir": new,
                   "stages": [["build", 1.0], f"{new}: nothing to quantize"]},
        "others": [f"/data{old}/x", f"{old}2/x", "int8"]}


def test_the_ray_runtime_is_shut_down_when_the_driver_fails(pool: tuple, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process (the Python API): a failure once Ray runs (here: the journal cannot be
    written) still shuts the local runtime down."""
    import ray

    from trtbuild.release import journal as jn
    from trtbuild.release.run import release

    def full(path: Path, journal: dict) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(jn, "save", full)
    with pytest.raises(OSError, match="No space left"):
        release(pool[0], tmp_path / "out", ray="")
    assert not ray.is_initialized()
