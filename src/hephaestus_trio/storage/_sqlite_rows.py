"""Between Python values and ``SQLiteStorage``'s rows: timestamps, JSON parameters, records.

Pure functions, no connection: the storage module calls them on the event
loop (to build a write's parameters) or in a worker thread (to turn rows back
into ``Instance``, ``Wakeup`` and ``Lease`` values).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ..core._instance import Instance, TimerRecord
from ..core._serialization import dumps
from ._protocol import NewWakeup, Wakeup, WakeupKind, WorkflowKey

__all__ = [
    "expiry",
    "inserted",
    "json_array",
    "json_text",
    "parse",
    "run_row",
    "timer_row",
    "timestamp",
    "wakeup_from_row",
    "wakeup_row",
    "with_timers",
    "workflows_param",
]

WakeupRow = tuple[
    int, str, str, str | None, str | None, str | None, str | None, str, str, str | None
]
"""``seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace_context``."""


def timestamp(value: datetime) -> str:
    """Fixed-width ISO-8601 UTC text, so that text order is time order."""
    if value.tzinfo is None:
        raise ValueError(f"datetimes must be timezone-aware, got naive {value!r}")
    naive = value.astimezone(UTC).replace(tzinfo=None)
    return naive.isoformat(timespec="microseconds") + "Z"


def parse(text: str) -> datetime:
    """The datetime ``timestamp`` wrote (timezone UTC)."""
    return datetime.fromisoformat(text).astimezone(UTC)


def expiry(now: datetime, ttl: float) -> datetime:
    """``now + ttl`` seconds, in UTC: when a lease granted at ``now`` lapses."""
    if not ttl > 0:
        raise ValueError(f"a lease ttl must be a positive number of seconds, got {ttl!r}")
    return (now + timedelta(seconds=ttl)).astimezone(UTC)


def json_text(value: Mapping[str, Any]) -> str:
    """Canonical JSON of a payload or metadata mapping (``ValueError``/``TypeError`` if unsafe)."""
    return json.dumps(dict(value), allow_nan=False, sort_keys=True, separators=(",", ":"))


def json_array(values: Iterable[object]) -> str:
    """A JSON array parameter, read in SQL with ``json_each``."""
    return json.dumps(list(values), allow_nan=False, separators=(",", ":"))


def workflows_param(workflows: Collection[WorkflowKey] | None) -> str | None:
    """``[[name, version], ...]`` for the ``:workflows`` parameter; ``None`` means any."""
    if workflows is None:
        return None
    return json_array(sorted([str(name), int(version)] for name, version in workflows))


def run_row(instance: Instance) -> dict[str, object]:
    """The copied columns and the document (stored with no timers) of a run."""
    stored = instance if not instance.timers else attrs.evolve(instance, timers=())
    return {
        "run_id": instance.run_id,
        "id": instance.id,
        "workflow": instance.workflow,
        "workflow_version": instance.workflow_version,
        "status": instance.status.value,
        "unique_key": instance.unique_key,
        "created_at": timestamp(instance.created_at),
        "updated_at": timestamp(instance.updated_at),
        "instance": dumps(stored),
    }


def timer_row(run_id: str, timer: TimerRecord, created_at: str) -> dict[str, object]:
    """``insert_wakeup`` parameters of a timer wakeup."""
    return {
        "run_id": run_id,
        "kind": WakeupKind.TIMER.value,
        "step": timer.step,
        "event": timer.event,
        "payload": None,
        "dedup_key": None,
        "due_at": timestamp(timer.fire_at),
        "created_at": created_at,
        "trace_context": None,
    }


def wakeup_row(wakeup: NewWakeup, created_at: str) -> dict[str, object]:
    """``insert_wakeup`` parameters of a new wakeup."""
    return {
        "run_id": wakeup.run_id,
        "kind": wakeup.kind.value,
        "step": wakeup.step,
        "event": wakeup.event,
        "payload": None if wakeup.payload is None else json_text(wakeup.payload),
        "dedup_key": wakeup.dedup_key,
        "due_at": timestamp(wakeup.due_at),
        "created_at": created_at,
        "trace_context": (
            None if wakeup.trace_context is None else json_text(wakeup.trace_context)
        ),
    }


def wakeup_from_row(row: WakeupRow) -> Wakeup:
    """A ``Wakeup`` from its ``wakeups_of_run`` row (or an inserted row and its seq)."""
    seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace = row
    return Wakeup(
        seq=seq,
        run_id=run_id,
        kind=WakeupKind(kind),
        step=step,
        event=event,
        payload=None if payload is None else json.loads(payload),
        dedup_key=dedup_key,
        due_at=parse(due_at),
        created_at=parse(created_at),
        trace_context=None if trace is None else json.loads(trace),
    )


def inserted(seq: int, row: Mapping[str, Any]) -> Wakeup:
    """The ``Wakeup`` an ``insert_wakeup`` with ``row`` recorded as ``seq``."""
    return wakeup_from_row(
        (
            seq,
            row["run_id"],
            row["kind"],
            row["step"],
            row["event"],
            row["payload"],
            row["dedup_key"],
            row["due_at"],
            row["created_at"],
            row["trace_context"],
        )
    )


def with_timers(instance: Instance, timers: Iterable[tuple[str, str, str]]) -> Instance:
    """``instance`` as read: its ``timers`` are its pending timer wakeups, in seq order."""
    records = tuple(
        TimerRecord(step=step, event=event, fire_at=parse(due_at)) for step, event, due_at in timers
    )
    if records == instance.timers:
        return instance
    return attrs.evolve(instance, timers=records)
