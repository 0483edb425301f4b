"""Progress on stderr: a rich bar on a terminal; elsewhere (a CI log) a plain line at most
every PLAIN_EVERY seconds, the first after PLAIN_EVERY seconds, so short work prints
nothing."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Iterator

PLAIN_EVERY = 10.0


QUIET = False  # --quiet: no progress at all (set once by the CLI)


class Bar:
    """`advance(n)` moves the bar; `note(text)` shows what is happening now (e.g. the
    TensorRT build phase); `start(description, total, unit)` begins a new phase of the same
    work (the bar restarts at 0)."""

    def __init__(self, progress: Any = None, task: Any = None, description: str = "",
                 total: int | None = None, plain: bool = False):
        self._p, self._task, self._plain = progress, task, plain
        self._description, self._total, self._unit = description, total, ""
        self._done, self._text = 0, ""
        self._begin = self._last = time.monotonic()

    def start(self, description: str, total: int | None, unit: str = "") -> None:
        self._description, self._total, self._unit, self._done, self._text = \
            description, total, unit, 0, ""
        if self._p is not None:
            self._p.reset(self._task, total=total, description=description)
        self._tick()

    def advance(self, n: int = 1) -> None:
        self._done += n
        if self._p is not None:
            self._p.advance(self._task, n)
        self._tick()

    def note(self, text: str) -> None:
        self._text = text
        if self._p is not None:
            self._p.update(self._task, description=f"{self._description}: {text}")
        self._tick()

    def _tick(self) -> None:
        now = time.monotonic()
        if not self._plain or now - self._last < PLAIN_EVERY:
            return
        self._last = now
        count = f"{self._done}/{self._total}" if self._total else f"{self._done}"
        unit = f" {self._unit}" if self._unit else ""
        text = f" ({self._text})" if self._text else ""
        print(f"  ... {self._description}: {count}{unit}{text}, {now - self._begin:.0f}s",
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def bar(description: str, total: int | None) -> Iterator[Bar]:
    """Yield a Bar: drawn on stderr when it is a TTY, plain lines otherwise, nothing under
    --quiet (QUIET)."""
    if QUIET:
        yield Bar(description=description, total=total)
        return
    if not sys.stderr.isatty():
        yield Bar(description=description, total=total, plain=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as p:
        yield Bar(p, p.add_task(description, total=total), description, total)
