"""The argument parser: one ``configure_<command>_parser`` per subcommand."""

from __future__ import annotations

import argparse

from .._version import __version__
from ..core._instance import Status
from ..storage._sqlite_backup import DEFAULT_PAGES_PER_STEP
from ._engines import configure_engines_parser

__all__ = ["DEFAULT_DB", "DEFAULT_STORAGE", "build_parser"]

DEFAULT_DB = "hephaestus-demo.db"
"""The demo's database, in the current directory."""
DEFAULT_STORAGE = f"sqlite:///{DEFAULT_DB}"
"""Storage URL of the commands that inspect runs: the demo's database."""

_DESCRIPTION = """\
Durable workflows for Trio: run the demo, draw a workflow, inspect and steer runs.

Commands that take --storage read runs from a storage URL: sqlite:///relative.db,
sqlite:////absolute/path.db, postgresql://user@host:port/dbname (the 'postgres'
extra) or memory:// (default: %(default_storage)s, the demo's).
Exit status: 0 on success, 1 when the demo ends unexpectedly, 2 on a usage error,
an unknown id or a refused call (one line on stderr, no traceback).
"""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def _storage_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--storage",
        metavar="URL",
        default=DEFAULT_STORAGE,
        help=f"storage URL (default: {DEFAULT_STORAGE})",
    )
    return parent


def _workflow_module_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--workflow-module",
        metavar="MODULE",
        action="append",
        default=[],
        dest="workflow_modules",
        help=(
            "import MODULE (dotted name, or a path to a .py file) so its workflows can run; "
            "repeatable. The demo's OrderFlow is always known. The current directory is "
            "importable."
        ),
    )


def configure_demo_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the order workflow on SQLite, crash the engine mid-run and recover",
        description=(
            "Runs a few orders through the order workflow on SQLite with live progress. "
            "The first engine runs in a child process and is killed (SIGKILL) while some "
            "orders sleep in their durable Wait and others run steps; a second engine then "
            "recovers every run from the database and finishes them. Each run uses fresh "
            "order ids, so re-running on the same database keeps the earlier runs."
        ),
    )
    parser.add_argument(
        "--db",
        metavar="PATH",
        default=DEFAULT_DB,
        help=f"SQLite database file (default: ./{DEFAULT_DB}; created if missing)",
    )
    parser.add_argument(
        "--orders",
        metavar="N",
        type=_positive_int,
        default=6,
        help="number of orders (default: 6; the outcomes cycle through every path)",
    )
    # Internal: the child process that plays the engine which gets killed.
    parser.add_argument("--engine-child", metavar="TAG", default=None, help=argparse.SUPPRESS)


def configure_graph_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "graph",
        help="draw a workflow as Mermaid or ASCII (or print its graph as JSON)",
        description="Import MODULE and print the graph of its workflow class.",
    )
    parser.add_argument(
        "target",
        metavar="MODULE:Workflow",
        help="e.g. examples.order_flow:OrderFlow (MODULE may also be a path to a .py file)",
    )
    parser.add_argument(
        "--format",
        choices=("ascii", "mermaid"),
        default="ascii",
        help="output format (default: ascii)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the versions, steps and edges as JSON instead (see the CLI docs)",
    )


def configure_list_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "list",
        parents=[storage],
        help="list runs, oldest first, one page at a time",
        description=(
            "List runs, oldest first (by creation time, then run id), one page at a time. "
            "After a full page the command prints the cursor of the next one (--after); "
            "pages are keyset-paged, so runs that start meanwhile never shift or repeat a "
            "page. Read-only: safe while engines run on the same storage."
        ),
    )
    parser.add_argument(
        "--status",
        metavar="STATUS",
        action="append",
        help=(
            "only runs with this status: "
            f"{', '.join(s.value for s in Status)}; repeatable, or comma-separated "
            "(--status waiting,running)"
        ),
    )
    parser.add_argument(
        "--workflow",
        metavar="NAME",
        help="only runs of this workflow (registry name, or class name when it is unique)",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help=(
            "only runs created at or after WHEN: an ISO date or date-time (UTC unless it has "
            "an offset: 2026-12-01, 2026-12-01T08:30+02:00) or a duration before now "
            "(90s, 15m, 2h, 7d, 1w, 1h30m)"
        ),
    )
    parser.add_argument(
        "--limit",
        metavar="N",
        help="runs per page (default: 100)",
    )
    parser.add_argument(
        "--after",
        metavar="CURSOR",
        help="the next page: the cursor the previous page printed",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"runs": [...], "next_cursor": ...} (see the CLI docs for every key)',
    )


def configure_show_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "show",
        parents=[storage],
        help="show one run: state, failure and traceback, failed attempts, history",
        description=(
            "Show the live run of ID (a business id like orderid::abc, or a run id), "
            "else its most recent run: its steps, timers and pending wakeups, the failure "
            "(type, message, kind, step, attempt) with its traceback, the failed attempts "
            "and the execution history. Read-only: safe while engines run."
        ),
    )
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--workflow", metavar="NAME", help="choose among runs sharing ID")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"run": ..., "failure": ..., "failed_attempts": [...], "wakeups": [...]}',
    )


def configure_stats_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "stats",
        parents=[storage],
        help="counts by workflow and status, the oldest waiting run, timers due",
        description=(
            "Count runs by workflow and status, name the oldest waiting run and its age, "
            "and count the timers due now (a steady non-zero count means no engine fires "
            "them) and when the next one is due. Computed by the storage from indexes, "
            "without loading any run; read-only and safe while engines run."
        ),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the counts as JSON (see the CLI docs for every key)",
    )


def configure_backup_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "backup",
        parents=[storage],
        help="copy a live SQLite database safely (its -wal included)",
        description=(
            "Copy the SQLite database of --storage to DEST with SQLite's online backup API, "
            "safe while engines run: the copy holds every transaction committed before the "
            "backup started, including those still only in the -wal file (which copying "
            "the .db file alone would lose), and needs no -wal file of its own. Progress "
            "(pages copied / total) is printed to stderr. The source is only read."
        ),
    )
    parser.add_argument("dest", metavar="DEST", help="the new database file")
    parser.add_argument(
        "--force", action="store_true", help="overwrite DEST (and its -wal/-shm) if it exists"
    )
    parser.add_argument(
        "--pages-per-step",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_PAGES_PER_STEP,
        help=(
            f"pages copied between two progress lines (default: {DEFAULT_PAGES_PER_STEP}, "
            "4 MiB of 4 KiB pages)"
        ),
    )


def configure_resume_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "resume",
        parents=[storage],
        help="record an event for a run; the engine that owns it applies it",
        description=(
            "Record EVENT for run ID (for its parked step, or for a step that has not "
            "parked yet). The command runs no engine and no step: the engine that owns the "
            "run (an application's, running meanwhile on the same storage) applies it, "
            "or the next engine that claims the run. The run's workflow must be "
            "importable to check the event: see --workflow-module."
        ),
    )
    parser.add_argument("id", metavar="ID")
    parser.add_argument("event", metavar="EVENT")
    parser.add_argument("--step", metavar="STEP", help="step key, when several steps accept EVENT")
    parser.add_argument("--workflow", metavar="NAME", help="choose among live runs sharing ID")
    parser.add_argument(
        "--payload", metavar="JSON", help="a JSON object stored as the resumed step's updates"
    )
    parser.add_argument(
        "--dedup-key",
        metavar="KEY",
        dest="dedup_key",
        help="idempotency key: a key already recorded for the run makes this a no-op",
    )
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        default=5.0,
        help="how long to watch for an engine applying it (default: 5; 0: return once "
        "the resume is recorded)",
    )
    _workflow_module_option(parser)


def configure_cancel_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    parser = sub.add_parser(
        "cancel",
        parents=[storage],
        help="cancel a live run",
        description=(
            "Cancel the live run of ID: it never runs another step and its timers are "
            "dropped. The command records a cancel request; the engine that owns the run "
            "applies it at once (interrupting its steps), and a run no engine owns is "
            "cancelled here with one write. No step runs in this command."
        ),
    )
    parser.add_argument("id", metavar="ID")
    parser.add_argument("--workflow", metavar="NAME", help="choose among live runs sharing ID")
    parser.add_argument(
        "--wait",
        metavar="SECONDS",
        type=_seconds,
        default=10.0,
        help="how long to wait for the owning engine to apply it (default: 10)",
    )
    _workflow_module_option(parser)


def build_parser() -> argparse.ArgumentParser:
    """The ``hephaestus-trio`` parser (also ``python -m hephaestus_trio``)."""
    parser = argparse.ArgumentParser(
        prog="hephaestus-trio",
        description=_DESCRIPTION % {"default_storage": DEFAULT_STORAGE},
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    storage = _storage_options()
    configure_demo_parser(sub)
    configure_graph_parser(sub)
    configure_list_parser(sub, storage)
    configure_show_parser(sub, storage)
    configure_stats_parser(sub, storage)
    configure_resume_parser(sub, storage)
    configure_cancel_parser(sub, storage)
    configure_backup_parser(sub, storage)
    configure_engines_parser(sub, storage)
    return parser
