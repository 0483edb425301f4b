"""The one exception type that carries a user-facing message and an exit code."""

import errno
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

    def __reduce__(self) -> tuple:  # whole across processes (Exception pickles args only)
        return (TrtBuildError, (self.message, self.code, self.record))



class OptionError(TrtBuildError):
    """A bad option value: `problem` said of `flag` (and of the file `where`). The CLI prints
    '[WHERE: ]FLAG: PROBLEM'; a release manifest names its own key instead of the flag."""

    def __init__(self, flag: str, problem: str, where: str | Path | None = None,
                 code: int = BAD_INPUT):
        lead = f"{where}: " if where is not None else ""
        super().__init__(f"{lead}{flag}: {problem}", code)
        self.flag, self.problem = flag, f"{lead}{problem}"
        self._args = (flag, problem, where, code)

    def __reduce__(self) -> tuple:
        return (OptionError, self._args)


# what the machine refuses, not a bug: a full disk, a read-only or forbidden path, a name
# too long for the filesystem (os.strerror gives the words)
ENVIRONMENT = {errno.ENOSPC: "free some space or point --out/--cache-dir elsewhere",
               errno.EDQUOT: "free some space or point --out/--cache-dir elsewhere",
               errno.EROFS: "choose a writable --out/--cache-dir",
               errno.EACCES: "check the path's permissions",
               errno.EPERM: "check the path's permissions",
               errno.ENAMETOOLONG: "use a shorter name"}


def environment_error(e: BaseException) -> TrtBuildError | None:
    """An OSError the machine raised about a path (disk full, read-only, permission, name
    too long) as a user error naming the path; None for anything else."""
    if not isinstance(e, OSError) or e.errno not in ENVIRONMENT:
        return None
    where = f"{e.filename}: " if e.filename else ""
    return TrtBuildError(f"{where}{e.strerror or errno.errorcode[e.errno]} "
                         f"({ENVIRONMENT[e.errno]})", BAD_INPUT)
