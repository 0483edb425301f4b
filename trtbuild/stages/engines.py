"""Engines stage: every precision model x every target architecture, through the engine
cache, into `out/engines/<arch>/model.<precision>.engine`. `native` is resolved to the local
GPU's compute capability (in the cache key too), and an architecture the builder cannot
target, or whose engines its runtime would refuse, stops the stage with exit 3 before
anything is built. An engine that fails to build does not stop the others: the record lists
it under `failed`, keeps the ones that built, and the pipeline then fails the stage."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..cache import EngineCache, cache_key
from ..config import EngineSettings
from ..context import Context, Engine
from ..errors import BAD_INPUT, TrtBuildError
from ..files import file_sha256, write_bytes
from ..onnx.inputs import model_inputs
from ..onnx.io import model_files
from ..onnx.shapes import Profile
from ..progress import Bar, bar
from ..records import BuildRecord, EngineRecord, FailedEngine
from ..trt import backend as trt_backend
from ..trt.gpu import gpu_info
from ..version import __version__

log = logging.getLogger(__name__)


def models_to_build(ctx: Context) -> dict[str, Path]:
    """{precision: ONNX model} this build turns into engines."""
    a, s = ctx.artifacts, ctx.settings
    models = {p: path for p, path in (("fp16", a.fp16), ("int8", a.int8), ("int4", a.int4),
                                      ("fp8", a.fp8)) if path}
    if s.engine.fp16_flag:  # --fp16-mode flag: TensorRT <= 10 lowers the FP32 graph itself
        models = {"fp16": a.clean, **models}
    if "int8" in models and s.engine.calibrator == "trt":
        models["int8"] = a.clean  # TensorRT <= 10 calibrates the FP32 graph itself
    if s.fp32 or not models:
        models = {"fp32": a.clean, **models}
    return models


def run(ctx: Context) -> BuildRecord:
    """Build (or fetch from the cache) one engine per (precision, arch).

    With target 'auto' and no builder installed, returns a record that says why and builds
    nothing; with target 'engine' that raises TrtBuildError(3).
    """
    t = ctx.settings.targets
    try:
        backend = trt_backend.load_backend(t.builder)
    except TrtBuildError as e:
        if t.target == "engine":
            raise
        log.warning("no engine built: %s", e.message)
        return BuildRecord(skipped=f"no engine built: {e.message}")
    archs = trt_backend.target_archs(backend, t.archs, ctx.settings.engine.hardware_compat)
    settings, profiles_from = engine_settings(ctx)
    models = models_to_build(ctx)
    cache = EngineCache(t.cache_dir)
    calib = ctx.artifacts.calib_cache
    calib_bytes = calib.read_bytes() if calib and calib.is_file() else None
    records, failed = [], []
    with bar("building engines", len(models) * len(archs)) as progress:
        for precision, onnx_path in models.items():
            # weights kept beside the model (.onnx.data) are part of what the engine is
            # built from: hashed once per model, into every arch's key
            weights = {f.name: file_sha256(f) for f in model_files(onnx_path)[1:]}
            for arch in archs:
                try:
                    r = _one(ctx, settings, backend, cache, onnx_path, weights, precision, arch,
                             calib_bytes if precision == "int8" else None, progress)
                except TrtBuildError as e:
                    if e.code == BAD_INPUT:  # a bad flag fails every engine alike
                        raise
                    # the others still build; the pipeline fails the stage after the record,
                    # in one line naming every failure
                    log.info("%s@%s: %s", precision, arch, e.message)
                    failed.append(FailedEngine(precision=precision, arch=arch,
                                               error=e.message, code=e.code))
                    progress.advance(1)
                    continue
                records.append(r)
                ctx.artifacts.engines.append(Engine(
                    Path(r.path), arch, precision, backend.name, backend.version,
                    Path(r.refit_from) if r.refit_from else None,
                    settings.weight_streaming_budget))
                progress.advance(1)
    return BuildRecord(builder=backend.name, trt_version=backend.version,
                       cache_dir=str(cache.root), profiles_from=profiles_from, engines=records,
                       built=sum(not e.cache_hit for e in records),
                       cache_hits=sum(e.cache_hit for e in records), failed=failed or None)


def engine_settings(ctx: Context) -> tuple[EngineSettings, str]:
    """The engine settings, with an optimization profile for every input whose dims beyond
    the batch are dynamic and not given with --shapes: the first data sample's shape (batch
    1/8/32 where samples stack on axis 0, else exactly the sample's shape)."""
    s = ctx.settings.engine
    inputs = model_inputs(ctx.clean_model())
    given = {p.name for p in s.profiles}
    open_dims = [i for i in inputs if i.name not in given and any(d < 0 for d in i.dims[1:])]
    sample = ctx.first_sample(ctx.clean_model()) if open_dims else None
    if not sample:
        return s, "--shapes" if s.profiles else "model"
    feed, described = sample
    stack = all(i.batchable for i in inputs)
    derived = []
    for spec in open_dims:
        shape = tuple(int(d) for d in np.shape(feed[spec.name]))
        tiers = [(b, *shape[1:]) for b in (1, 8, 32)] if stack else [shape] * 3
        derived.append(Profile(spec.name, *tiers))
    return replace(s, profiles=s.profiles + tuple(derived)), described


def _one(ctx: Context, s: EngineSettings, backend: trt_backend.Backend, cache: EngineCache,
         onnx_path: Path, weights: dict[str, str], precision: str, arch: str,
         calib: bytes | None,
         progress: Bar) -> EngineRecord:
    from ..trt import builder

    onnx_bytes = onnx_path.read_bytes()
    onnx_sha = hashlib.sha256(onnx_bytes).hexdigest()
    settings = replace(s, fp16_flag=s.fp16_flag and precision == "fp16")
    key_fields = {**settings.key_fields(), "precision": precision,
                  **({"external_data": weights} if weights else {})}
    key = cache_key(onnx_bytes, calib, key_fields, arch, backend.tag)
    timing_path = cache.root / arch / backend.tag / "timing.cache"

    def build() -> tuple[bytes, dict[str, Any]]:
        timing = timing_path.read_bytes() if timing_path.is_file() else None
        calibrator = None
        if precision == "int8" and s.calibrator == "trt":
            from ..trt.calibrator import make_calibrator

            calibrator = make_calibrator(backend.trt, ctx.dataset(ctx.settings.calib.data),
                                         ctx.out / "calib.trt.cache")
        result = builder.build(backend, onnx_path, arch, settings, timing,
                               on_phase=lambda phase: progress.note(f"{precision}@{arch} {phase}"),
                               calibrator=calibrator)
        if result.timing_cache:
            write_bytes(timing_path, result.timing_cache)
        gpu = gpu_info() or {}
        return result.engine, {"precision": precision, "builder_version": backend.version,
                               "source": ctx.settings.src, "onnx_sha256": onnx_sha,
                               "trtbuild_version": __version__, "io": result.io,
                               "gpu": gpu.get("name"),
                               "compute_capability": gpu.get("compute_capability"),
                               "driver": gpu.get("driver"), "cuda": gpu.get("cuda"),
                               "settings": key_fields, "onnx_bytes": len(onnx_bytes),
                               "build_seconds": round(result.seconds, 3),
                               "layer_dtypes": result.layer_dtypes}

    found = cache.get_or_build(arch, backend.tag, key, build,
                               store=ctx.settings.targets.use_cache)
    path = ctx.out / "engines" / arch / f"model.{precision}.engine"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, found.engine)
    path_taken = {"fp16": "builder flag" if settings.fp16_flag else "graph",
                  "int8": "IInt8EntropyCalibrator2" if s.calibrator == "trt" else "Q/DQ graph"}
    manifest = found.manifest
    return EngineRecord(
        precision=precision, arch=arch, path=str(path), cache_hit=found.hit,
        builder=backend.name, builder_version=backend.version,
        precision_from=path_taken.get(precision, "graph"),
        cache_entry=str(found.path) if found.path else None, key=key,
        bytes=len(found.engine), sha256=manifest["engine_sha256"],
        build_seconds=manifest.get("build_seconds"), layer_dtypes=manifest.get("layer_dtypes"),
        io=manifest.get("io"), hardware_compat=settings.hardware_compat,
        version_compatible=settings.version_compatible, refittable=settings.refittable,
        weights_stripped=settings.strip_weights,
        refit_from=str(onnx_path.resolve()) if settings.strip_weights else None,
        weight_streaming=settings.weight_streaming, onnx_sha256=onnx_sha,
        trtbuild_version=manifest.get("trtbuild_version"))
