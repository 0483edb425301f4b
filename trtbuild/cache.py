"""Engine cache: content-addressed, grouped by GPU architecture and TensorRT version.

Layout: `<root>/<arch>/<trt-tag>/<key>/{engine.plan, manifest.json}` and nothing else.
Writes are atomic (a temp directory renamed into place) under an exclusive file lock per key,
so two processes building one key build once and both get the engine. A hit re-checks the
entry under that lock (regular files only, never a symlink followed, reads bounded by the
manifest's size) and re-hashes the engine; a damaged or foreign entry, or anything of the
wrong type where the cache expects a directory or a lock file, is moved to
`<root>/quarantine/` and rebuilt. `verify` and `prune` take the same locks. Temp directories
of killed processes are swept by the next build under that tag and by `prune`. A read-only
cache still serves hits (without a lock; nothing is written).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .files import TMP_TAG, file_sha256, fsync_dir, stale_temp_files, tmp_name

log = logging.getLogger(__name__)
ENGINE, MANIFEST = "engine.plan", "manifest.json"
MAX_MANIFEST = 1 << 20
QUARANTINE = "quarantine"


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
    path: Path | None          # None: --no-cache


def _is_real_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink()


def _regular(path: Path) -> os.stat_result | None:
    """lstat of a regular file (not a symlink, device or directory), else None."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


class EngineCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else default_root()

    def entry(self, arch: str, tag: str, key: str) -> Path:
        return self.root / arch / tag / key

    @contextlib.contextmanager
    def lock(self, entry: Path) -> Iterator[bool]:
        """Exclusive per-key lock; yields False (no lock, read-only) when the cache cannot be
        written."""
        try:
            self._make_dirs(entry.parent)
            lock = entry.parent / f".{entry.name}.lock"
            if lock.exists() or lock.is_symlink():
                if _regular(lock) is None:
                    self.quarantine(lock, "lock path is not a regular file")
            f = open(lock, "a")
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            yield False
            return
        with f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _make_dirs(self, folder: Path) -> None:
        """mkdir -p, moving anything of the wrong type (a file, a symlink) out of the way."""
        for part in [*reversed(folder.relative_to(self.root).parents), folder.relative_to(
                self.root)]:
            path = self.root / part
            if path != self.root and (path.is_symlink() or (path.exists() and not path.is_dir())):
                self.quarantine(path, "expected a directory")
        folder.mkdir(parents=True, exist_ok=True)

    def get_or_build(self, arch: str, tag: str, key: str,
                     build: Callable[[], tuple[bytes, dict[str, Any]]],
                     store: bool = True) -> Lookup:
        """The cached engine for this key, or build() once (under the lock) and store it.
        `store=False` (--no-cache): build() here, with the same manifest, stored nowhere."""
        def built() -> tuple[bytes, dict[str, Any]]:
            engine, manifest = build()
            return engine, {**manifest, "key": key, "arch": arch, "builder": tag,
                            "engine_sha256": hashlib.sha256(engine).hexdigest(),
                            "engine_bytes": len(engine), "created": time.time()}

        if not store:
            return Lookup(*built(), False, None)
        entry = self.entry(arch, tag, key)
        with self.lock(entry) as writable:
            found = self.read(entry, expect={"key": key, "arch": arch, "builder": tag},
                              writable=writable, layout="engine")
            if found is not None:
                if writable:
                    os.utime(entry)  # recency for prune
                return Lookup(found[0], found[1], True, entry)
            engine, manifest = built()
            if writable:
                self.sweep(entry.parent)
                self._write(entry, engine, manifest)
            return Lookup(engine, manifest, False, entry)

    def read(self, entry: Path, expect: dict[str, str] | None = None,
             writable: bool = True, layout: str | None = None) -> tuple[bytes, dict] | None:
        """(engine, manifest) if the entry exists and verifies; else None (quarantined).
        `layout`: "engine" or "stage", what the caller will serve (None: either)."""
        if not entry.exists() and not entry.is_symlink():
            return None
        problem, found = self.check(entry, expect, layout)
        if problem:
            log.warning("engine cache: %s: %s; %s", entry, problem,
                        "quarantined, rebuilding" if writable else "rebuilding (read-only)")
            if writable:
                self.quarantine(entry, problem)
            return None
        return found

    def problem(self, entry: Path, expect: dict[str, str] | None = None) -> str | None:
        """Why an entry cannot be used, or None."""
        return self.check(entry, expect)[0]

    def manifest(self, entry: Path) -> tuple[str | None, dict]:
        """(problem, {}) or (None, manifest) from the entry's layout and manifest alone,
        without reading the engine (or a stage entry's files)."""
        if not _is_real_dir(entry):
            return "not a directory", {}
        m_stat = _regular(entry / MANIFEST)
        if m_stat is None:
            return "manifest is missing or not a regular file", {}
        if m_stat.st_size > MAX_MANIFEST:
            return f"manifest of {m_stat.st_size} bytes", {}
        try:
            manifest = json.loads((entry / MANIFEST).read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            return f"unreadable manifest ({e})", {}
        if not isinstance(manifest, dict):
            return f"manifest is a {type(manifest).__name__}, not an object", {}
        files = _stage_files(manifest)
        if files is None:
            return "manifest's file list is malformed", {}
        expected = list(files) if "files" in manifest else [ENGINE]
        names = sorted(p.name for p in entry.iterdir())
        if names != sorted([*expected, MANIFEST]):
            return f"unexpected contents {names}", {}
        if any(_regular(entry / n) is None for n in expected):
            return "engine or manifest is not a regular file", {}
        return None, manifest

    def check(self, entry: Path, expect: dict[str, str] | None = None,
              layout: str | None = None) -> tuple[str | None, tuple[bytes, dict] | None]:
        """(problem, None) or (None, (engine, manifest)); reads nothing unbounded. A stage
        entry's files are checked (size, sha256) and left on disk: engine is b"". An entry
        of the other `layout` is a problem (a forged engine manifest listing stage files
        would otherwise be served as an empty engine)."""
        problem, manifest = self.manifest(entry)
        if problem:
            return problem, None
        found = "stage" if "files" in manifest else "engine"
        if layout is not None and found != layout:
            return f"expected a {layout} entry, found a {found} entry's manifest", None
        for k, v in (expect or {"key": entry.name}).items():
            if manifest.get(k) != v:
                return f"foreign entry ({k} {manifest.get(k)!r}, expected {v!r})", None
        files = _stage_files(manifest)
        if "files" in manifest:
            for name, (size, sha) in files.items():
                if (entry / name).lstat().st_size != size:
                    return f"truncated {name}", None
                if file_sha256(entry / name) != sha:
                    return f"{name}: sha256 mismatch", None
            return None, (b"", manifest)
        e_stat = (entry / ENGINE).lstat()
        size = manifest.get("engine_bytes")
        if not isinstance(size, int) or e_stat.st_size != size:
            return f"truncated engine ({e_stat.st_size} of {size} bytes)", None
        with open(entry / ENGINE, "rb") as f:
            data = f.read(size + 1)
        if len(data) != size or hashlib.sha256(data).hexdigest() != manifest.get("engine_sha256"):
            return "engine sha256 mismatch", None
        return None, (data, manifest)

    def quarantine(self, path: Path, reason: str) -> Path:
        """Move `path` (an entry, or anything of the wrong type) into the quarantine."""
        qdir = self.root / QUARANTINE
        if qdir.is_symlink() or (qdir.exists() and not qdir.is_dir()):
            qdir.unlink()
        qdir.mkdir(parents=True, exist_ok=True)
        dest = qdir / f"{path.name.lstrip('.')}-{time.time_ns()}"
        os.replace(path, dest)
        (qdir / f"{dest.name}.reason").write_text(reason + "\n")
        return dest

    def _write(self, entry: Path, engine: bytes, manifest: dict[str, Any]) -> None:
        self.write_files(entry, {ENGINE: engine}, manifest)

    def write_files(self, entry: Path, files: dict[str, bytes | Path],
                    manifest: dict[str, Any]) -> None:
        """Write `files` (contents, or files to copy) and the manifest into a temp directory
        and rename it to `entry` (the caller holds the entry's lock)."""
        tmp = tmp_name(entry)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            for name, data in [*files.items(),
                               (MANIFEST, json.dumps(manifest, indent=2).encode())]:
                if isinstance(data, Path):
                    shutil.copyfile(data, tmp / name)
                else:
                    (tmp / name).write_bytes(data)
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            if entry.is_symlink() or (entry.exists() and not entry.is_dir()):
                self.quarantine(entry, "expected an entry directory")
            elif entry.exists():
                shutil.rmtree(entry)  # a stale entry the caller found unusable
            fsync_dir(tmp)  # the entry's own names, then its name in the tag folder
            os.replace(tmp, entry)
            fsync_dir(entry.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def sweep(self, tag_dir: Path) -> list[Path]:
        """Remove temp directories that killed builds left under `tag_dir`."""
        removed = []
        for p in stale_temp_files(tag_dir) if _is_real_dir(tag_dir) else []:
            shutil.rmtree(p, ignore_errors=True) if _is_real_dir(p) else p.unlink()
            removed.append(p)
        return removed

    def tag_dirs(self) -> list[Path]:
        if not _is_real_dir(self.root):
            return []
        return sorted(t for a in self.root.iterdir() if _is_real_dir(a) and a.name != QUARANTINE
                      for t in a.iterdir() if _is_real_dir(t))

    def entries(self) -> list[Path]:
        """Every entry (arch/tag/key; symlinks and other wrong types included, so that
        verify can quarantine them), quarantine, lock and temp files excluded."""
        return sorted(e for t in self.tag_dirs() for e in t.iterdir()
                      if not e.name.startswith(".") and TMP_TAG not in e.name
                      and e.name != "timing.cache")

    def listing(self) -> list[dict[str, Any]]:
        """One row per entry, from its manifest (the engine is not read): path under the
        root, key, kind (engine | stage), source model, precision (a stage entry: the
        stage), arch, builder, size, creation time, and what is wrong with it if anything.
        Entries from before the manifest named its source have source None."""
        rows = []
        for e in self.entries():
            problem, m = self.manifest(e)
            files = _stage_files(m) or {}
            stage = "files" in m
            tag = e.parent.name
            rows.append({"entry": str(e.relative_to(self.root)), "key": e.name,
                         "kind": "stage" if stage or e.parent.parent.name == "stages"
                         else "engine", "source": m.get("source"),
                         "precision": m.get("precision") or m.get("stage"),
                         "arch": None if stage else e.parent.parent.name,
                         "builder": None if stage else builder_name(tag, m.get("builder_version")),
                         "bytes": m.get("engine_bytes") or sum(f[0] for f in files.values()),
                         "created": m.get("created"), "problem": problem})
        return rows

    def verify(self) -> list[tuple[Path, str | None]]:
        """(entry, problem or None) for every entry; damaged ones are quarantined."""
        out = []
        for entry in self.entries():
            with self.lock(entry) as writable:
                problem = self.problem(entry) if entry.exists() or entry.is_symlink() else None
                if problem and writable:
                    self.quarantine(entry, problem)
            out.append((entry, problem))
        return out

    def prune(self, max_age_days: float | None = None, max_size_mb: float | None = None) -> list[Path]:
        """Sweep temp directories; remove entries older than max_age_days, then the oldest
        until under max_size_mb (each under its key's lock)."""
        for t in self.tag_dirs():
            self.sweep(t)
        now, removed = time.time(), []
        items = sorted(((e, e.lstat().st_mtime, _size(e)) for e in self.entries()),
                       key=lambda t: t[1])
        keep = []
        for e, mtime, size in items:
            if max_age_days is not None and now - mtime > max_age_days * 86400:
                self._remove(e)
                removed.append(e)
            else:
                keep.append((e, size))
        total = sum(s for _, s in keep)
        for e, size in keep:
            if max_size_mb is None or total <= max_size_mb * (1 << 20):
                break
            self._remove(e)
            removed.append(e)
            total -= size
        return removed

    def _remove(self, entry: Path) -> None:
        with self.lock(entry):
            if _is_real_dir(entry):
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.is_symlink() or entry.exists():
                entry.unlink()


def builder_name(tag: str, version: str | None = None) -> str:
    """'tensorrt-rtx 1.7.1.116' from a cache tag ('trt-rtx-1.7.1') and the full version."""
    name = "tensorrt-rtx" if tag.startswith("trt-rtx-") else "tensorrt"
    return f"{name} {version or tag.rsplit('-', 1)[-1]}"


def _stage_files(manifest: dict) -> dict[str, tuple[int, str]] | None:
    """A stage entry's {file name: (bytes, sha256)}; {} for an engine entry; None when the
    list is malformed (a name that is a path, the manifest's own name)."""
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        return None
    out = {}
    for name, v in files.items():
        if (not isinstance(name, str) or name in ("", ".", "..", MANIFEST) or "/" in name
                or not isinstance(v, dict) or not isinstance(v.get("bytes"), int)
                or not isinstance(v.get("sha256"), str)):
            return None
        out[name] = (v["bytes"], v["sha256"])
    return out


def _size(entry: Path) -> int:
    if not _is_real_dir(entry):
        return 0
    return sum(p.lstat().st_size for p in entry.iterdir())
