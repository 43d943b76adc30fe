"""The read commands ``list``, ``show`` and ``stats``: safe on a live system.

They only read, through a read-only storage (an SQLite file is opened
``mode=ro``: never created, migrated or written), so they run beside the
application's engines on the same database and never take a lock an engine
waits on longer than one read. Every list is keyset-paged on ``(created_at,
run_id)``, so a page never shifts while engines start runs, and it is read in
chunks, so a long listing shows progress on stderr and never holds a read
transaction open for long. ``stats`` is computed by the storage from indexes
(``Storage.summary``); no run is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from .._errors import InvalidArgument
from ..core._instance import Instance, Status
from ..storage import RunSummary, Storage, Wakeup
from ._commands import find_run, format_table, open_storage, short_workflow
from ._options import (
    decode_cursor,
    encode_cursor,
    format_age,
    parse_since,
    parse_statuses,
)
from ._progress import Progress
from ._views import failed_attempts, run_detail, run_view, summary_view, traceback_of

__all__ = ["DEFAULT_LIMIT", "LIST_CHUNK", "cmd_list", "cmd_show", "cmd_stats", "parse_limit"]

DEFAULT_LIMIT = 100
"""Runs ``list`` prints when ``--limit`` is not given."""
LIST_CHUNK = 500
"""Runs read per storage query; a longer listing reads several chunks and reports progress."""


def _stamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def parse_limit(text: str | None) -> int:
    """``--limit``: a positive integer (default ``DEFAULT_LIMIT``).

    Raises:
        InvalidArgument: anything else.
    """
    if text is None:
        return DEFAULT_LIMIT
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InvalidArgument("--limit", text, "a positive integer (runs per page)")
    return value


async def _resolve_workflow(storage: Storage, name: str | None, now: datetime) -> str | None:
    """``--workflow`` as a registry name: itself if runs have it, else the one whose class
    name it is (``Approval`` for ``tests.cli.Approval``).

    Raises:
        InvalidArgument: the class name is shared by several registry names.
    """
    if name is None or await storage.query(workflow=name, limit=1):
        return name
    known = sorted({workflow for workflow, _ in (await storage.summary(now=now)).counts})
    matches = [w for w in known if short_workflow(w) == name]
    if len(matches) > 1:
        raise InvalidArgument("--workflow", name, f"one of {', '.join(matches)} (it is ambiguous)")
    return matches[0] if matches else name


async def _read_runs(
    storage: Storage,
    *,
    statuses: Sequence[Status] | None,
    workflow: str | None,
    since: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
    progress: Progress,
) -> tuple[list[Instance], bool]:
    """Up to ``limit`` runs from ``after`` on, and whether more follow (one more was found)."""
    runs: list[Instance] = []
    cursor = after
    chunks = 0
    while len(runs) <= limit:
        want = min(LIST_CHUNK, limit + 1 - len(runs))
        chunk = await storage.query(
            status_in=statuses,
            workflow=workflow,
            created_after=since,
            after=cursor,
            limit=want,
        )
        runs.extend(chunk)
        chunks += 1
        if len(chunk) < want:
            break
        cursor = (chunk[-1].created_at, chunk[-1].run_id)
        if len(runs) <= limit:
            progress.say(f"read {len(runs)} of at most {limit} runs...")
    more = len(runs) > limit
    if chunks > 1:
        progress.say(f"read {min(len(runs), limit)} runs in {chunks} queries")
    return runs[:limit], more


async def cmd_list(args: argparse.Namespace) -> int:
    """Print one page of runs matching the filters, oldest first, and the next page's cursor."""
    now = datetime.now(UTC)
    statuses = parse_statuses(args.status)
    since = None if args.since is None else parse_since(args.since, now=now)
    after = None if args.after is None else decode_cursor(args.after)
    limit = parse_limit(args.limit)
    progress = Progress(out=sys.stderr)
    progress.source = "list"
    async with open_storage(args.storage, read_only=True) as storage:
        workflow = await _resolve_workflow(storage, args.workflow, now)
        runs, more = await _read_runs(
            storage,
            statuses=statuses,
            workflow=workflow,
            since=since,
            after=after,
            limit=limit,
            progress=progress,
        )
    cursor = encode_cursor(runs[-1].created_at, runs[-1].run_id) if more else None
    if args.json:
        print(json.dumps({"runs": [run_view(i) for i in runs], "next_cursor": cursor}, indent=2))
        return 0
    if not runs:
        print("no runs match")
        return 0
    rows = [
        (
            i.id,
            short_workflow(i.workflow),
            i.workflow_version,
            i.status.value,
            ", ".join(sorted(i.active_steps)) or "-",
            _stamp(i.created_at),
            _stamp(i.updated_at),
        )
        for i in runs
    ]
    print(format_table(("ID", "WORKFLOW", "V", "STATUS", "ACTIVE", "CREATED", "UPDATED"), rows))
    print(f"{len(runs)} run(s)")
    if cursor is not None:
        print(f"more runs follow; next page: --after {cursor}")
    return 0


# -- show ------------------------------------------------------------------------------


def _indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _show_text(instance: Instance, count: int, wakeups: Sequence[Wakeup]) -> None:
    i = instance
    shared = f"  ({count} runs share this id; showing this one)" if count > 1 else ""
    fields = [
        ("id", i.id),
        ("run", i.run_id + shared),
        ("workflow", f"{i.workflow} (version {i.workflow_version})"),
        ("status", i.status.value),
        ("created", _stamp(i.created_at)),
        ("updated", _stamp(i.updated_at)),
        ("running", ", ".join(sorted(i.running_steps)) or "-"),
        ("parked", ", ".join(sorted(i.waiting_steps)) or "-"),
        ("completed", ", ".join(sorted(i.completed_steps)) or "-"),
    ]
    for timer in i.timers:
        fields.append(("timer", f"{timer.step} <- {timer.event!r} at {_stamp(timer.fire_at)}"))
    for w in wakeups:
        if w.kind.value == "timer":
            continue  # listed as timers above
        what = "cancel requested" if w.kind.value == "cancel" else f"{w.step} <- {w.event!r}"
        fields.append(("pending", f"{what} (recorded {_stamp(w.created_at)}, not applied yet)"))
    if i.error is not None:
        fields.append(("error", str(i.error)))
    fields.append(("context", json.dumps(dict(i.context.initial), sort_keys=True, default=str)))
    for key, updates in i.context.steps.items():
        fields.append((f"  {key}", json.dumps(dict(updates), sort_keys=True, default=str)))
    if i.runtime_metadata:
        fields.append(("metadata", json.dumps(dict(i.runtime_metadata), sort_keys=True)))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name + ':':<{width + 1}}  {value}")
    error = i.error
    if error is not None:
        print()
        print("failure:")
        print(f"    type:     {error.exception_type or '-'}")
        print(f"    message:  {error.message}")
        print(f"    kind:     {error.kind}")
        print(f"    step:     {error.step or '-'}")
        print(f"    attempt:  {error.attempt if error.attempt is not None else '-'}")
        trace = traceback_of(error)
        if trace:
            print("traceback:")
            print(_indent(trace))
        elif error.exception_type is not None:
            print("traceback: (none recorded)")
    failed = failed_attempts(i)
    if failed:
        print()
        print("failed attempts:")
        rows = [
            (n, _stamp(e.timestamp), e.step, e.attempt, err.exception_type or err.kind, err.message)
            for n, e, err in failed
        ]
        print(_indent(format_table(("#", "AT", "STEP", "ATTEMPT", "ERROR", "MESSAGE"), rows)))
    print()
    if i.execution_history:
        failed_at = {n for n, _, _ in failed}
        headers: tuple[str, ...] = ("#", "AT", "STEP", "EVENT", "ATTEMPT")
        history: list[tuple[Any, ...]] = [
            (n, _stamp(e.timestamp), e.step, e.event or "-", e.attempt)
            for n, e in enumerate(i.execution_history, 1)
        ]
        if failed_at:
            headers += ("RESULT",)
            history = [(*row, "failed" if row[0] in failed_at else "ok") for row in history]
        print(format_table(headers, history))
    else:
        print("no step has completed yet")


async def cmd_show(args: argparse.Namespace) -> int:
    """Print one run: status, steps, timers, pending wakeups, failure, context and history."""
    async with open_storage(args.storage, read_only=True) as storage:
        instance, count = await find_run(storage, args.id, args.workflow)
        wakeups = await storage.wakeups(instance.run_id)
    if args.json:
        detail = run_detail(instance, runs_sharing_id=count, wakeups=wakeups)
        print(json.dumps(detail, indent=2, default=str))
        return 0
    _show_text(instance, count, wakeups)
    return 0


# -- stats -----------------------------------------------------------------------------


def _stats_text(summary: RunSummary, now: datetime) -> None:
    statuses = [s.value for s in Status]
    workflows = sorted({workflow for workflow, _ in summary.counts})
    print(f"runs by workflow and status at {_stamp(now)}:")
    if workflows:
        rows: list[list[Any]] = []
        for workflow in workflows:
            counts = [summary.count(workflow=workflow, status=s) for s in statuses]
            rows.append([workflow, *counts, sum(counts)])
        totals = [summary.count(status=s) for s in statuses]
        rows.append(["(all)", *totals, summary.count()])
        headers = ("WORKFLOW", *(s.upper() for s in statuses), "TOTAL")
        print(_indent(format_table(headers, rows)))
    else:
        print("    no runs")
    oldest = summary.oldest_waiting
    if oldest is None:
        print("oldest waiting run: none")
    else:
        age = format_age((now - oldest.created_at).total_seconds())
        parked = format_age((now - oldest.updated_at).total_seconds())
        print(
            f"oldest waiting run: {oldest.id} ({short_workflow(oldest.workflow)}, "
            f"run {oldest.run_id}), created {_stamp(oldest.created_at)} ({age} ago), "
            f"waiting since {_stamp(oldest.updated_at)} ({parked})"
        )
    if summary.due_timers and summary.oldest_due_timer_at is not None:
        late = format_age((now - summary.oldest_due_timer_at).total_seconds())
        print(
            f"timers due now: {summary.due_timers} (the oldest due "
            f"{_stamp(summary.oldest_due_timer_at)}, {late} late; an engine running these "
            "workflows fires them)"
        )
    else:
        print("timers due now: 0")
    if summary.next_timer_at is None:
        print("next timer: none")
    else:
        wait = format_age((summary.next_timer_at - now).total_seconds())
        print(f"next timer: {_stamp(summary.next_timer_at)} (in {wait})")


async def cmd_stats(args: argparse.Namespace) -> int:
    """Print counts by workflow and status, the oldest waiting run and the timers due."""
    now = datetime.now(UTC)
    async with open_storage(args.storage, read_only=True) as storage:
        summary = await storage.summary(now=now)
    if args.json:
        print(json.dumps(summary_view(summary, now=now), indent=2))
        return 0
    _stats_text(summary, now)
    return 0
