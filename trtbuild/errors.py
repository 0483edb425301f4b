"""The one exception type that carries a user-facing message and an exit code."""

BAD_INPUT = 2
GATE_FAILED = 1
MISSING_CAPABILITY = 3


class TrtBuildError(Exception):
    """A failure the user can act on: the CLI prints `message` in one line and exits `code`."""

    def __init__(self, message: str, code: int = BAD_INPUT):
        super().__init__(message)
        self.message = message
        self.code = code
