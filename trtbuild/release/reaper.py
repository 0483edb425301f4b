"""Ends what a release's local Ray runtime leaves when its driver dies.

`ray.init()` starts the runtime's processes as the driver's descendants; after `kill -9` of
the driver, the GCS and raylet exit but the raylet's agents (DashboardAgent,
RuntimeEnvAgent) stayed alive for good (measured: still there after 30 s). `watch()` starts
this file as a plain script (stdlib only, no trtbuild import) with a pipe on its stdin,
before `ray.init()`: it notes the driver's descendants once a second, except those that
were there when it started (a test process's other children), and when the pipe closes (the
driver closed it, exited, or was killed) it kills every noted process still alive, and
exits. A process is noted with its start time, so a pid the system gave to another process
since is left alone. Linux (/proc) only; elsewhere watch() starts nothing.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

POLL = 1.0  # seconds between two looks at the driver's descendants


def watch(driver: int) -> subprocess.Popen | None:
    """Start the reaper for `driver`'s descendants (the caller keeps the returned process
    and closes its stdin when done); None where /proc is not there."""
    if not Path("/proc/self/stat").exists():
        return None
    reaper = subprocess.Popen([sys.executable, str(Path(__file__)), str(driver)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    assert reaper.stdout is not None
    reaper.stdout.read(1)  # its baseline is taken: what starts from now on is noted
    reaper.stdout.close()
    return reaper


def stop(reaper: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """Close the reaper's pipe (it kills what is left) and wait for it."""
    if reaper is None:
        return
    stdin: IO[bytes] | None = reaper.stdin
    if stdin is not None:
        stdin.close()
    try:
        reaper.wait(timeout)
    except subprocess.TimeoutExpired:
        reaper.kill()


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live process, else None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ')'
    return int(fields[1]), int(fields[19])


def _children(pid: int) -> list[int] | None:
    """The children of `pid` from /proc/PID/task/*/children (None where the kernel has no
    such files: the caller scans every process instead)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except FileNotFoundError:
            return None
        except OSError:
            continue
    return found


def descendants(*roots: int) -> dict[int, int]:
    """{pid: start time} of every process below `roots`, by walking the children files;
    where there are none, by one scan of all processes."""
    found: dict[int, int] = {}
    front = list(roots)
    parents: dict[int, list[int]] | None = None
    while front:
        pid = front.pop()
        kids = _children(pid) if parents is None else parents.get(pid, [])
        if kids is None:  # no children files: every process's parent, once
            parents = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit() and (st := proc_stat(int(entry))):
                    parents.setdefault(st[0], []).append(int(entry))
            kids = parents.get(pid, [])
        for kid in kids:
            st = proc_stat(kid)
            if st is not None and kid not in found:
                found[kid] = st[1]
                front.append(kid)
    return found


def reap(noted: dict[int, int]) -> int:
    """SIGKILL each noted process still alive with the same start time, and what it started
    since it was noted; how many."""
    live = {p: s for p, s in noted.items() if (proc_stat(p) or (0, None))[1] == s}
    killed = 0
    for pid in {**live, **descendants(*live)}:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except OSError:
            pass
    return killed


def main(driver: int) -> None:
    before = descendants(driver).items()  # this reaper among them
    os.write(sys.stdout.fileno(), b"+")
    noted: dict[int, int] = {}
    while True:
        noted.update({p: s for p, s in descendants(driver).items() if (p, s) not in before})
        ready, _, _ = select.select([sys.stdin.buffer], [], [], POLL)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # end of the pipe: the driver is done or dead
    reap(noted)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C goes to the driver
    main(int(sys.argv[1]))
