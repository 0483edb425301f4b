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


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of every process below `root`."""
    children: dict[int, list[int]] = {}
    started: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = proc_stat(int(entry))
            if st:
                children.setdefault(st[0], []).append(int(entry))
                started[int(entry)] = st[1]
    found: dict[int, int] = {}
    front = [root]
    while front:
        for pid in children.get(front.pop(), []):
            if pid not in found and pid in started:
                found[pid] = started[pid]
                front.append(pid)
    return found


def reap(noted: dict[int, int]) -> int:
    """SIGKILL each noted process still alive with the same start time; how many."""
    killed = 0
    for pid, start in noted.items():
        st = proc_stat(pid)
        if st is not None and st[1] == start:
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
