"""report.json: one record per stage, written atomically after every stage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .files import write_text


@dataclass
class Report:
    """Collects stage records; `save` rewrites report.json so a failed run keeps what ran."""

    path: Path
    model: str = ""
    stages: list[dict[str, Any]] = field(default_factory=list)

    def add(self, stage: str, seconds: float, **fields: Any) -> dict[str, Any]:
        record = {"stage": stage, "seconds": round(seconds, 4), **fields}
        self.stages = [s for s in self.stages if s["stage"] != stage] + [record]
        self.save()
        return record

    def get(self, stage: str) -> dict[str, Any] | None:
        return next((s for s in self.stages if s["stage"] == stage), None)

    def to_dict(self) -> dict[str, Any]:
        return {"trtbuild": __version__, "model": self.model,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "stages": self.stages}

    def save(self) -> None:
        write_text(self.path, json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n")


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
