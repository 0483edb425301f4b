"""What an engine is, for `trtbuild inspect ENGINE_OR_CACHE_KEY`: builder and version, target
compute capability, compatibility modes, precision, I/O names, dtypes and profile shapes, size,
the source model and its ONNX hash, and the trtbuild version that built it.

TensorRT cannot deserialize a plan without a GPU, so the fields come from trtbuild's own
records, matched by the engine's sha256: the cache manifest of its key, else the report.json
of the build that wrote the file (`OUT/engines/<arch>/model.<precision>.engine`). Where a
GPU can load the engine, the I/O is read from the engine itself (trt/runtime.engine_io).
"""

from __future__ import annotations

import json
import re
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .cache import ENGINE, MAX_MANIFEST, EngineCache, builder_name
from .errors import MISSING_CAPABILITY, TrtBuildError
from .files import file_sha256
from .records import engine_records

KEY = re.compile(r"[0-9a-f]{8,64}")
REPORT_LEVELS = 3  # OUT/engines/<arch>/model.x.engine: report.json is 3 folders up


def describe(target: str, cache_root: Path | None = None) -> dict[str, Any]:
    """The fields of an engine file or of a cache entry (a key or a unique prefix of 8+ hex
    digits). Raises TrtBuildError(2) for no such file or key, (3) for an engine no record
    describes on a machine that cannot load it."""
    cache = EngineCache(cache_root)
    path = Path(target)
    if path.exists():
        return _engine_file(path, cache)
    if not KEY.fullmatch(target):
        raise TrtBuildError(f"{target}: no such file, and not a cache key (8-64 hex digits)")
    return _cache_entry(_entry_for_key(target, cache), cache)


def _entry_for_key(prefix: str, cache: EngineCache) -> Path:
    found = [e for e in cache.entries() if e.name.startswith(prefix)]
    if not found:
        raise TrtBuildError(f"{prefix}: no cache entry with this key in {cache.root}")
    if len(found) > 1:
        raise TrtBuildError(f"{prefix}: {len(found)} cache entries start with this key ("
                            + ", ".join(str(e.relative_to(cache.root)) for e in found[:4])
                            + "); give more digits")
    return found[0]


def _cache_entry(entry: Path, cache: EngineCache) -> dict[str, Any]:
    problem, m = cache.manifest(entry)
    if problem:
        raise TrtBuildError(f"{entry}: unusable cache entry: {problem}")
    if "files" in m:
        raise TrtBuildError(f"{entry}: a cached {m.get('stage')} stage, not an engine")
    problem = cache.problem(entry)  # re-hashes the engine
    fields = _fields(m, entry.parent.parent.name,
                     builder_name(entry.parent.name, m.get("builder_version")))
    return {**fields, "engine": str(entry / ENGINE), "record": str(entry / "manifest.json"),
            "record_kind": "cache manifest", "verified": problem is None,
            **({"problem": problem} if problem else {})}


def _fields(m: dict[str, Any], arch: str, builder: str) -> dict[str, Any]:
    settings = m.get("settings") or {}
    created = m.get("created")
    return {"builder": builder,
            "arch": m.get("arch", arch), "precision": m.get("precision"),
            "hardware_compat": settings.get("hardware_compat"),
            "version_compatible": settings.get("version_compatible"),
            "refittable": bool(settings.get("refittable")),
            "weights_stripped": bool(settings.get("strip_weights")),
            "weight_streaming": bool(settings.get("weight_streaming")),
            "bytes": m.get("engine_bytes"), "sha256": m.get("engine_sha256"),
            "io": m.get("io"), "source": m.get("source"), "onnx_sha256": m.get("onnx_sha256"),
            "trtbuild_version": m.get("trtbuild_version"), "key": m.get("key"),
            "created": datetime.fromtimestamp(created, timezone.utc).isoformat(
                timespec="seconds") if isinstance(created, (int, float)) else None}


def _engine_file(path: Path, cache: EngineCache) -> dict[str, Any]:
    st = path.stat()
    if not stat.S_ISREG(st.st_mode):
        raise TrtBuildError(f"{path}: not a regular file")
    sha = file_sha256(path)
    found = _in_cache(sha, cache) or _in_report(path, sha)
    if found is not None:
        return {**found, "engine": str(path), "bytes": st.st_size, "sha256": sha}
    from .trt import runtime

    why = runtime.machine_refusal()
    if why:
        raise TrtBuildError(f"{path}: no trtbuild record of this engine (sha256 {sha[:12]}, "
                            f"not in {cache.root} nor in a report.json above it), and reading "
                            f"the engine itself needs a GPU: {why}", MISSING_CAPABILITY)
    try:
        loaded = runtime.engine_io(path)
    except runtime.EngineRefused as e:
        raise TrtBuildError(f"{path}: no trtbuild record of this engine, and {e}",
                            MISSING_CAPABILITY)
    return {"engine": str(path), "bytes": st.st_size, "sha256": sha,
            "record_kind": "the engine itself", **loaded}


def _in_cache(sha: str, cache: EngineCache) -> dict[str, Any] | None:
    """The cache entry whose manifest records this engine sha256 (manifests only: the
    engines are not read)."""
    for entry in cache.entries():
        problem, m = cache.manifest(entry)
        if not problem and m.get("engine_sha256") == sha:
            return _cache_entry(entry, cache)
    return None


def _in_report(path: Path, sha: str) -> dict[str, Any] | None:
    """The engine record of the build that wrote this file (its report.json, up to
    REPORT_LEVELS folders above)."""
    for folder in list(path.resolve().parents)[:REPORT_LEVELS]:
        report = folder / "report.json"
        if not report.is_file() or report.stat().st_size > 64 * MAX_MANIFEST:
            continue
        try:
            data = json.loads(report.read_text())
            stages, model = data.get("stages") or [], data.get("model")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue
        for e in (e for s in stages if isinstance(s, dict) and s.get("stage") == "build"
                  for e in engine_records(s)):
            if e.sha256 != sha:
                continue
            m = {"arch": e.arch, "precision": e.precision, "key": e.key, "io": e.io,
                 "engine_bytes": e.bytes, "engine_sha256": sha, "onnx_sha256": e.onnx_sha256,
                 "trtbuild_version": e.trtbuild_version,
                 "settings": {"hardware_compat": e.hardware_compat,
                              "version_compatible": e.version_compatible,
                              "refittable": e.refittable, "strip_weights": e.weights_stripped,
                              "weight_streaming": e.weight_streaming}}
            return {**_fields(m, e.arch, f"{e.builder} {e.builder_version}"), "source": model,
                    "record": str(report), "record_kind": "report.json"}
    return None


def lines(info: dict[str, Any]) -> list[str]:
    """The human form of describe()."""
    def shape(s: Any) -> str:
        return "x".join(str(d) for d in s) if isinstance(s, list) else "?"

    out = [f"engine:       {info['engine']} ({info.get('bytes')} bytes, sha256 "
           f"{str(info.get('sha256'))[:16]})"]
    if info.get("builder"):
        built = f"built by:     {info['builder']}"
        if info.get("trtbuild_version"):
            built += f" via trtbuild {info['trtbuild_version']}"
        out.append(built + (f", {info['created']}" if info.get("created") else ""))
    if info.get("arch"):
        compat = info.get("hardware_compat") or "?"
        version = {True: "yes", False: "no"}.get(info.get("version_compatible"), "?")
        out.append(f"target:       {info['arch']} (hardware compatibility {compat}, version "
                   f"compatible {version})")
    if info.get("precision"):
        out.append(f"precision:    {info['precision']}")
    weights = [w for w, on in (("stripped: refit from its ONNX model before use",
                                info.get("weights_stripped")),
                               ("refittable", info.get("refittable")
                                and not info.get("weights_stripped")),
                               ("streamable", info.get("weight_streaming"))) if on]
    if weights:
        out.append(f"weights:      {', '.join(weights)}")
    if info.get("source") or info.get("onnx_sha256"):
        out.append(f"source:       {info.get('source') or '?'}" + (
            f" (ONNX sha256 {info['onnx_sha256'][:16]})" if info.get("onnx_sha256") else ""))
    for t in info.get("io") or []:
        profile = t.get("profile")
        out.append(f"{t['mode'] + ':':<14}{t['name']}  {t['dtype']}  {shape(t['shape'])}" + (
            f"  profile {' / '.join(shape(s) for s in profile)}" if profile else ""))
    if not info.get("io"):
        out.append("io:           not recorded (an engine built before trtbuild recorded it)")
    if info.get("key"):
        out.append(f"cache key:    {info['key']}")
    verified = "" if info.get("verified", True) else f", DAMAGED: {info.get('problem')}"
    out.append(f"record:       {info['record_kind']}"
               + (f" {info['record']}" if info.get("record") else "") + verified)
    return out
