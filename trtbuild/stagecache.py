"""Cache of the CPU stages' outputs: export (ONNX SRC), clean, fp16, int4, fp8, calibrate,
quantize and the INT8 validate, so a rerun of an unchanged build loads files instead of recomputing.

A stage's key is sha256 over: the stage's name; the content of every file it reads (the
ONNX SRC and its external data, or the earlier stages' outputs in OUT); the content of every
file of the --calib and --val directories (and a --metric-script's file); the settings
sections the stage reads (`SPECS`); trtbuild's and its libraries' versions. An entry holds
the files the stage wrote into OUT, the in-memory state later stages need (calibrate's
exact thresholds, quantize's CPU check model) and the stage's record; it lives in the engine
cache's root (`<root>/stages/<stage>/<key>/`) under the same rules: written atomically under
a per-key lock, every file re-hashed on a hit, a damaged entry quarantined and recomputed,
`trtbuild cache verify|prune` cover it. Not cached: a torch SRC's export (its weights come
from code), stages whose data or metric come from a Python script, quantize when the
sensitivity search follows (it needs the rounded weights in memory), and everything under
`--no-cache`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from .cache import EngineCache
from .context import Context
from .files import atomic_path, file_sha256
from .onnx.io import model_files
from .records import RECORDS, StageRecord

log = logging.getLogger(__name__)
STAGES = "stages"      # the folder under the cache root that is not an architecture
OUT = "${OUT}"         # the output directory in a stored record (a rerun may use another)
LIBRARIES = ("onnx", "onnxruntime", "numpy", "torch", "onnx-graphsurgeon", "pillow",
             "polygraphy")


@dataclass(frozen=True)
class Spec:
    """What one stage's output depends on, and how a hit puts it back into the context."""

    sections: tuple[str, ...]                        # BuildSettings fields it reads
    reads: tuple[str, ...]                           # Artifacts fields whose files it reads
    restore: Callable[[Context, dict[str, bytes]], None]
    state: Callable[[Context], dict[str, bytes]] = lambda ctx: {}


def _restore_export(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.artifacts.model = ctx.out / "model.onnx"
    ctx.take_source()  # the pre-checks' loaded SRC: let go of, as by the export stage


def _restore_clean(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.set_clean(ctx.out / "model.clean.onnx")


def _restore_fp16(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.artifacts.fp16 = ctx.out / "model.fp16.onnx"


def _restore_int4(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.artifacts.int4 = ctx.out / "model.int4.onnx"


def _restore_fp8(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.artifacts.fp8 = ctx.out / "model.fp8.onnx"


def _restore_calibrate(ctx: Context, state: dict[str, bytes]) -> None:
    from .stages.calibrate import decode_scales

    ctx.artifacts.calib_cache = ctx.out / "calib.cache"
    ctx.int8.amaxes = json.loads(state["amaxes.json"])
    ctx.int8.smooth = decode_scales(state.get("smooth.json", b"{}"))


def _calibrate_state(ctx: Context) -> dict[str, bytes]:
    from .stages.calibrate import encode_scales

    return {"amaxes.json": json.dumps(ctx.int8.amaxes).encode(),
            "smooth.json": encode_scales(ctx.int8.smooth)}


def _restore_quantize(ctx: Context, state: dict[str, bytes]) -> None:
    ctx.artifacts.int8, ctx.int8.weights = ctx.out / "model.int8.onnx", {}
    ctx.int8.check = state.get("check.onnx")


SPECS = {
    "export": Spec(("export",), (), _restore_export),
    "clean": Spec(("export", "data", "profiles"), ("model",), _restore_clean),
    "fp16": Spec(("fp16_options", "data", "gates", "export", "profiles"), ("clean",),
                 _restore_fp16),
    "int4": Spec(("int4", "fp16", "fp16_options", "calib", "data", "gates", "export",
                  "profiles"), ("clean",), _restore_int4),
    "fp8": Spec(("calib", "data", "gates", "export", "profiles"), ("clean",), _restore_fp8),
    "calibrate": Spec(("calib", "data"), ("clean",), _restore_calibrate, _calibrate_state),
    "quantize": Spec(("calib", "data", "fp16_options", "export", "profiles"),
                     ("clean", "calib_cache"),
                     _restore_quantize,
                     # a check past 2 GiB is not stored (bytes only): a hit checks the file
                     lambda ctx: {"check.onnx": ctx.int8.check}
                     if isinstance(ctx.int8.check, bytes) else {}),
    "validate": Spec(("data", "gates", "export", "profiles"), ("clean", "int8"),
                     lambda ctx, state: None),
}


class StageCache:
    """Stage entries in the engine cache's root."""

    def __init__(self, root: Path | None = None):
        self.store = EngineCache(root)
        self._digests: dict[tuple, str] = {}  # one run hashes each file and folder once
        self._listed: dict[tuple, list[Path]] = {}  # and parses each ONNX file once

    def _digest(self, path: Path, known: str | None = None) -> str:
        """sha256 of a file (or folder), once per run for each version of it; `known`: the
        sha256 it was just verified to have."""
        st = path.stat()
        memo = (str(path), st.st_mtime_ns, st.st_size)
        if known is not None:
            self._digests[memo] = known
        if memo not in self._digests:
            self._digests[memo] = (_folder_digest(path, self._digest) if path.is_dir()
                                   else file_sha256(path))
        return self._digests[memo]

    def _model_files(self, path: Path) -> list[Path]:
        """io.model_files, parsed once per run for each version of the file."""
        st = path.stat()
        memo = ("files", str(path), st.st_mtime_ns, st.st_size)
        if memo not in self._listed:
            self._listed[memo] = model_files(path)
        return self._listed[memo]

    def key(self, ctx: Context, stage: str) -> tuple[str | None, str]:
        """(key, "") or (None, why this stage is not cached in this run)."""
        spec, s = SPECS[stage], ctx.settings
        src_files = _src_files(ctx) if stage == "export" else None
        if stage == "export" and src_files is None:
            return None, "torch SRC"
        if stage == "quantize" and s.gates.accuracy_target is not None:
            return None, "the sensitivity search needs the rounded weights"
        data = [(n, d) for n, d in (("calib", s.calib.data), ("val", s.val))
                if d and "data" in spec.sections]
        if any(not Path(d).is_dir() for _, d in data):
            return None, "data from a loader script"
        script = s.gates.metric_script
        if script is not None and not isinstance(script, str) and "gates" in spec.sections:
            return None, "a metric function given in Python"
        h = hashlib.sha256()

        def part(name: str, value: Any) -> None:
            h.update(hashlib.sha256(f"{name}={value}".encode()).digest())

        part("stage", stage)
        part("versions", json.dumps(_versions(), sort_keys=True))
        settings = {n: s.engine.profiles if n == "profiles" else getattr(s, n)
                    for n in spec.sections}
        part("settings", json.dumps({n: _plain(v) for n, v in settings.items()},
                                    sort_keys=True, default=str))
        files = src_files if src_files is not None else [
            getattr(ctx.artifacts, a) for a in spec.reads]
        if stage == "calibrate" and s.calib.cache:  # thresholds it may reuse
            from .stages.calibrate import smooth_file

            files.append(s.calib.cache)
            if smooth_file(s.calib.cache).is_file():  # and their SmoothQuant scales
                files.append(smooth_file(s.calib.cache))
        try:
            for path in files:
                if path is None or not path.is_file():
                    return None, "an input of this stage is missing"
                for f in self._model_files(path):
                    part(f"file {f.name}", self._digest(f))
            for name, d in data:
                part(f"data {name}", self._digest(Path(d)))
            if isinstance(script, str) and "gates" in spec.sections:
                part("metric", self._digest(Path(script.rsplit(":", 1)[0])))
        except OSError as e:  # an unreadable input: the stage itself says what is wrong
            return None, f"cannot read an input ({e})"
        return h.hexdigest(), ""

    def load(self, ctx: Context, stage: str, key: str) -> StageRecord | None:
        """The stored record with the stage's files copied into OUT and its state restored,
        or None (a miss, or an entry that failed its check and was quarantined)."""
        entry = self.store.entry(STAGES, stage, key)
        if not entry.exists() and not entry.is_symlink():
            return None
        try:
            return self._load(ctx, stage, key, entry)
        except OSError as e:  # a cache we cannot read or lock: recompute
            log.warning("stage cache: %s: not used (%s)", entry, e)
            return None

    def _load(self, ctx: Context, stage: str, key: str, entry: Path) -> StageRecord | None:
        with self.store.lock(entry) as writable:
            found = self.store.read(entry, expect={"key": key, "stage": stage},
                                    writable=writable, layout="stage")
            if found is None:
                return None
            manifest = found[1]
            state = {}
            for name in manifest["files"]:
                if name in manifest.get("state", []):
                    state[name] = (entry / name).read_bytes()
                else:
                    with atomic_path(ctx.out / name) as tmp:
                        shutil.copyfile(entry / name, tmp)
                    self._digest(ctx.out / name, manifest["files"][name]["sha256"])
            if writable:
                with contextlib.suppress(OSError):
                    os.utime(entry)  # recency for prune
        record = RECORDS[stage].from_json(_moved(manifest["record"], OUT, str(ctx.out)))
        if record is None:  # written by a version with another schema: recompute
            return None
        SPECS[stage].restore(ctx, state)
        return record

    def save(self, ctx: Context, stage: str, key: str, record: StageRecord,
             wrote: list[Path]) -> None:
        """Store the files the stage wrote into OUT, its state and its record."""
        state = {k: v for k, v in SPECS[stage].state(ctx).items() if v is not None}
        files: dict[str, bytes | Path] = {p.name: p for p in wrote}
        if set(files) & set(state):
            return
        files.update(state)
        sums = {n: {"bytes": len(v) if isinstance(v, bytes) else v.stat().st_size,
                    "sha256": hashlib.sha256(v).hexdigest() if isinstance(v, bytes)
                    else self._digest(v)} for n, v in files.items()}
        from .report import dumps

        plain = json.loads(dumps(record.to_json()))  # as report.json will hold it
        manifest = {"key": key, "stage": stage, "source": ctx.settings.src,
                    "created": time.time(), "files": sums,
                    "state": sorted(state), "record": _moved(plain, str(ctx.out), OUT)}
        entry = self.store.entry(STAGES, stage, key)
        try:
            with self.store.lock(entry) as writable:
                if writable:
                    self.store.sweep(entry.parent)
                    self.store.write_files(entry, files, manifest)
        except OSError as e:  # a full or unwritable cache never fails the build
            log.warning("stage cache: %s: not stored (%s)", entry, e)


def _moved(value: Any, old: str, new: str) -> Any:
    """`value` with every string that is the path `old` or a path under it moved to `new`."""
    if isinstance(value, dict):
        return {k: _moved(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_moved(v, old, new) for v in value]
    if isinstance(value, str) and (value == old or value.startswith(old + "/")):
        return new + value[len(old):]
    return value


def _src_files(ctx: Context) -> list[Path] | None:
    from .onnx import source

    src = source.parse(ctx.settings.src)
    return [src.path] if src.kind == "onnx" else None


def _folder_digest(folder: Path, digest: Callable[[Path], str]) -> str:
    """sha256 over every file's relative path and content under `folder` (symlinks read
    through, as the data reader does)."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(f"{p.relative_to(folder)}\0{digest(p)}\0".encode())
    return h.hexdigest()


def _plain(value: Any) -> Any:
    try:
        return asdict(value)
    except TypeError:
        return value


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """trtbuild's own code: an edit or upgrade that keeps the version number still counts."""
    h = hashlib.sha256()
    root = Path(__file__).parent
    for p in sorted(root.rglob("*.py")):
        h.update(f"{p.relative_to(root)}\0".encode() + p.read_bytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _versions() -> dict[str, str]:
    from importlib import metadata

    from .version import __version__

    found = {"trtbuild": __version__, "trtbuild source": _source_digest()}
    for lib in LIBRARIES:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            found[lib] = "-"
    return found
