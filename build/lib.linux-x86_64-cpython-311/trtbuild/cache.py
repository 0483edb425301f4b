"""Engine cache: content-addressed, grouped by GPU architecture and TensorRT version.

Layout: `<root>/<arch>/<trt-tag>/<key>/{engine.plan, manifest.json}` and nothing else.
Writes are atomic (a temp directory renamed into place) under an exclusive file lock per key,
so two processes building one key build once and both get the engine. A hit re-hashes the
engine against the manifest before returning it; a corrupt or foreign entry is moved to
`<root>/quarantine/` and rebuilt, never returned.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)
ENGINE, MANIFEST = "engine.plan", "manifest.json"


def default_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trtbuild" / "engines"


def cache_key(onnx_bytes: bytes, calib_cache: bytes | None, settings: dict[str, Any],
              arch: str, builder_tag: str) -> str:
    """sha256 over everything that changes the engine (weights included via the ONNX bytes)."""
    h = hashlib.sha256()
    for part in (onnx_bytes, calib_cache or b"",
                 json.dumps({"settings": settings, "arch": arch, "builder": builder_tag},
                            sort_keys=True, default=str).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


@dataclass
class Lookup:
    engine: bytes
    manifest: dict[str, Any]
    hit: bool
    path: Path


class EngineCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_root()

    def entry(self, arch: str, tag: str, key: str) -> Path:
        return self.root / arch / tag / key

    @contextlib.contextmanager
    def _lock(self, entry: Path) -> Iterator[None]:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with open(entry.parent / f".{entry.name}.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def get_or_build(self, arch: str, tag: str, key: str,
                     build: Callable[[], tuple[bytes, dict[str, Any]]]) -> Lookup:
        """The cached engine for this key, or build() once (under the lock) and store it."""
        entry = self.entry(arch, tag, key)
        with self._lock(entry):
            found = self.read(entry, expect={"key": key, "arch": arch, "builder": tag})
            if found is not None:
                os.utime(entry)  # recency for prune
                return Lookup(found[0], found[1], True, entry)
            engine, manifest = build()
            manifest = {**manifest, "key": key, "arch": arch, "builder": tag,
                        "engine_sha256": hashlib.sha256(engine).hexdigest(),
                        "engine_bytes": len(engine), "created": time.time()}
            self._write(entry, engine, manifest)
            return Lookup(engine, manifest, False, entry)

    def read(self, entry: Path, expect: dict[str, str] | None = None) -> tuple[bytes, dict] | None:
        """(engine, manifest) if the entry exists and verifies; else None (quarantined)."""
        if not entry.exists():
            return None
        problem = self.problem(entry, expect)
        if problem:
            log.warning("engine cache: %s: %s; quarantined, rebuilding", entry, problem)
            self.quarantine(entry, problem)
            return None
        return (entry / ENGINE).read_bytes(), json.loads((entry / MANIFEST).read_text())

    def problem(self, entry: Path, expect: dict[str, str] | None = None) -> str | None:
        """Why an entry cannot be used, or None."""
        names = sorted(p.name for p in entry.iterdir()) if entry.is_dir() else []
        if names != sorted([ENGINE, MANIFEST]):
            return f"unexpected contents {names}"
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, json.JSONDecodeError) as e:
            return f"unreadable manifest ({e})"
        for k, v in (expect or {"key": entry.name}).items():
            if manifest.get(k) != v:
                return f"foreign entry ({k} {manifest.get(k)!r}, expected {v!r})"
        data = (entry / ENGINE).read_bytes()
        if len(data) != manifest.get("engine_bytes"):
            return f"truncated engine ({len(data)} of {manifest.get('engine_bytes')} bytes)"
        if hashlib.sha256(data).hexdigest() != manifest.get("engine_sha256"):
            return "engine sha256 mismatch"
        return None

    def quarantine(self, entry: Path, reason: str) -> Path:
        dest = self.root / "quarantine" / f"{entry.name}-{int(time.time() * 1e6)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, dest)
        (dest.parent / f"{dest.name}.reason").write_text(reason + "\n")
        return dest

    def _write(self, entry: Path, engine: bytes, manifest: dict[str, Any]) -> None:
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name, data in ((ENGINE, engine),
                               (MANIFEST, json.dumps(manifest, indent=2).encode())):
                with open(tmp / name, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def entries(self) -> list[Path]:
        """Every entry directory (arch/tag/key), quarantine and temp dirs excluded."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*/*/*") if p.is_dir()
                      and p.parts[-3] != "quarantine" and ".tmp-" not in p.name)

    def listing(self) -> list[dict[str, Any]]:
        """One row per entry: its path under the root, precision, size, creation time."""
        rows = []
        for e in self.entries():
            try:
                m = json.loads((e / MANIFEST).read_text())
            except (OSError, ValueError):
                m = {}
            m = m if isinstance(m, dict) else {}
            rows.append({"entry": str(e.relative_to(self.root)), "precision": m.get("precision"),
                         "bytes": m.get("engine_bytes"), "created": m.get("created")})
        return rows

    def verify(self) -> list[tuple[Path, str | None]]:
        """(entry, problem or None) for every entry; damaged ones are quarantined."""
        out = []
        for entry in self.entries():
            problem = self.problem(entry)
            if problem:
                self.quarantine(entry, problem)
            out.append((entry, problem))
        return out

    def prune(self, max_age_days: float | None = None, max_size_mb: float | None = None) -> list[Path]:
        """Remove entries older than max_age_days, then the oldest until under max_size_mb."""
        now, removed = time.time(), []
        items = sorted(((e, e.stat().st_mtime, _size(e)) for e in self.entries()),
                       key=lambda t: t[1])
        keep = []
        for e, mtime, size in items:
            if max_age_days is not None and now - mtime > max_age_days * 86400:
                shutil.rmtree(e)
                removed.append(e)
            else:
                keep.append((e, size))
        total = sum(s for _, s in keep)
        for e, size in keep:
            if max_size_mb is None or total <= max_size_mb * (1 << 20):
                break
            shutil.rmtree(e)
            removed.append(e)
            total -= size
        return removed


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.iterdir())
