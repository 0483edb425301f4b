"""Typed stage records: one schema for what a stage writes into report.json and for every
reader of it (console, report.html, `trtbuild inspect`, bench, releases). `from_json` takes
what any trtbuild version wrote: unknown keys are ignored, missing ones take their default,
a record without its required fields is None."""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class EngineRecord:
    """One engine of the build stage (built, or taken from the engine cache)."""

    precision: str
    arch: str
    path: str
    cache_hit: bool = False
    builder: str | None = None
    builder_version: str | None = None
    precision_from: str | None = None   # graph, builder flag, Q/DQ graph, calibrator
    cache_entry: str | None = None
    key: str | None = None
    bytes: int | None = None
    sha256: str | None = None
    build_seconds: float | None = None
    layer_dtypes: dict[str, int] | None = None
    io: list[dict[str, Any]] | None = None
    hardware_compat: str | None = None
    version_compatible: bool | None = None
    refittable: bool = False
    weights_stripped: bool = False
    refit_from: str | None = None       # a stripped engine's ONNX model (its weights)
    weight_streaming: bool = False
    onnx_sha256: str | None = None
    trtbuild_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> EngineRecord | None:
        if not isinstance(data, dict):
            return None
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls)
                    if f.default is MISSING and f.default_factory is MISSING}
        if not required <= data.keys():
            return None
        return cls(**{k: v for k, v in data.items() if k in known})


def engine_records(build: Any) -> list[EngineRecord]:
    """The engines of a build stage record (any version's); none for anything else."""
    found = build.get("engines") if isinstance(build, dict) else None
    records = [EngineRecord.from_json(e) for e in found] if isinstance(found, list) else []
    return [r for r in records if r is not None]
