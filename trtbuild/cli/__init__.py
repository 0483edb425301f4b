"""Command line: `main()` parses, runs one command, and turns every failure into one line
on stderr and an exit code (trtbuild.errors); a traceback only with -v."""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

from ..errors import BAD_INPUT, INTERNAL_ERROR, INTERRUPTED, TrtBuildError, environment_error, internal_error
from .args import build_parser
from .args import commands as subparsers_of  # not `commands`: the submodule of that name replaces it


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    subparsers = subparsers_of(parser)
    if argv and not argv[0].startswith("-") and argv[0] not in subparsers:
        argv.insert(0, "build")
    args = parser.parse_args(argv)
    if args.command in (None, "help"):
        topic = getattr(args, "topic", None)
        if topic and topic not in subparsers:
            print(f"trtbuild: error: no command '{topic}' (commands: "
                  f"{', '.join(subparsers)})", file=sys.stderr)
            return BAD_INPUT
        (subparsers[topic] if topic else parser).print_help()
        return 0
    _logging(args.verbose, args.quiet)
    signal.signal(signal.SIGTERM, _terminate)
    from .commands import COMMANDS

    try:
        return COMMANDS[args.command](args)
    except TrtBuildError as e:
        if args.verbose:
            logging.getLogger("trtbuild").exception("error")
        where = f" (report: {e.report})" if e.report else ""
        print(f"trtbuild: error: {e.message}{where}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        print("trtbuild: interrupted", file=sys.stderr)
        return INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the guard: one line, its own exit code
        told = environment_error(e)
        if told is not None:  # disk full, read-only, permission: the path and what to do
            if args.verbose:
                logging.getLogger("trtbuild").exception("error")
            print(f"trtbuild: error: {told.message}", file=sys.stderr)
            return told.code
        if args.verbose:
            logging.getLogger("trtbuild").exception("internal error")
        print(f"trtbuild: {internal_error(e)} (a bug in trtbuild or a library it drives; -v "
              "shows the traceback)", file=sys.stderr)
        return INTERNAL_ERROR


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # unwinds like Ctrl-C: temp files are removed on the way out


def _logging(verbose: bool, quiet: bool = False) -> None:
    if quiet and not verbose:
        from .. import progress

        progress.QUIET = True
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.WARNING
    logging.basicConfig(level=level,
                        format="trtbuild: %(levelname)s: %(message)s" if not verbose
                        else "%(levelname)s %(name)s: %(message)s")
    if not verbose:  # third-party loggers stay quiet unless -v
        for name in ("onnx_graphsurgeon", "polygraphy", "Polygraphy", "PIL", "torch"):
            logging.getLogger(name).setLevel(logging.ERROR)
