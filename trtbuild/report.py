"""report.json: one record per stage, written atomically after every stage."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import write_text
from .records import StageRecord
from .version import __version__


@dataclass
class Report:
    """Collects stage records; `save` rewrites report.json so a failed run keeps what ran."""

    path: Path | None            # None: kept in memory only
    model: str = ""
    stages: list[StageRecord] = field(default_factory=list)
    status: str = "running"      # then passed, gate_failed or failed
    error: str | None = None     # the one line the CLI printed for a failed run
    preprocess: dict[str, Any] = field(default_factory=dict)  # how image samples were read

    def add(self, stage: str, seconds: float, record: StageRecord) -> StageRecord:
        """`record` as stage `stage`, replacing an earlier record of that stage."""
        record.stage, record.seconds = stage, round(seconds, 4)
        self.stages = [s for s in self.stages if s.stage != stage] + [record]
        self.save()
        return record

    def finish(self, status: str, error: str | None = None) -> None:
        """The run's outcome, at the top of report.json (and report.html's banner); a run
        that failed before any stage finished writes no report (bad input leaves OUT as it
        was)."""
        self.status, self.error = status, error
        if self.stages:
            self.save()

    def to_dict(self) -> dict[str, Any]:
        return {"trtbuild": __version__, "model": self.model, "status": self.status,
                "error": self.error, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                **({"preprocess": self.preprocess} if self.preprocess else {}),
                "stages": [s.to_json() for s in self.stages]}

    def save(self) -> None:
        from .report_html import write_beside  # lazy: only a report on disk needs it

        if self.path is None:
            return
        text = dumps(self.to_dict()) + "\n"
        write_text(self.path, text)
        write_beside(self.path, json.loads(text))  # the page shows exactly what the JSON says


def dumps(data: Any) -> str:
    """Strict JSON (NaN and Inf become null), numpy scalars and paths converted."""
    return json.dumps(_finite(data), indent=2, default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return _finite(value.item())
    return value


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


class Timer:
    """`with Timer() as t: ...; t.seconds`."""

    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start
