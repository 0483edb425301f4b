"""OUT/release.json: the release's journal and its result, rewritten atomically after every
job (kill -9 at any moment leaves the previous or the next version, never a torn one).

    {"manifest": {"path", "sha256"}, "out", "workers", "backend" ("pool", "ray (local)",
     "ray HOST:PORT"), "baseline", "started", "updated", "finished", "totals": {...},
     "jobs": {"digits/prepare": {...}, "digits/int8/sm_86": {...}, ...}}

Each job: model, kind (prepare | engine), precision and arch (engines), status (pending | ok |
failed | gate_failed | skipped), error (one line), exit_code, seconds, peak_rss_mb, record
(the summary jobs.py made), reused (true: done by an earlier run of the same manifest and
its files still there), vs_baseline (engines, with --baseline).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..errors import TrtBuildError
from ..files import file_sha256, write_text
from ..report import dumps
from ..version import __version__
from .manifest import Manifest

STATUSES = ("ok", "failed", "gate_failed", "skipped", "pending")


def prepare_key(model: str) -> str:
    return f"{model}/prepare"


def fresh(m: Manifest, out: Path, workers: int, baseline: Path | None) -> dict[str, Any]:
    jobs: dict[str, dict[str, Any]] = {}
    for entry in m.models:
        jobs[prepare_key(entry.name)] = {"model": entry.name, "kind": "prepare"}
        for job in m.jobs():
            if job.model == entry.name:
                jobs[job.key] = {"model": job.model, "kind": "engine",
                                 "precision": job.precision, "arch": job.arch}
    for j in jobs.values():
        j.update(status="pending", error=None, exit_code=None, seconds=None, peak_rss_mb=None,
                 record={}, reused=False)
    stamp = now()
    return {"trtbuild": __version__, "manifest": {"path": str(m.path),
                                                  "sha256": file_sha256(m.path)},
            "out": str(out), "workers": workers,
            "baseline": str(baseline) if baseline else None, "started": stamp, "updated": stamp,
            "finished": None, "totals": {}, "jobs": jobs}


def read(path: Path, what: str = "release journal") -> dict[str, Any] | None:
    """A release.json's content; None when there is none. Raises TrtBuildError (exit 2)
    when it is not one (bad JSON, another shape)."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TrtBuildError(f"{path}: corrupt {what} ({_why(e)}); delete it to start over"
                            if what == "release journal" else
                            f"{path}: not a release.json ({_why(e)})")
    if not (isinstance(data, dict) and isinstance(data.get("jobs"), dict)
            and isinstance(data.get("manifest"), dict)
            and all(isinstance(j, dict) for j in data["jobs"].values())):
        raise TrtBuildError(f"{path}: corrupt {what} (not a trtbuild release.json); delete it "
                            "to start over" if what == "release journal" else
                            f"{path}: not a trtbuild release.json")
    return data


def _why(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"bad JSON at line {e.lineno}, column {e.colno}"
    return getattr(e, "strerror", None) or type(e).__name__


def save(path: Path, journal: dict[str, Any]) -> None:
    journal["updated"] = now()
    journal["totals"] = totals(journal)
    write_text(path, dumps(journal) + "\n")


def totals(journal: dict[str, Any]) -> dict[str, Any]:
    jobs = list(journal["jobs"].values())
    count = {s: sum(j["status"] == s for j in jobs) for s in STATUSES}
    engines = [j["record"].get("engine") or {} for j in jobs
               if j["kind"] == "engine" and j["status"] == "ok"]
    return {"jobs": len(jobs), **count,
            "reused": sum(bool(j.get("reused")) for j in jobs),
            "engines": len(engines),
            "engine_bytes": sum(e.get("bytes") or 0 for e in engines),
            "cache_hits": sum(bool(e.get("cache_hit")) for e in engines),
            "job_seconds": round(sum(j["seconds"] or 0 for j in jobs if not j.get("reused")), 3),
            "max_peak_rss_mb": max((j["peak_rss_mb"] or 0 for j in jobs), default=0)}


def failures(journal: dict[str, Any]) -> list[str]:
    """One line per job that did not pass, in job order."""
    return [f"{key}: {j['error']}" if str(j["error"]).startswith(j["status"])
            else f"{key}: {j['status']}: {j['error']}" for key, j in journal["jobs"].items()
            if j["status"] != "ok"]


def compare(journal: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Each engine job's change against the same key in a previous release.json: engine
    size and accuracy (cosine_mean vs FP32); latency is not measured on a machine without
    a GPU. Sets job["vs_baseline"]."""
    old_jobs = baseline.get("jobs") or {}
    for key, j in journal["jobs"].items():
        if j["kind"] != "engine":
            continue
        old = old_jobs.get(key) if isinstance(old_jobs, dict) else None
        if not isinstance(old, dict) or old.get("status") != "ok":
            j["vs_baseline"] = {"new": True}
            continue
        old_record = _table(old.get("record"))  # a baseline of another shape: fields absent
        new_b = _table(j["record"].get("engine")).get("bytes")
        old_b = _table(old_record.get("engine")).get("bytes")
        cmp: dict[str, Any] = {"latency": "not measured"}
        if isinstance(new_b, int) and isinstance(old_b, int):
            cmp.update(engine_bytes=old_b, engine_bytes_change=new_b - old_b,
                       engine_bytes_change_pct=round(100 * (new_b - old_b) / old_b, 2)
                       if old_b else None)
        new_c = _table(j["record"].get("accuracy")).get("cosine_mean")
        old_c = _table(old_record.get("accuracy")).get("cosine_mean")
        if isinstance(new_c, (int, float)) and isinstance(old_c, (int, float)):
            cmp.update(cosine_mean=old_c, cosine_mean_change=new_c - old_c)
        j["vs_baseline"] = cmp


def _table(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
