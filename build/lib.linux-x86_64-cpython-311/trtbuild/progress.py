"""Progress bars on stderr (rich); silent when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator


class Bar:
    """`advance(n)` moves the bar; `note(text)` shows what is happening now (e.g. the
    TensorRT build phase). Both do nothing when nothing is drawn."""

    def __init__(self, progress: Any = None, task: Any = None, description: str = ""):
        self._p, self._task, self._description = progress, task, description

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def note(self, text: str) -> None:
        if self._p is not None:
            self._p.update(self._task, description=f"{self._description}: {text}")


@contextlib.contextmanager
def bar(description: str, total: int | None) -> Iterator[Bar]:
    """Yield a Bar. Nothing is drawn unless stderr is a TTY (CI logs stay clean)."""
    if not sys.stderr.isatty():
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as p:
        yield Bar(p, p.add_task(description, total=total), description)
