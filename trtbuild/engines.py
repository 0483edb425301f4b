"""The engine stage as the driver runs it: every precision model x every target arch,
through the engine cache, into `<out>/engines/<arch>/model.<precision>.engine`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import engine as eng
from .cache import EngineCache, cache_key
from .errors import TrtBuildError
from .files import write_bytes
from .gpuinfo import gpu_info
from .progress import bar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineStageSettings:
    target: str = "auto"          # auto: engines if a builder is installed; engine: required
    builder: str = "auto"
    archs: tuple[str, ...] = ()
    cache_dir: Path | None = None
    engine: eng.EngineSettings = field(default_factory=eng.EngineSettings)
    calib_data: Any = None  # () -> Dataset, for --calibrator trt


def target_archs(backend: eng.Backend, s: EngineStageSettings) -> list[str]:
    if s.archs:
        return list(s.archs)
    if backend.is_rtx:
        return list(eng.DEFAULT_RTX_ARCHS)
    if s.engine.hardware_compat == "ampere+":
        return ["ampere+"]
    native = eng.native_arch()
    if native is None:
        raise TrtBuildError(f"{backend.name} needs a local GPU (none found) or --hardware-compat "
                            "ampere+", eng.MISSING_CAPABILITY)
    return [native]


def run_engines(models: dict[str, Path], calib_cache: Path | None, out: Path,
                s: EngineStageSettings) -> dict[str, Any]:
    """Build (or fetch from the cache) one engine per (precision, arch).

    With target 'auto' and no builder installed, returns a record that says why and builds
    nothing; with target 'engine' that raises TrtBuildError(3).
    """
    try:
        backend = eng.load_backend(s.builder)
    except TrtBuildError as e:
        if s.target == "engine":
            raise
        return {"skipped": f"no engine built: {e.message}"}
    cache = EngineCache(s.cache_dir)
    archs = target_archs(backend, s)
    calib = calib_cache.read_bytes() if calib_cache and calib_cache.is_file() else None
    engines = []
    with bar("building engines", len(models) * len(archs)) as advance:
        for precision, onnx_path in models.items():
            for arch in archs:
                engines.append(_one(backend, cache, onnx_path, precision, arch,
                                    calib if precision == "int8" else None, out, s))
                advance(1)
    return {"builder": backend.name, "trt_version": backend.version, "cache_dir": str(cache.root),
            "engines": engines, "built": sum(not e["cache_hit"] for e in engines),
            "cache_hits": sum(e["cache_hit"] for e in engines)}


def _one(backend: eng.Backend, cache: EngineCache, onnx_path: Path, precision: str, arch: str,
         calib: bytes | None, out: Path, s: EngineStageSettings) -> dict[str, Any]:
    onnx_bytes = onnx_path.read_bytes()
    engine_settings = replace(s.engine, fp16_flag=s.engine.fp16_flag and precision == "fp16")
    settings = {**engine_settings.key_fields(), "precision": precision}
    key = cache_key(onnx_bytes, calib, settings, arch, backend.tag)
    timing_path = cache.root / arch / backend.tag / "timing.cache"

    def build() -> tuple[bytes, dict[str, Any]]:
        timing = timing_path.read_bytes() if timing_path.is_file() else None
        calibrator = None
        if precision == "int8" and s.engine.calibrator == "trt":
            from .trt_calibrator import make_calibrator

            calibrator = make_calibrator(backend.trt, s.calib_data(), out / "calib.trt.cache")
        result = eng.build(backend, onnx_path, arch, engine_settings, timing,
                           calibrator=calibrator)
        if result.timing_cache:
            write_bytes(timing_path, result.timing_cache)
        gpu = gpu_info() or {}
        return result.engine, {"precision": precision, "trt_version": backend.version,
                               "gpu": gpu.get("name"), "compute_capability": gpu.get("compute_capability"),
                               "driver": gpu.get("driver"), "cuda": gpu.get("cuda"),
                               "settings": settings, "onnx_bytes": len(onnx_bytes),
                               "build_seconds": round(result.seconds, 3),
                               "layer_dtypes": result.layer_dtypes}

    found = cache.get_or_build(arch, backend.tag, key, build)
    path = out / "engines" / arch / f"model.{precision}.engine"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(path, found.engine)
    path_taken = {"fp16": "builder flag" if engine_settings.fp16_flag else "graph",
                  "int8": "IInt8EntropyCalibrator2" if s.engine.calibrator == "trt" else "Q/DQ graph"}
    return {"precision": precision, "arch": arch, "path": str(path), "cache_hit": found.hit,
            "precision_from": path_taken.get(precision, "graph"),
            "cache_entry": str(found.path), "key": key, "bytes": len(found.engine),
            "sha256": found.manifest["engine_sha256"],
            "build_seconds": found.manifest.get("build_seconds"),
            "layer_dtypes": found.manifest.get("layer_dtypes")}
