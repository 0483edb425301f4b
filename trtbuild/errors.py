"""The one exception type that carries a user-facing message and an exit code."""

from pathlib import Path

OK = 0
GATE_FAILED = 1         # an accuracy, latency or export-match gate failed
BAD_INPUT = 2           # a bad file, flag or value: the message names it
MISSING_CAPABILITY = 3  # no builder, an architecture it cannot target, no GPU to run on
INTERNAL_ERROR = 4      # a bug in trtbuild or a crash in a library it drives
INTERRUPTED = 130       # SIGINT / SIGTERM


def internal_error(e: BaseException) -> str:
    """The one line an unexpected exception is reported as (exit INTERNAL_ERROR)."""
    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
    return f"internal error: {type(e).__name__}: {first}"


class TrtBuildError(Exception):
    """A failure the user can act on: the CLI prints `message` in one line and exits `code`."""

    def __init__(self, message: str, code: int = BAD_INPUT, record: dict | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.record = record  # for a failed gate: the measurements that failed it
        self.report: Path | None = None  # the report.html of the run it ended, when one was written
