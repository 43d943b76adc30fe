"""The ``hephaestus-trio`` command line (also ``python -m hephaestus_trio``).

``main(argv)`` parses the arguments and runs one command; it returns the exit
status instead of exiting, so tests call it in-process.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import trio

from .._errors import HephaestusError
from ._backup import cmd_backup
from ._commands import CLIError, cmd_cancel, cmd_graph, cmd_resume
from ._engines import cmd_engines
from ._inspect import cmd_list, cmd_show, cmd_stats
from ._parser import build_parser

__all__ = ["main"]

_USER_ERRORS = (CLIError, HephaestusError)


def _user_error(exc: BaseException) -> BaseException | None:
    """The one user error inside ``exc`` (nurseries wrap errors in groups), or None."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, _USER_ERRORS) else None


def _run(args: argparse.Namespace) -> int:
    command = args.command
    if command == "graph":
        return cmd_graph(args)
    if command == "backup":
        return cmd_backup(args)
    if command == "demo":
        from . import _demo

        if args.engine_child is not None:
            return trio.run(_demo.run_engine_child, args.db, args.engine_child, args.orders)
        return trio.run(_demo.run_demo, args.db, args.orders)
    handlers = {
        "list": cmd_list,
        "show": cmd_show,
        "stats": cmd_stats,
        "resume": cmd_resume,
        "cancel": cmd_cancel,
        "engines": cmd_engines,
    }
    return trio.run(handlers[command], args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hephaestus-trio`` with ``argv`` (default: ``sys.argv[1:]``); return the exit status.

    Exit status: 0 success, 1 the demo ended unexpectedly, 2 a usage error (a
    bad option value such as an unknown status, a bad ``--since`` or a bad
    cursor is an ``InvalidArgument``), an unknown id or a refused call
    (reported in one line on stderr), 130 Ctrl-C.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into e.g. `head`, which closed early: not an error of ours.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except Exception as exc:  # an ExceptionGroup from a nursery is an Exception too
        error = _user_error(exc)
        if error is None:
            raise
        print(f"hephaestus-trio {args.command}: error: {error}", file=sys.stderr)
        return 2
