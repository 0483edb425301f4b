"""The Ray backend of a release (`--ray` starts a local Ray runtime, `--ray ADDRESS` joins a
cluster): each job is a Ray task asking for 1 CPU and the memory of the largest job seen so
far; run.py's driver schedules, journals and resumes exactly as with the local pool.

Artifacts: without `[release] shared_dir`, a task runs in a scratch directory on its node
and returns its files' bytes; the driver writes them atomically into OUT/NAME/ (the paths
in the records and in report.json/.html rewritten to the driver's). An engine task gets its
model's prepared files from the driver through Ray's object store. With `shared_dir` (the
same path on every node, e.g. NFS) tasks write there directly and nothing is copied.

Every node must have trtbuild (and its builder) installed and read the manifest's input
paths (src, calib, val, scripts) at the same absolute paths. Calibration sets larger than
`calib_shard_samples` are sharded over Ray tasks (trtbuild.calib.merge).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import MISSING_CAPABILITY, TrtBuildError
from ..files import TMP_TAG, pid_alive, write_bytes
from . import jobs, reaper
from .jobs import died
from .manifest import Manifest

MIB = 1 << 20
BIG = 1 << 20  # shard arguments over this many bytes go to the object store once
SCRATCH = "trtbuild-ray-"  # + the worker's pid: a scratch directory in the node's temp dir


def import_ray(address: str = "") -> Any:
    """The ray module (exit 3 without it), set up to join `address` (token auth), which
    must answer (exit 3; 2 when it is no HOST:PORT)."""
    if address:
        _reachable(address)
    if address and "RAY_AUTH_MODE" not in os.environ and _token_saved():
        # `ray start` turns token authentication on and saves the token; ray.init() uses it
        # for a cluster it finds itself, but for an explicit address only with this set
        os.environ["RAY_AUTH_MODE"] = "token"
    try:
        import ray
    except ImportError:
        raise TrtBuildError("--ray needs Ray, an optional extra: pip install 'trtbuild[ray]'",
                            MISSING_CAPABILITY)
    return ray


def _reachable(address: str) -> None:
    """Something listens at HOST:PORT (Ray's client retries an address where nothing does
    for minutes). Raises TrtBuildError: 2 for no HOST:PORT, 3 when nothing answers."""
    import socket

    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise TrtBuildError(f"--ray {address}: expected HOST:PORT, the Ray head node's GCS "
                            "address (`ray start --head --port PORT`)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise TrtBuildError(f"--ray {address}: no Ray cluster answers there "
                            f"({e.strerror or type(e).__name__})", MISSING_CAPABILITY)


def _token_saved() -> bool:
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token"
    return bool(os.environ.get("RAY_AUTH_TOKEN")) or Path(path).is_file()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """File descriptor 2 to /dev/null: Ray's C++ client logs a line a second to it while it
    cannot reach a cluster; trtbuild reports the failure in one line."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class RayTasks:
    """run.py's backend seam (submit, wait, result, restart, kill, close) over Ray tasks."""

    local_memory = False  # Ray's scheduler holds tasks back by their memory request

    def __init__(self, address: str, m: Manifest):
        ray = self.ray = import_ray(address)
        self.name = f"ray {address}" if address else "ray (local)"
        self.shared, self.shard_samples = m.shared_dir is not None, m.calib_shard_samples
        terminate = signal.getsignal(signal.SIGTERM)
        # a local runtime's processes outlive a killed driver: the reaper ends them
        self.reaper = reaper.watch(os.getpid()) if not address else None
        try:  # "local": a new runtime even where RAY_ADDRESS or a running cluster is found
            with _quiet_stderr():
                ray.init(address=address or "local", include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ...
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
            reaper.stop(self.reaper)
            raise TrtBuildError(f"--ray {address or '(local)'}: cannot start or join Ray: {first}",
                                MISSING_CAPABILITY)
        finally:  # ray.init installs its own; SIGTERM must end the release as before
            signal.signal(signal.SIGTERM, terminate)
        self.slots = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.node_memory = max((n["Resources"].get("memory", 0) for n in ray.nodes()
                                if n.get("Alive")), default=0)
        self.task = ray.remote(run_job)
        self.running: dict[Any, tuple[Callable, str]] = {}
        self.objects: dict[tuple, Any] = {}  # (path, size, mtime) -> its bytes in the store

    def submit(self, fn: Callable, args: tuple, memory_mb: float) -> Any:
        out = args[1]
        inputs = self._inputs(args[-1]) if fn is jobs.engine and not self.shared else {}
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}  # a crash fails its job
        if memory_mb:
            options["memory"] = int(min(memory_mb * MIB, self.node_memory or math.inf))
        ref = self.task.options(**options).remote(fn, args, inputs, self.shared,
                                                  self.shard_samples)
        self.running[ref] = (fn, out)
        return ref

    def _inputs(self, artifacts: dict[str, str | None]) -> dict[str, Any]:
        """{name in the model directory: object ref} of its prepared files (and any ONNX
        external data beside them), each put in the object store once."""
        found = {}
        for text in filter(None, artifacts.values()):
            for p in (Path(text), Path(text + ".data")):
                if p.is_file():
                    st = p.stat()
                    key = (str(p), st.st_size, st.st_mtime_ns)
                    if key not in self.objects:
                        self.objects[key] = self.ray.put(p.read_bytes())
                    found[p.name] = self.objects[key]
        return found

    def wait(self, running: list[Any]) -> list[Any]:
        return self.ray.wait(running, num_returns=1)[0]

    def result(self, ref: Any, timeout: float | None = None) -> dict[str, Any]:
        """The job's record, its files written into the driver's model directory."""
        fn, out = self.running.pop(ref)
        exc = self.ray.exceptions
        try:
            job, files = self.ray.get(ref, timeout=timeout)
        except (exc.WorkerCrashedError, exc.NodeDiedError, exc.OutOfMemoryError) as e:
            return died(f"its Ray worker died ({type(e).__name__}: killed, out of memory, or "
                        "crashed in a library)")
        except Exception as e:  # noqa: BLE001 - recorded; the other jobs go on
            first = (str(e).strip().splitlines() or [""])[0][:300]
            return died(f"internal error: {type(e).__name__}: {first}")
        try:  # a failed write fails this job only, as in a pool worker
            if files:
                unpack(Path(out), files, fresh=fn is jobs.prepare)
        except (OSError, TrtBuildError) as e:
            failed = died(f"{out}: cannot write the job's files: {getattr(e, 'message', e)}")
            return {**failed, "exit_code": getattr(e, "code", failed["exit_code"])}
        return job

    def restart(self) -> None:
        pass  # a dead Ray worker fails its own task only

    def kill(self) -> None:
        for ref in self.running:
            try:
                self.ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or gone
                pass

    def close(self) -> None:
        try:
            self.ray.shutdown()
        finally:
            reaper.stop(self.reaper)


def unpack(out: Path, files: dict[str, bytes], fresh: bool) -> None:
    """Write a task's files into `out` atomically; a prepare job's first clears what an
    earlier run left there (as a local prepare job does)."""
    from ..files import ensure_dir
    from ..pipeline import clear_previous

    ensure_dir(out)
    if fresh:
        clear_previous(out)
    for rel, data in files.items():
        path = out / rel
        ensure_dir(path.parent)
        write_bytes(path, data)


# --- in the Ray worker ------------------------------------------------------------------

def run_job(fn: Callable, args: tuple, inputs: dict[str, Any], shared: bool,
            shard_samples: int) -> tuple[dict[str, Any], dict[str, bytes]]:
    """One release job in a Ray worker: (its result, {relative path: bytes} of the files it
    wrote, or {} when it wrote into a shared directory)."""
    from ..calib import merge

    jobs.quiet()
    with merge.sharding(ray_map, shard_samples):
        if shared:
            return fn(*args), {}
        return _in_scratch(fn, args, inputs)


def _in_scratch(fn: Callable, args: tuple, inputs: dict[str, Any]) -> tuple[dict, dict]:
    import ray

    entry, out, *rest = args
    _sweep_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH}{os.getpid()}-") as tmp:
        scratch = Path(tmp) / Path(out).name
        scratch.mkdir()
        for name, data in zip(inputs, ray.get(list(inputs.values()))):
            write_bytes(scratch / name, data)
        job = fn(entry, str(scratch), *_swap(rest, out, str(scratch)))
        files = {}
        for p in sorted(scratch.rglob("*")):
            rel = str(p.relative_to(scratch))
            if p.is_file() and rel not in inputs and TMP_TAG not in p.name:
                files[rel] = _moved(p, str(scratch), out)
        return _swap(job, str(scratch), out), files


def _sweep_scratch() -> None:
    """Remove the scratch directories of Ray workers that are gone: a worker killed mid-job
    (with its driver, or cancelled) never ran TemporaryDirectory's cleanup."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH}*-*"):
        pid = folder.name[len(SCRATCH):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)) and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)


def _moved(path: Path, old: str, new: str) -> bytes:
    """The file's bytes; a JSON record with the paths under `old` naming `new` instead,
    rewritten value by value (_swap), and report.html rendered again from its report.json
    so rewritten: the page is a view of the record, never edited as text."""
    import json

    from ..report import dumps
    from ..report_html import html_path, render

    data = path.read_bytes()
    record = path.with_suffix(".json")  # a page's record: same stem (report_html.html_path)
    if path.suffix not in (".json", ".html") or html_path(record) is None:
        return data
    try:
        swapped = _swap(json.loads(record.read_bytes()), old, new)
    except (OSError, ValueError):
        return data
    return (render(swapped) if path.suffix == ".html" else dumps(swapped) + "\n").encode()


def _swap(value: Any, old: str, new: str) -> Any:
    """`value` with every path in directory `old` (or under it) moved to `new`, also where a
    longer string names one (an error line); `old` inside another path is left alone."""
    if isinstance(value, str):
        return re.sub(rf"(?<![^\s'\"(=]){re.escape(old)}(?![^/\s'\":),])", lambda _: new, value)
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_swap(v, old, new) for v in value)
    return value


def ray_map(fn: Callable, args: list[tuple]) -> list[Any]:
    """calib.merge's map over Ray tasks (from inside a job's task: a task blocked in
    ray.get lends its CPU to the shards)."""
    import ray

    remote = ray.remote(num_cpus=1, max_retries=0)(fn)
    stored: dict[int, Any] = {}

    def put(a: Any) -> Any:  # the model's bytes: once in the store, not once per shard
        if isinstance(a, bytes) and len(a) > BIG:
            if id(a) not in stored:
                stored[id(a)] = ray.put(a)
            return stored[id(a)]
        return a

    return ray.get([remote.remote(*map(put, a)) for a in args])
