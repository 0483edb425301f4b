"""The release driver: a manifest's jobs on a local pool of worker processes (or Ray tasks,
ray_backend.py), journaled.

Per model one prepare job (the shared CPU stages, once) and one engine job per (precision,
arch), which starts after its model's prepare job. Workers are spawned processes
(`--workers`, default min(cores, jobs to run)); a job does not start while the memory free
(/proc/meminfo MemAvailable) is below the largest peak RSS a job has had so far, unless
nothing else runs. A failing job does not stop the others. release.json is rewritten
atomically after every job, and a rerun of the same command resumes from it. The backend is
a small seam (`Local` here, `ray_backend.RayTasks`: submit, wait, result, restart, kill,
close); the scheduling, the journal and resume are this module's whichever runs the jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import sys
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import GATE_FAILED, TrtBuildError
from ..files import ensure_dir, refuse_links, stale_temp_files
from . import jobs as worker
from . import journal as jn
from .html import write_html
from .jobs import died
from .manifest import Manifest, load

OnJob = Callable[[str, dict[str, Any]], None]
Notice = Callable[[str], None]
MAX_LISTED = 20


def default_out(manifest: Path) -> Path:
    return Path("trtbuild-out") / f"release-{Path(manifest).stem}"


def release(manifest: str | Path, out: str | Path | None = None,
            baseline: str | Path | None = None, workers: int | None = None,
            on_job: OnJob | None = None, notice: Notice | None = None,
            ray: str | None = None) -> dict[str, Any]:
    """Run (or resume) the release; returns release.json's content. `ray`: None for the
    local pool, "" to start a local Ray runtime, "HOST:PORT" to join a Ray cluster. Raises
    TrtBuildError: exit 2 for a bad manifest, baseline, journal or flags; 3 when Ray is not
    installed or its cluster cannot be reached; exit 1 listing every job that did not pass
    (its `record` is the journal)."""
    notice = notice or (lambda line: print(f"trtbuild: {line}", file=sys.stderr))
    m = load(manifest)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise TrtBuildError(f"--workers: {workers} must be >= 1")
    if workers is not None and ray is not None:
        raise TrtBuildError("--workers and --ray: give one (Ray schedules by its cluster's CPUs)")
    if ray is not None:
        from .ray_backend import import_ray

        import_ray(ray)  # without Ray: exit 3 before anything is written
    base = None
    if baseline is not None:
        baseline = Path(baseline)
        if not baseline.is_file():
            raise TrtBuildError(f"{baseline}: no such baseline release.json")
        base = jn.read(baseline, "baseline")
    _check_models(m, archs=ray is None)
    out = ensure_dir(Path(out) if out else default_out(m.path)).resolve()
    path = out / "release.json"
    models = ensure_dir(m.shared_dir).resolve() if m.shared_dir else out
    refuse_links(out, deep=True)
    if models != out:  # shared_dir: this release's model folders only
        refuse_links(models, tuple(e.name for e in m.models))
        for entry in m.models:
            refuse_links(models / entry.name, deep=True)
    with _locked(out):
        journal = _resume(m, path, notice)
        _sweep_temp_files(out)
        if models != out:  # only this release's directories: others may share shared_dir
            for entry in m.models:
                _sweep_temp_files(models / entry.name)
        todo = [k for k, j in journal.jobs.items() if not j.reused]
        if ray is not None:
            from .ray_backend import RayTasks

            backend: Any = RayTasks(ray, m)
        else:
            backend = Local(workers or max(1, min(_cores(), len(todo))))
        try:  # the backend (a Ray runtime too) is shut down whatever happens from here on
            journal.workers, journal.backend = backend.slots, backend.name
            journal.baseline = str(baseline) if baseline else None
            journal.finished, journal.started = None, jn.now()
            jn.save(path, journal)
            start = time.perf_counter()
            _Pool(m, models, path, journal, backend, on_job).run(todo)
        finally:
            backend.close()
        journal.wall_seconds = round(time.perf_counter() - start, 3)
        if base is not None:
            jn.compare(journal, base)
        journal.finished = jn.now()
        jn.save(path, journal)
        write_html(out / "release.html", journal)
    message = failure_message(journal, path)
    if message:
        raise TrtBuildError(message, GATE_FAILED, journal.to_json())
    return journal.to_json()


def _check_models(m: Manifest, archs: bool) -> None:
    """What a plain build checks up front, for every model before any worker starts: its
    SRC can be found (exit 2) and, with `archs` (the local pool: the workers share this
    machine's builder; Ray workers may have another), its builder targets every arch
    (exit 3). A release used to learn either from each job's failure."""
    from ..onnx import source
    from ..pipeline import check_targets

    for entry in m.models:
        try:
            source.check_findable(source.parse(entry.src))
            if archs:
                check_targets(entry.settings)
        except TrtBuildError as e:
            raise TrtBuildError(f"{m.path}: [models.{entry.name}] {e.message}", e.code)


def failure_message(journal: jn.Journal, path: Path) -> str | None:
    """'N of M release jobs did not pass (PATH):' and a line per job, at most MAX_LISTED,
    then 'and K more'; None when every job passed."""
    failed = jn.failures(journal)
    if not failed:
        return None
    listed = failed[:MAX_LISTED] + ([f"and {len(failed) - MAX_LISTED} more"]
                                     if len(failed) > MAX_LISTED else [])
    return "\n".join([f"{len(failed)} of {len(journal.jobs)} release jobs did not pass "
                      f"({path}):", *(f"  {x}" for x in listed)])


def _resume(m: Manifest, path: Path, notice: Notice) -> jn.Journal:
    """The journal to go on with: the previous one's finished jobs whose files are still
    there are kept (reused); everything else starts over."""
    out = path.parent
    roots = (out, Path(m.shared_dir)) if m.shared_dir else (out,)  # where jobs write
    new = jn.fresh(m, out, 0, None)
    old = jn.read(path)
    if old is None:
        return new
    if old.manifest.get("sha256") != new.manifest["sha256"]:
        notice(f"{m.path} changed since {path} was written (sha256 differs): rebuilding "
               "every job")
        return new
    redo = set()  # models whose prepare job runs again: that clears their engines too
    for key, j in new.jobs.items():
        before = old.jobs.get(key)
        if (j.model not in redo and before is not None and before.status == "ok"
                and (before.model, before.kind, before.precision, before.arch)
                == (j.model, j.kind, j.precision, j.arch) and _files_there(before, roots)):
            before.reused = True
            new.jobs[key] = before
        elif j.kind == "prepare":
            redo.add(j.model)
    return new


def _files_there(job: jn.Job, roots: tuple[Path, ...]) -> bool:
    """The job's output files are inside OUT or the shared_dir (`roots`; symlinks
    resolved) and hash to the sha256 the job recorded: an engine overwritten with other
    bytes of its size, two engines swapped, a model.int8.onnx replaced or a journal pointing
    elsewhere all mean the job is redone. False for a record of another shape (a
    hand-edited journal)."""
    from ..files import file_sha256

    record = job.record
    if job.seconds is None:
        return False
    if isinstance(record, jn.PrepareSummary):
        wanted = [(p, record.sha256.get(k)) for k, p in record.artifacts.items() if p]
    elif isinstance(record, jn.EngineJobSummary) and record.engine is not None:
        wanted = [(record.engine.path, record.engine.sha256)]
    else:
        return False
    inside = [r.resolve() for r in roots]
    try:
        return bool(wanted) and all(
            h is not None and any(Path(p).resolve().is_relative_to(r) for r in inside)
            and Path(p).is_file() and file_sha256(Path(p)) == h for p, h in wanted)
    except OSError:
        return False


class Local:
    """The local backend: spawned worker processes (they die with the driver)."""

    name = "pool"
    local_memory = True  # jobs wait for this machine's free memory (Ray asks its scheduler)

    def __init__(self, workers: int):
        self.slots = workers
        self.pool = self._new()

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.slots, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=worker.worker_init, initargs=(os.getpid(),))

    def submit(self, fn: Callable, args: tuple, memory_mb: float) -> Future:
        try:
            return self.pool.submit(fn, *args)
        except BrokenProcessPool as e:  # a worker died since the last wait: lost like its jobs
            lost: Future = Future()
            lost.set_exception(e)
            return lost

    def wait(self, running: list[Future]) -> set[Future]:
        return wait(running, return_when=FIRST_COMPLETED)[0]

    def result(self, future: Future, timeout: float | None = None) -> dict[str, Any] | None:
        """The job's result; None when its worker died (the pool broke)."""
        try:
            return future.result(timeout)
        except BrokenProcessPool:
            return None
        except Exception as e:  # noqa: BLE001 - e.g. a result that cannot be pickled
            return died(f"internal error: {type(e).__name__}: {e}")

    def restart(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.pool = self._new()

    def kill(self) -> None:
        for process in list((getattr(self.pool, "_processes", None) or {}).values()):
            process.kill()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Pool:
    def __init__(self, m: Manifest, models: Path, path: Path, journal: jn.Journal,
                 backend: Any, on_job: OnJob | None):
        # models: where each model's directory goes (OUT, or the manifest's shared_dir)
        self.m, self.models, self.path, self.journal = m, models, path, journal
        self.backend, self.workers, self.on_job = backend, backend.slots, on_job
        self.html = path.parent / "release.html"
        self.jobs = journal.jobs
        self.peak_mb = max((j.peak_rss_mb or 0 for j in self.jobs.values()), default=0)
        self.memory_waits = journal.memory_waits = 0

    def run(self, todo: list[str]) -> None:
        ready = deque(k for k in todo if self.jobs[k].kind == "prepare"
                      or self.jobs[jn.prepare_key(self.jobs[k].model)].status == "ok")
        waiting = [k for k in todo if k not in ready]
        running: dict[Any, str] = {}  # the backend's handle (a Future, a Ray ref) -> job
        for key, j in self.jobs.items():
            if j.reused and self.on_job:
                self.on_job(key, j)
        if not todo:
            return
        suspects: set[str] = set()  # in flight when a worker died: each reruns alone, once
        pool = self.backend
        try:
            while ready or running:
                while ready and len(running) < self.workers and self._memory_ok(running):
                    key = self._next(ready, running, suspects)
                    if key is None:
                        break
                    ready.remove(key)
                    running[pool.submit(*self._call(key), self.peak_mb)] = key
                results: dict[str, dict | None] = {}  # None: lost with a dead worker
                for future in pool.wait(list(running)):
                    results[running.pop(future)] = pool.result(future)
                if any(r is None for r in results.values()):  # the pool is unusable now
                    for future, key in running.items():
                        results[key] = pool.result(future, timeout=30)
                    running.clear()
                    pool.restart()
                lost = [k for k, r in results.items() if r is None]
                for key, result in results.items():
                    if result is None and len(lost) > 1 and key not in suspects:
                        suspects.add(key)  # which one killed the worker is not known yet
                        ready.appendleft(key)
                        continue
                    ready.extend(self._finish(key, result or died(
                        "its worker process died (killed, or crashed in a library)"), waiting))
        except BaseException:  # interrupted: stop the workers too (their temp files are swept
            pool.kill()  # by the next run; unfinished jobs stay pending in the journal)
            raise
        self.journal.memory_waits = self.memory_waits

    @staticmethod
    def _next(ready: deque, running: dict, suspects: set[str]) -> str | None:
        """The next job to start: a suspect only on an idle pool, and nothing beside it."""
        if any(k in suspects for k in running.values()):
            return None
        if not running:
            return next((k for k in ready if k in suspects), ready[0])
        return next((k for k in ready if k not in suspects), None)

    def _call(self, key: str) -> tuple[Callable, tuple]:
        j = self.jobs[key]
        entry = self.m.model(j.model)
        out = str(self.models / j.model)
        if j.kind == "prepare":
            return worker.prepare, (entry, out)
        prepared = self.jobs[jn.prepare_key(j.model)].record
        assert isinstance(prepared, jn.PrepareSummary)
        return worker.engine, (entry, out, j.precision, j.arch, prepared.artifacts)

    def _memory_ok(self, running: dict) -> bool:
        """Start a job only when what is free holds the largest job seen (or none runs)."""
        if not running or not self.peak_mb or not self.backend.local_memory:
            return True
        free = mem_available_mb()
        if free is None or free >= self.peak_mb:
            return True
        self.memory_waits += 1
        return False

    def _finish(self, key: str, result: dict[str, Any], waiting: list[str]) -> list[str]:
        """Record one job; returns the jobs it makes ready."""
        j = self.jobs[key] = self.jobs[key].finished(result)
        self.peak_mb = max(self.peak_mb, j.peak_rss_mb or 0)
        ready: list[str] = []
        mine: list[str] = []
        if isinstance(j.record, jn.PrepareSummary):
            mine = [k for k in waiting if self.jobs[k].model == j.model]
            for k in mine:
                waiting.remove(k)
            if j.status == "ok":
                ready = mine
            else:
                why = "prepare gate failed" if j.status == "gate_failed" else "prepare failed"
                measured = j.record.accuracy  # up to the stage that failed
                for k in mine:
                    skipped = self.jobs[k]
                    skipped.status, skipped.error = "skipped", f"skipped ({why})"
                    skipped.exit_code, skipped.seconds, skipped.reused = None, 0.0, False
                    skipped.record = jn.EngineJobSummary(
                        accuracy=measured.get(skipped.precision or ""))
        else:
            prepared = self.jobs[jn.prepare_key(j.model)].record
            assert isinstance(prepared, jn.PrepareSummary) and isinstance(j.record, jn.EngineJobSummary)
            j.record.accuracy = prepared.accuracy.get(j.precision or "")
            if j.precision == "int8":
                j.record.int8_mac_coverage = prepared.int8_mac_coverage
        jn.save(self.path, self.journal)
        write_html(self.html, self.journal)  # a view: at every job too
        if self.on_job:
            for k in [key, *(mine if j.kind == "prepare" and not ready else [])]:
                self.on_job(k, self.jobs[k])
        return ready


def mem_available_mb() -> float | None:
    """MemAvailable from /proc/meminfo in MiB (None where there is no such file)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One driver per output directory (the lock goes with the process, kill -9 included)."""
    with open(out / ".release.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrtBuildError(f"{out}: another trtbuild release is running in this directory")
        yield


def _sweep_temp_files(out: Path) -> None:
    """trtbuild's temp files (`*.trtbuild-tmp-PID`) that killed processes left anywhere
    under OUT."""
    for p in stale_temp_files(out, recursive=True):
        if p.is_file() and not p.is_symlink():
            p.unlink()
