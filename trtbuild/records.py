"""Typed stage records: one schema for what a stage writes into report.json and for every
reader of it (console, report.html, `trtbuild inspect`, releases, the API).

Stages return these; `Report` serialises them with `to_json` and every reader of a
report.json gets them back with `parse_stage` / `Record.from_json`, which takes what any
trtbuild version wrote: unknown keys are ignored, missing ones and values of the wrong type
take their default, a record without its required fields is None.

JSON has no NaN: a metric that was NaN is written as null (report.dumps). A float field
read back as null is NaN again; a field that is absent is None (not measured). `to_json`
leaves out fields that are None, so the two stay apart.
"""

from __future__ import annotations

import functools
import math
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import PurePath
from typing import Any, ClassVar, Union

NULL = {"null": True}  # field metadata: written as null when None


class _Bad(Exception):
    """A JSON value that does not fit its field's type."""


class Record:
    """JSON out and in for the dataclasses below (field types drive `from_json`)."""

    NULL_IS_NAN: ClassVar[bool] = True  # False: a record that writes None as null

    def to_json(self) -> dict[str, Any]:
        """Fields that are None are left out, except those declared with NULL (a schema
        that always has the key)."""
        found = {f.name: _encode(getattr(self, f.name)) for f in fields(self)  # type: ignore[arg-type]
                 if (getattr(self, f.name) is not None or f.metadata.get("null"))
                 and f.name != "extra"}
        return {**found, **(getattr(self, "extra", None) or {})}

    @classmethod
    def from_json(cls, data: Any) -> Any:
        """An instance from a JSON object (any version's), or None when it is not one or
        lacks a required field."""
        try:
            return _build(cls, data, strict=False)
        except _Bad:
            return None

    @classmethod
    def of(cls, data: dict[str, Any]) -> Any:
        """An instance from the dict a stage assembled, checked against the schema: an
        unknown key or a value of the wrong type anywhere inside is a TypeError (a stage and
        its record type must agree). numpy scalars and tuples are taken as JSON takes them."""
        try:
            return _build(cls, data, strict=True)
        except _Bad as e:
            raise TypeError(f"{cls.__name__}: {e}") from None


def _build(cls: Any, data: Any, strict: bool) -> Any:
    if not isinstance(data, dict):
        raise _Bad(f"not an object: {type(data).__name__}")
    unknown = data.keys() - {f.name for f in fields(cls)}
    if strict and unknown:
        raise _Bad(f"unknown field(s) {sorted(unknown)}")
    hints, values = _hints(cls), {}
    if "extra" in hints and unknown:  # a newer version's figures, kept as they were
        values["extra"] = _decode(hints["extra"], {k: data[k] for k in unknown}, cls.NULL_IS_NAN)
    for f in fields(cls):
        required = f.default is MISSING and f.default_factory is MISSING
        if f.name not in data:
            if required:
                raise _Bad(f"{f.name} missing")
            continue
        try:
            values[f.name] = _decode(hints[f.name], data[f.name], cls.NULL_IS_NAN, strict)
        except _Bad as e:
            if required or strict:
                raise _Bad(f"{f.name}: {e}") from None
    return cls(**values)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _encode(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_json()
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(tp: Any, value: Any, nan: bool = True, strict: bool = False) -> Any:
    if strict:  # what a stage may hand over that JSON would take as well
        value = value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 \
            else list(value) if isinstance(value, tuple) \
            else str(value) if isinstance(value, PurePath) else value
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:  # JSON's null: a NaN float (see NULL_IS_NAN); a stage's None: none
            return math.nan if nan and float in args and not strict else None
        why = _Bad(f"does not fit {tp}: {value!r}"[:200])
        for arg in args:
            if arg is not type(None):
                try:
                    return _decode(arg, value, nan, strict)
                except _Bad as e:
                    why = e
        raise why
    if isinstance(tp, type) and issubclass(tp, Record):
        if isinstance(value, tp) or strict:
            return value if isinstance(value, tp) else _build(tp, value, strict)
        found = tp.from_json(value)  # a type's own reading (Job: its record by kind)
        if found is None:
            raise _Bad(f"not a {tp.__name__}: {value!r}"[:200])
        return found
    if tp is float:
        if value is None:
            return math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Bad(f"not a number: {value!r}")
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise _Bad(f"not {tp.__name__}: {value!r}")
    if origin is list:
        if not isinstance(value, list):
            raise _Bad(f"does not fit {tp}: {value!r}"[:200])
        (item,) = typing.get_args(tp)
        if strict:
            return [_decode(item, v, nan, strict) for v in value]
        return [x for x in (_decode_or_bad(item, v, nan) for v in value) if x is not _BAD]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Bad(f"does not fit {tp}: {value!r}"[:200])
        _, item = typing.get_args(tp)
        if strict:
            return {str(k): _decode(item, v, nan, strict) for k, v in value.items()}
        decoded = {str(k): _decode_or_bad(item, v, nan) for k, v in value.items()}
        return {k: v for k, v in decoded.items() if v is not _BAD}
    raise _Bad(f"does not fit {tp}: {value!r}"[:200])


_BAD = object()


def _decode_or_bad(tp: Any, value: Any, nan: bool) -> Any:
    """An item of a list or dict; one that does not fit is dropped, not the whole list."""
    try:
        return _decode(tp, value, nan)
    except _Bad:
        return _BAD


# accuracy ------------------------------------------------------------------------------

@dataclass(kw_only=True)
class OutputMetrics(Record):
    """One output of a candidate against the reference (metrics.output_metrics)."""

    shape_mismatch: str | None = None
    empty: bool | None = None
    non_finite: int | None = None
    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    max_rel_err: float | None = None
    mean_rel_err: float | None = None   # outputs with a few values per sample
    correlation: float | None = None
    judged_by: str | None = None
    cosine_mean: float | None = None
    cosine_min: float | None = None
    top1_agreement: float | None = None  # class scores only
    channel_cosine_mean: float | None = None
    channel_cosine_min: float | None = None
    channel_worst: str | None = None
    extra: dict[str, float | None] | None = None  # read from a newer version's report

    def values(self) -> dict[str, float]:
        """The measured figures by name (NaN included), for tables and release summaries."""
        found = {f.name: v for f in fields(self)
                 if isinstance(v := getattr(self, f.name), (int, float)) and not isinstance(v, bool)}
        return {**found, **(self.extra or {})}


@dataclass(kw_only=True)
class LabelAccuracy(Record):
    labelled: int | None = None
    reference: float | None = None
    candidate: float | None = None
    delta_points: float | None = None


@dataclass(kw_only=True)
class Tolerance(Record):
    """Polygraphy's elementwise verdict with the precision's tolerances."""

    atol: float | None = None
    rtol: float | None = None
    passed: bool | None = None
    check: str | None = None


@dataclass(kw_only=True)
class Accuracy(Record):
    """A candidate model or engine compared with the FP32 reference (validate.compare_runners)."""

    precision: str | None = None
    samples: int | None = None
    polygraphy: Tolerance | None = None
    outputs: dict[str, OutputMetrics] | None = None
    label_accuracy: LabelAccuracy | None = None
    scores: dict[str, float | None] | None = None  # --metric-script
    val: str | None = None
    cpu_check: str | None = None
    gate_failures: list[str] | None = None


# stages --------------------------------------------------------------------------------

@dataclass(kw_only=True)
class StageRecord(Record):
    """What every stage's record has; `stage` and `seconds` are set by the pipeline."""

    stage: str = ""
    seconds: float = 0.0
    output: str | None = None          # the artifact it wrote
    reused: str | None = None          # the stage cache entry it was taken from (key prefix)
    peak_rss_mb: float | None = None   # the process's peak so far
    gate_failures: list[str] | None = None
    skipped: str | None = None         # why it did nothing (build, validate_engines)

    def to_json(self) -> dict[str, Any]:  # stage and seconds first, whatever the bases' order
        found = super().to_json()
        return {"stage": found.pop("stage"), "seconds": found.pop("seconds"), **found}


@dataclass(kw_only=True)
class ExportRecord(StageRecord):
    source: str | None = None          # "onnx": copied, no PyTorch output to compare with
    inputs: dict[str, list[Any]] | None = None
    outputs: list[str] | None = None
    opset: int | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    data_dependent_outputs: dict[str, str] | None = None
    static_batch: str | None = None


@dataclass(kw_only=True)
class CleanRecord(StageRecord):
    nodes_before: int | None = None
    nodes_after: int | None = None
    ops_before: dict[str, int] | None = None
    ops_after: dict[str, int] | None = None
    passes: list[dict[str, Any]] | None = None
    max_abs_diff: float | None = None
    prepared: list[str] | None = None
    check_input: str | None = None


@dataclass(kw_only=True)
class SmoothQuant(Record):
    applied: bool = False
    layers: int | None = None
    activations: int | None = None
    smoothed: int | None = None
    conv_inputs: int | None = None
    conv_equalised: int | None = None
    alpha_median: float | None = None
    error_ratio_median: float | None = None
    samples: int | None = None
    seconds: float | None = None
    source: str | None = None          # the --calib-cache's scales file it came from


@dataclass(kw_only=True)
class CalibrateRecord(StageRecord):
    method: str | None = None
    plan_activations: int | None = None
    plan_weights: int | None = None
    left_float: str | None = None
    cache_status: str | None = None
    calib_cache: str | None = None
    smoothquant: SmoothQuant | None = None
    samples: int | None = None
    tensors: int | None = None
    ignored_sentinels: dict[str, Any] | None = None
    methods_chosen: dict[str, int] | None = None
    per_tensor: dict[str, dict[str, Any]] | None = None
    shards: Any = None
    calib: str | None = None
    calibrate_seconds: float | None = None
    samples_per_second: float | None = None


@dataclass(kw_only=True)
class QuantizeRecord(StageRecord):
    high_precision: str | None = None
    high_precision_note: str | None = None
    fp16_nodes: int | None = None
    fp32_nodes: int | None = None
    auto_fp32: list[dict[str, Any]] | None = None
    not_emulated: Any = None
    weight_rounding: dict[str, Any] | None = None
    bias_correction: dict[str, Any] | None = None
    quantized_activations: int | None = None
    quantized_weights: int | None = None
    dequantize_nodes: int | None = None


@dataclass(kw_only=True)
class Region(Record):
    """One region of the sensitivity search (a MAC-heavy node and its Q/DQ)."""

    node: str | None = None
    op_type: str | None = None
    macs: float | None = None
    mac_share: float | None = None
    sensitivity: float | None = None
    rank: int | None = None
    precision: str | None = None


@dataclass(kw_only=True)
class SensitivityRecord(StageRecord):
    target: str | None = None
    metric: str | None = None
    val: str | None = None
    samples: int | None = None
    sensitivity_samples: int | None = None
    before: float | None = None
    after: float | None = None         # the held-out part's value when one was held out
    met: bool | None = None
    searched_on: int | None = None
    held_out: int | None = None
    search_value: float | None = None
    evaluations: int | None = None
    seconds_in: dict[str, float] | None = None
    steps: list[dict[str, Any]] | None = None
    regions_total: int | None = None
    fallback_regions: int | None = None
    int8_mac_coverage: float | None = None
    macs_outside_regions: float | None = None
    model: dict[str, Any] | None = None
    regions: list[Region] | None = None


@dataclass(kw_only=True)
class ValidateRecord(StageRecord, Accuracy):
    """validate, and the stages that check what they wrote the same way (fp16, fp8, int4)."""

    preprocess_from: str | None = None  # `trtbuild validate`: the report.json it read


@dataclass(kw_only=True)
class Fp16Record(ValidateRecord):
    fp16_nodes: int | None = None
    fp32_nodes: int | None = None
    statistics_fp32: int | None = None
    fp32_ops: list[str] | None = None
    casts: int | None = None
    fp16_io: bool | None = None
    control_flow_fp32: int | None = None
    batchnorm_folded: int | None = None
    auto_fp32: list[dict[str, Any]] | None = None
    target_search: dict[str, Any] | None = None


@dataclass(kw_only=True)
class Fp8Record(ValidateRecord):
    quantized_activations: int | None = None
    quantized_weights: int | None = None
    calib: str | None = None
    calib_method: str | None = None
    samples_calibrated: int | None = None


@dataclass(kw_only=True)
class Int4Record(ValidateRecord):
    method: str | None = None
    block_size: int | None = None
    quantized_weights: int | None = None
    layers_by_method: dict[str, int] | None = None
    left_float: list[dict[str, Any]] | None = None
    weight_mb_fp32: float | None = None
    weight_mb_int4: float | None = None
    activations: str | None = None
    awq_scaled: int | None = None
    awq_alpha_median: float | None = None
    error_ratio_median: float | None = None
    auto_fp32: int | None = None       # FP16 activations: nodes kept in FP32 by range


@dataclass(frozen=True)
class EngineRecord(Record):
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

    NULL_IS_NAN: ClassVar[bool] = False

    def to_json(self) -> dict[str, Any]:  # every key, null included (engine cache entries)
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}


@dataclass(kw_only=True)
class FailedEngine(Record):
    precision: str
    arch: str
    error: str = ""
    code: int = 4


@dataclass(kw_only=True)
class BuildRecord(StageRecord):
    builder: str | None = None
    trt_version: str | None = None
    cache_dir: str | None = None
    profiles_from: str | None = None
    engines: list[EngineRecord] | None = None
    built: int | None = None
    cache_hits: int | None = None
    failed: list[FailedEngine] | None = None


@dataclass(kw_only=True)
class EngineCheck(Accuracy):
    """One engine run against the FP32 ONNX model (or the runtime's refusal)."""

    engine: str = ""
    builder: str | None = None
    arch: str | None = None
    refused: str | None = None


@dataclass(kw_only=True)
class EngineChecksRecord(StageRecord):
    engines: list[EngineCheck] | None = None


@dataclass(kw_only=True)
class BenchRun(Record):
    """One runner, model and shape timed (timing.stats)."""

    runner: str | None = None
    device: str | None = None
    model: str | None = None
    arch: str | None = None
    shape: str | None = None
    batch: int | None = None
    iterations: int | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    min_ms: float | None = None
    throughput_per_s: float | None = None


@dataclass(kw_only=True)
class BenchRecord(StageRecord):
    runs: list[BenchRun] = field(default_factory=list)
    warmup: int | None = None
    iterations: int | None = None
    duration_s: float | None = None
    refused: dict[str, str] | None = None
    baseline: str | None = None
    max_regression: float | None = None
    comparison: list[dict[str, Any]] | None = None


RECORDS: dict[str, type[StageRecord]] = {
    "export": ExportRecord, "clean": CleanRecord, "fp16": Fp16Record, "int4": Int4Record,
    "fp8": Fp8Record, "calibrate": CalibrateRecord, "quantize": QuantizeRecord,
    "sensitivity": SensitivityRecord, "validate": ValidateRecord, "build": BuildRecord,
    "validate_engines": EngineChecksRecord, "bench": BenchRecord}


def parse_stage(data: Any) -> StageRecord | None:
    """A report.json stage entry as its stage's record type (StageRecord for a stage this
    version does not know); None for anything that is not a stage entry."""
    if not isinstance(data, dict) or not isinstance(data.get("stage"), str):
        return None
    return RECORDS.get(data["stage"], StageRecord).from_json(data)


def parse_stages(report: Any) -> list[StageRecord]:
    """The stage records of a report.json's content, in order."""
    found = report.get("stages") if isinstance(report, dict) else None
    records = [parse_stage(s) for s in found] if isinstance(found, list) else []
    return [r for r in records if r is not None]


def engine_records(build: Any) -> list[EngineRecord]:
    """The engines of a build stage record (typed, or any version's JSON)."""
    if not isinstance(build, BuildRecord):
        build = BuildRecord.from_json(build) if isinstance(build, dict) else None
    return list(build.engines or []) if build is not None else []
