"""Atomic file writes: temp name in the same directory, fsync, os.replace."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from pathlib import Path
from typing import Iterator

from .errors import TrtBuildError

# trtbuild's own temp names: a user's `notes.tmp-123` is never taken for one and swept
TMP_TAG = ".trtbuild-tmp-"


def tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_TAG}{os.getpid()}")


# folders trtbuild stages large files in beside OUT's (`.trtbuild-work-<pid>-XXXX`)
WORK_DIR = ".trtbuild-work-"


def stale_work_dirs(folder: Path) -> list[Path]:
    """Staging folders in `folder` whose process is gone (a kill -9 during a large export
    left gigabytes there)."""
    found = []
    for p in folder.glob(f"{WORK_DIR}*") if folder.is_dir() else []:
        pid = p.name[len(WORK_DIR):].split("-", 1)[0]
        if p.is_dir() and not p.is_symlink() and pid.isdigit() and not pid_alive(int(pid)):
            found.append(p)
    return found


def stale_temp_files(folder: Path, recursive: bool = False) -> list[Path]:
    """`*.trtbuild-tmp-<pid>` entries in `folder` (or anywhere under it) whose process is
    gone (killed mid-write)."""
    out = []
    found = (folder.rglob if recursive else folder.glob)(f"*{TMP_TAG}*") if folder.is_dir() \
        else []
    for p in found:
        pid = p.name.rsplit(TMP_TAG, 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            out.append(p)
    return out


def pid_alive(pid: int) -> bool:
    """Is `pid` a running process? A zombie is not: a process killed with its parent stays
    one until init reaps it (a second or two) and writes nothing more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc: kill(0) is all we know
    return state not in ("Z", "X")


# every file this process put in place -> when (a count): a failed stage removes only what
# it wrote itself (pipeline.run_stages), never another process's file
WRITTEN: dict[str, int] = {}
_WRITES = itertools.count(1)


def note_written(path: str | Path) -> None:
    WRITTEN[os.path.realpath(path)] = next(_WRITES)


def written_since(mark: int) -> set[str]:
    """The files (real paths) this process put in place after `mark` (writes_so_far())."""
    return {p for p, n in WRITTEN.items() if n > mark}


def writes_so_far() -> int:
    return max(WRITTEN.values(), default=0)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it is renamed to `path` (and noted in
    WRITTEN), on error removed."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        note_written(path)
        fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable: without it a crash can lose the new name even
    though the file's bytes were synced (fsync(2) on the directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:  # a folder we may not open for reading: the rename stands, not synced
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode())


def ensure_dir(path: str | Path) -> Path:
    """Create an output directory; a file in its place is a user error."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TrtBuildError(f"{path}: output directory is an existing file")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise TrtBuildError(f"{path}: cannot create output directory (a parent is a file)")
    except OSError as e:
        raise TrtBuildError(f"{path}: cannot create output directory ({e.strerror})")
    # a read-only OUT fails here, not after the work (one probe name per thread)
    probe = tmp_name(path / f".write-check-{threading.get_ident()}")
    try:
        probe.unlink(missing_ok=True)  # a killed run's, with this pid
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
        os.unlink(probe)
    except OSError as e:
        if created:
            with contextlib.suppress(OSError):
                path.rmdir()
        raise TrtBuildError(f"{path}: cannot write to output directory ({e.strerror})")
    return path


def file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_utf8(path: Path, flag: str) -> Path:
    """A path trtbuild writes to must be UTF-8: ONNX's exporter and TensorRT take paths as
    UTF-8 strings (a byte like 0xff in --out failed deep in torch.onnx.export)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(str(path)).decode("utf-8", "backslashreplace")
        raise TrtBuildError(f"{shown}: {flag} is not a UTF-8 path (ONNX and TensorRT need "
                            "one); rename it")
    return path


def check_output_file(path: Path) -> Path:
    """An output file path the user named: its directory must exist, and whatever is there
    now must be a regular file (never replace a device, a directory or a socket)."""
    path = Path(path)
    if path.is_dir():
        raise TrtBuildError(f"{path}: output path is a directory")
    if path.exists() and not path.is_file():
        raise TrtBuildError(f"{path}: output path exists and is not a regular file")
    if path.is_symlink():
        raise TrtBuildError(f"{path}: output path is a symbolic link")
    if not path.parent.is_dir():
        raise TrtBuildError(f"{path.parent}: output directory does not exist")
    return path


def refuse_links(out: Path, names: tuple[str, ...] = (), deep: bool = False) -> None:
    """No write, rename or delete of trtbuild's may follow a symbolic link out of `out`:
    raises TrtBuildError(2) naming the first link found among `out`'s `names`, its
    engines/ folder and the arch folders in it, or (`deep`: a release's own OUT) anywhere
    under `out` (links are not followed while looking)."""
    from .errors import TrtBuildError

    found = [out / n for n in names if (out / n).is_symlink()]
    engines = out / "engines"
    if engines.is_symlink():
        found.append(engines)
    elif engines.is_dir():
        found += [p for p in sorted(engines.iterdir()) if p.is_symlink()]
    if deep and out.is_dir() and not found:
        for root, dirs, files in os.walk(out):  # followlinks=False: a linked dir is listed
            found += [Path(root) / n for n in sorted(dirs + files)
                      if (Path(root) / n).is_symlink()]
            if found:
                break
    if found:
        link = found[0]
        raise TrtBuildError(f"{link}: a symbolic link inside the output directory (to "
                            f"{os.readlink(link)}); trtbuild writes and removes files only "
                            "inside it: remove the link or choose another --out")
