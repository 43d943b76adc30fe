"""The command ``engines``: which engines the storage has seen, and what each owns.

An operator running several engines against one PostgreSQL (or several
processes on one SQLite file) needs to see who is alive before acting on a
stuck run: an engine whose heartbeat is old while it still owns runs is a
dead or paused process whose leases will lapse. The command only reads the
storage's engine records (``Storage.engines``); it never writes.

JSON output (``--json``) is an array of objects with the keys ``engine_id``,
``host``, ``pid``, ``started_at``, ``last_heartbeat`` (ISO 8601 UTC strings,
``last_heartbeat`` may be ``null`` for an engine that never renewed),
``heartbeat_age_s`` (seconds, or ``null``) and ``runs_owned``.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from ._commands import format_table, open_storage

__all__ = ["cmd_engines", "configure_engines_parser"]


def configure_engines_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], storage: argparse.ArgumentParser
) -> None:
    """Add ``engines [--json]`` (with ``--storage``) to the command line."""
    parser = sub.add_parser(
        "engines",
        parents=[storage],
        help="list the engines the storage has seen (id, host, pid, heartbeat, runs owned)",
        description=(
            "List the engines registered in the storage: their id, host, pid, start time, "
            "last heartbeat (a lease renewal) and how many live runs each owns now. An "
            "engine that stopped cleanly is not listed; one that died is listed until its "
            "record is reaped, with an old heartbeat (its runs are taken over once their "
            "leases expire). Read-only."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print a JSON array of engines")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _age(now: datetime, value: datetime | None) -> float | None:
    return None if value is None else round((now - value).total_seconds(), 3)


def _stamp(value: datetime | None) -> str:
    if value is None:
        return "-"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


async def cmd_engines(args: argparse.Namespace) -> int:
    """Print the engines seen by ``--storage``, oldest first."""
    async with open_storage(args.storage, read_only=True) as storage:
        now = datetime.now(UTC)
        records = await storage.engines(now=now)
    records = sorted(records, key=lambda r: (r.started_at, r.engine_id))
    if args.json:
        rows: list[dict[str, Any]] = [
            {
                "engine_id": r.engine_id,
                "host": r.host,
                "pid": r.pid,
                "started_at": _iso(r.started_at),
                "last_heartbeat": _iso(r.last_heartbeat),
                "heartbeat_age_s": _age(now, r.last_heartbeat),
                "runs_owned": r.runs_owned,
            }
            for r in records
        ]
        print(json.dumps(rows, indent=2))
        return 0
    if not records:
        print("no engine is registered")
        return 0
    table = [
        (
            r.engine_id,
            r.host if r.host is not None else "-",
            r.pid if r.pid is not None else "-",
            _stamp(r.started_at),
            _stamp(r.last_heartbeat),
            "-" if r.last_heartbeat is None else f"{_age(now, r.last_heartbeat):.1f}s",
            r.runs_owned,
        )
        for r in records
    ]
    headers = ("ENGINE", "HOST", "PID", "STARTED", "LAST HEARTBEAT", "AGE", "RUNS OWNED")
    print(format_table(headers, table))
    print(f"{len(records)} engine(s)")
    return 0
