"""The JSON the read commands print (``--json``): plain dicts of a documented, stable shape.

``docs/cli.md`` documents every key. The shapes are the command line's own,
not the storage's document format, so a script keeps working when the
persisted format changes; keys are only ever added. Times are ISO-8601 UTC
strings with microseconds and a ``Z`` (``2026-12-02T03:04:05.123456Z``),
durations are float seconds, step lists are sorted.

A failed attempt is an ``ExecutionEntry`` whose ``error`` is set (its
``event`` is ``""``); the error's ``traceback`` is the bounded formatted
traceback the run keeps, ``null`` when none was recorded (a ``Fail`` result).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from ..core._instance import ErrorRecord, ExecutionEntry, Instance, Status
from ..core._workflow import Workflow
from ..storage import RunSummary, Wakeup

__all__ = [
    "error_view",
    "failed_attempts",
    "graph_view",
    "history_view",
    "run_detail",
    "run_view",
    "stamp",
    "summary_view",
    "traceback_of",
    "wakeup_view",
]


def _plain(value: Any) -> Any:
    """Nested mappings and sequences as dicts and lists (JSON-ready; contexts may be read-only)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def stamp(value: datetime | None) -> str | None:
    """ISO-8601 UTC with microseconds and ``Z``; ``None`` stays ``None``."""
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def traceback_of(error: ErrorRecord | None) -> str | None:
    """The formatted traceback the error record keeps, if it keeps one."""
    return None if error is None else error.traceback


def error_view(error: ErrorRecord | None) -> dict[str, Any] | None:
    """``{kind, type, message, step, attempt, traceback}`` of an error record, or ``None``."""
    if error is None:
        return None
    return {
        "kind": error.kind,
        "type": error.exception_type,
        "message": error.message,
        "step": error.step,
        "attempt": error.attempt,
        "traceback": traceback_of(error),
    }


def failed_attempts(instance: Instance) -> list[tuple[int, ExecutionEntry, ErrorRecord]]:
    """``(position in the history, from 1, entry, its error)`` of every failed attempt."""
    found = []
    for n, entry in enumerate(instance.execution_history, 1):
        error = entry.error
        if error is not None:
            found.append((n, entry, error))
    return found


def run_view(instance: Instance) -> dict[str, Any]:
    """One run as ``list --json`` prints it (``show --json`` adds to it)."""
    return {
        "run_id": instance.run_id,
        "id": instance.id,
        "workflow": instance.workflow,
        "workflow_version": instance.workflow_version,
        "status": instance.status.value,
        "created_at": stamp(instance.created_at),
        "updated_at": stamp(instance.updated_at),
        "active_steps": sorted(instance.active_steps),
        "running_steps": sorted(instance.running_steps),
        "waiting_steps": sorted(instance.waiting_steps),
        "timers": [
            {"step": t.step, "event": t.event, "fire_at": stamp(t.fire_at)} for t in instance.timers
        ],
        "error": error_view(instance.error),
    }


def history_view(instance: Instance) -> list[dict[str, Any]]:
    """The execution history, oldest first; a failed attempt has a non-null ``error``."""
    return [
        {
            "n": n,
            "at": stamp(entry.timestamp),
            "step": entry.step,
            "event": entry.event,
            "attempt": entry.attempt,
            "wakeup": entry.wakeup,
            "context_updates": _plain(entry.context_updates),
            "error": error_view(entry.error),
        }
        for n, entry in enumerate(instance.execution_history, 1)
    ]


def wakeup_view(wakeup: Wakeup) -> dict[str, Any]:
    """A recorded, not yet applied resume, timer or cancel request."""
    return {
        "seq": wakeup.seq,
        "kind": wakeup.kind.value,
        "step": wakeup.step,
        "event": wakeup.event,
        "payload": _plain(wakeup.payload),
        "dedup_key": wakeup.dedup_key,
        "due_at": stamp(wakeup.due_at),
        "created_at": stamp(wakeup.created_at),
    }


def run_detail(instance: Instance, *, runs_sharing_id: int, wakeups: Sequence[Wakeup]) -> Any:
    """``show --json``: the run with its context, history, failure and pending wakeups."""
    run = run_view(instance)
    run.update(
        {
            "completed_steps": sorted(instance.completed_steps),
            "context": {
                "initial": _plain(instance.context.initial),
                "steps": _plain(instance.context.steps),
            },
            "runtime_metadata": _plain(instance.runtime_metadata),
            "telemetry_metadata": _plain(instance.telemetry_metadata),
            "history": history_view(instance),
        }
    )
    return {
        "run": run,
        "runs_sharing_id": runs_sharing_id,
        "failure": error_view(instance.error),
        "failed_attempts": [
            {
                "n": n,
                "at": stamp(entry.timestamp),
                "step": entry.step,
                "attempt": entry.attempt,
                "error": error_view(error),
            }
            for n, entry, error in failed_attempts(instance)
        ],
        "wakeups": [wakeup_view(w) for w in wakeups],
    }


def _by_workflow(counts: Mapping[tuple[str, Status], int]) -> dict[str, dict[str, int]]:
    table: dict[str, dict[str, int]] = {}
    for (workflow, status), n in sorted(counts.items(), key=lambda kv: kv[0][0]):
        row = table.setdefault(workflow, {s.value: 0 for s in Status})
        row[status.value] += n
    return table


def summary_view(summary: RunSummary, *, now: datetime) -> dict[str, Any]:
    """``stats --json``: counts, the oldest waiting run and the timers, as of ``now``."""
    oldest = summary.oldest_waiting
    by_status = {s.value: summary.count(status=s) for s in Status}
    due_late = (
        None
        if summary.oldest_due_timer_at is None
        else (now - summary.oldest_due_timer_at).total_seconds()
    )
    next_in = (
        None if summary.next_timer_at is None else (summary.next_timer_at - now).total_seconds()
    )
    return {
        "at": stamp(now),
        "total": summary.count(),
        "by_status": by_status,
        "by_workflow": _by_workflow(summary.counts),
        "counts": [
            {"workflow": workflow, "status": status.value, "count": n}
            for (workflow, status), n in sorted(
                summary.counts.items(), key=lambda kv: (kv[0][0], kv[0][1].value)
            )
        ],
        "oldest_waiting": None
        if oldest is None
        else {
            "run_id": oldest.run_id,
            "id": oldest.id,
            "workflow": oldest.workflow,
            "created_at": stamp(oldest.created_at),
            "updated_at": stamp(oldest.updated_at),
            "age_seconds": (now - oldest.created_at).total_seconds(),
            "waiting_seconds": (now - oldest.updated_at).total_seconds(),
        },
        "timers": {
            "due": summary.due_timers,
            "oldest_due_at": stamp(summary.oldest_due_timer_at),
            "late_seconds": due_late,
            "next_at": stamp(summary.next_timer_at),
            "next_in_seconds": next_in,
        },
    }


def graph_view(workflow: type[Workflow]) -> dict[str, Any]:
    """``graph --json``: the workflow's versions, each with its start step, steps and edges.

    A plain workflow has one version; a versioned dispatcher lists each of its
    versions, oldest first, and names the ``current`` one.
    """
    if workflow.versions is not None:
        classes = [workflow.versions[v] for v in sorted(workflow.versions)]
        current = workflow.current
    else:
        classes = [workflow]
        current = workflow.version
    return {
        "workflow": workflow.name,
        "family": workflow.family,
        "current": current,
        "versions": [
            {
                "version": cls.version,
                "name": cls.name,
                "start": cls.definition().start,
                "steps": list(cls.graph().nodes),
                "edges": [
                    {
                        "source": e.source,
                        "event": e.event,
                        "target": e.target,
                        "dynamic": e.dynamic,
                    }
                    for e in cls.graph().edges
                ],
            }
            for cls in classes
        ],
    }
