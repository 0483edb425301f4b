"""OUT/release.json: the release's journal and its result, rewritten atomically after every
job (kill -9 at any moment leaves the previous or the next version, never a torn one).

    {"manifest": {"path", "sha256"}, "out", "workers", "backend" ("pool", "ray (local)",
     "ray HOST:PORT"), "baseline", "started", "updated", "finished", "totals": {...},
     "jobs": {"digits/prepare": {...}, "digits/int8/sm_86": {...}, ...}}

Each job: model, kind (prepare | engine), precision and arch (engines), status (pending | ok |
failed | gate_failed | skipped), error (one line), exit_code, seconds, peak_rss_mb, record
(the summary jobs.py made), reused (true: done by an earlier run of the same manifest and
its files still there), vs_baseline (engines, with --baseline).

The schema is typed (Journal, Job, PrepareSummary, EngineJobSummary, ...; records.Record):
the driver, release.html, the console and --baseline read release.json through it, and a
journal entry of another shape reads as absent fields, never as a crash.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrtBuildError
from ..files import file_sha256, write_text
from ..records import NULL, Record
from ..report import dumps
from ..version import __version__
from .manifest import Manifest

STATUSES = ("ok", "failed", "gate_failed", "skipped", "pending")


# --- the schema ----------------------------------------------------------------------------

@dataclass(kw_only=True)
class PrecisionAccuracy(Record):
    """One precision against FP32 (jobs.accuracy): the worst output's figures."""

    cosine_mean: float | None = None
    top1_agreement: float | None = None
    correlation: float | None = None
    scores: dict[str, float | None] = field(default_factory=dict)
    samples: int | None = None
    label_accuracy_delta_points: float | None = None
    gate_failures: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class EngineSummary(Record):
    NULL_IS_NAN = False

    path: str
    bytes: int | None = field(default=None, metadata=NULL)
    build_seconds: float | None = field(default=None, metadata=NULL)
    cache_hit: bool = False
    key: str | None = field(default=None, metadata=NULL)
    sha256: str | None = field(default=None, metadata=NULL)
    builder: str | None = field(default=None, metadata=NULL)
    builder_version: str | None = field(default=None, metadata=NULL)


@dataclass(kw_only=True)
class PrepareSummary(Record):
    """A prepare job's record: its report, accuracy per precision, the files engine jobs
    build from and their sha256 (what resume re-verifies)."""

    NULL_IS_NAN = False  # null: not measured (a model without INT8)

    report: str | None = None
    stages: list[list[Any]] = field(default_factory=list)
    accuracy: dict[str, PrecisionAccuracy] = field(default_factory=dict)
    int8_mac_coverage: float | None = field(default=None, metadata=NULL)
    artifacts: dict[str, str | None] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)
    summary_error: str | None = None


@dataclass(kw_only=True)
class EngineJobSummary(Record):
    """An engine job's record: the engine, its check where a GPU ran it, and its precision's
    CPU accuracy copied from the prepare job."""

    NULL_IS_NAN = False  # null: not measured (a model without INT8)

    stages: list[list[Any]] = field(default_factory=list)
    engine: EngineSummary | None = None
    engine_check: str | None = None
    engine_accuracy: PrecisionAccuracy | None = None
    accuracy: PrecisionAccuracy | None = field(default=None, metadata=NULL)  # null for FP32
    int8_mac_coverage: float | None = field(default=None, metadata=NULL)  # INT8: the search's
    summary_error: str | None = None


@dataclass(kw_only=True)
class Job(Record):
    NULL_IS_NAN = False

    model: str
    kind: str                      # prepare | engine
    precision: str | None = None
    arch: str | None = None
    status: str = "pending"        # STATUSES
    error: str | None = field(default=None, metadata=NULL)  # one line
    exit_code: int | None = field(default=None, metadata=NULL)
    seconds: float | None = field(default=None, metadata=NULL)
    peak_rss_mb: float | None = field(default=None, metadata=NULL)
    record: PrepareSummary | EngineJobSummary | None = None
    reused: bool = False           # done by an earlier run, its files verified
    started: float | None = None
    ended: float | None = None
    vs_baseline: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.record, self.summary_type()):
            self.record = self.summary_type()()

    def summary_type(self) -> type:
        return PrepareSummary if self.kind == "prepare" else EngineJobSummary

    @classmethod
    def from_json(cls, data: Any) -> Job | None:
        """The record's type follows `kind` (both spell accuracy differently)."""
        if not isinstance(data, dict):
            return None
        job = super().from_json({k: v for k, v in data.items() if k != "record"})
        if job is not None:
            job.record = job.summary_type().from_json(data.get("record")) or job.record
        return job

    def finished(self, result: dict[str, Any]) -> Job:
        """This job with a worker's result (jobs._measured's dict) applied."""
        return Job.from_json({**self.to_json(), **result, "reused": False}) or self


@dataclass(kw_only=True)
class Totals(Record):
    jobs: int = 0
    ok: int = 0
    failed: int = 0
    gate_failed: int = 0
    skipped: int = 0
    pending: int = 0
    reused: int = 0
    engines: int = 0
    engine_bytes: int = 0
    cache_hits: int = 0
    job_seconds: float = 0.0
    max_peak_rss_mb: float = 0.0


@dataclass(kw_only=True)
class Journal(Record):
    NULL_IS_NAN = False

    manifest: dict[str, Any]       # path, sha256
    jobs: dict[str, Job]
    trtbuild: str | None = None
    out: str | None = None
    workers: int = 0
    backend: str | None = None     # pool, ray (local), ray HOST:PORT
    baseline: str | None = field(default=None, metadata=NULL)
    started: str | None = None
    updated: str | None = None
    finished: str | None = field(default=None, metadata=NULL)
    totals: Totals = field(default_factory=Totals)
    wall_seconds: float | None = None
    memory_waits: int | None = None


# --- reading and writing -------------------------------------------------------------------

def prepare_key(model: str) -> str:
    return f"{model}/prepare"


def fresh(m: Manifest, out: Path, workers: int, baseline: Path | None) -> Journal:
    jobs: dict[str, Job] = {}
    for entry in m.models:
        jobs[prepare_key(entry.name)] = Job(model=entry.name, kind="prepare")
        for job in m.jobs():
            if job.model == entry.name:
                jobs[job.key] = Job(model=job.model, kind="engine", precision=job.precision,
                                    arch=job.arch)
    stamp = now()
    return Journal(trtbuild=__version__, manifest={"path": str(m.path),
                                                   "sha256": file_sha256(m.path)},
                   out=str(out), workers=workers, baseline=str(baseline) if baseline else None,
                   started=stamp, updated=stamp, jobs=jobs)


def read(path: Path, what: str = "release journal") -> Journal | None:
    """A release.json's content; None when there is none. Raises TrtBuildError (exit 2)
    when it is not one (bad JSON, another shape). A job entry that is not one (a field
    missing or of another type) is left out: resume redoes it."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrtBuildError(f"{path}: corrupt {what} ({_why(e)}); delete it to start over"
                            if what == "release journal" else
                            f"{path}: not a release.json ({_why(e)})")
    journal = Journal.from_json(data)
    if journal is None:
        raise TrtBuildError(f"{path}: corrupt {what} (not a trtbuild release.json); delete it "
                            "to start over" if what == "release journal" else
                            f"{path}: not a trtbuild release.json")
    return journal


def _why(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"bad JSON at line {e.lineno}, column {e.colno}"
    return getattr(e, "strerror", None) or type(e).__name__


def save(path: Path, journal: Journal) -> None:
    journal.updated = now()
    journal.totals = totals(journal)
    write_text(path, dumps(journal.to_json()) + "\n")


def totals(journal: Journal) -> Totals:
    jobs = list(journal.jobs.values())
    engines = [j.record.engine for j in jobs if j.kind == "engine" and j.status == "ok"
               and isinstance(j.record, EngineJobSummary) and j.record.engine is not None]
    count = {s: sum(j.status == s for j in jobs) for s in STATUSES}
    return Totals(jobs=len(jobs), **count, reused=sum(j.reused for j in jobs),
                  engines=len(engines), engine_bytes=sum(e.bytes or 0 for e in engines),
                  cache_hits=sum(e.cache_hit for e in engines),
                  job_seconds=round(sum(j.seconds or 0 for j in jobs if not j.reused), 3),
                  max_peak_rss_mb=max((j.peak_rss_mb or 0 for j in jobs), default=0))


def failures(journal: Journal) -> list[str]:
    """One line per job that did not pass, in job order."""
    return [f"{key}: {j.error}" if str(j.error).startswith(j.status)
            else f"{key}: {j.status}: {j.error}" for key, j in journal.jobs.items()
            if j.status != "ok"]


def compare(journal: Journal, baseline: Journal) -> None:
    """Each engine job's change against the same key in a previous release.json: engine
    size and accuracy (cosine_mean vs FP32); latency is not measured on a machine without
    a GPU. Sets job.vs_baseline."""
    for key, j in journal.jobs.items():
        if j.kind != "engine":
            continue
        old = baseline.jobs.get(key)
        if old is None or old.status != "ok" or old.kind != "engine":
            j.vs_baseline = {"new": True}
            continue
        new_r, old_r = j.record, old.record
        assert isinstance(new_r, EngineJobSummary) and isinstance(old_r, EngineJobSummary)
        cmp: dict[str, Any] = {"latency": "not measured"}
        new_b = new_r.engine.bytes if new_r.engine else None
        old_b = old_r.engine.bytes if old_r.engine else None
        if new_b is not None and old_b is not None:
            cmp.update(engine_bytes=old_b, engine_bytes_change=new_b - old_b,
                       engine_bytes_change_pct=round(100 * (new_b - old_b) / old_b, 2)
                       if old_b else None)
        new_c = new_r.accuracy.cosine_mean if new_r.accuracy else None
        old_c = old_r.accuracy.cosine_mean if old_r.accuracy else None
        if new_c is not None and old_c is not None and not math.isnan(new_c - old_c):
            cmp.update(cosine_mean=old_c, cosine_mean_change=new_c - old_c)
        j.vs_baseline = cmp


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
