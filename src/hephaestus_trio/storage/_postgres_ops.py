"""What ``PostgresStorage`` runs in its worker threads: one function per read or write.

Each takes a pooled psycopg connection (autocommit) and plain values, runs the
named statements of ``sql/postgres/queries.sql`` and returns plain values. A
function of several statements runs them in one transaction
(``conn.transaction()``); raising one of the protocol's errors (``LeaseLost``,
``WakeupGone``, ``WakeupRefused``, ``UniqueViolation``, ``ValueError``) rolls
it back and is the caller's answer. Single statements are their own
transaction.

``now`` is ``None`` under the database clock: the statements then use the
server's ``now()`` for every lease expiry and every comparison.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, LiteralString

import psycopg

from .._errors import HephaestusError, LeaseLost
from ..core._instance import Instance, Status, TimerRecord
from ..core._serialization import loads
from ._advance import checked_advance, logger
from ._postgres_schema import SQL
from ._protocol import (
    Advancer,
    ClaimedRun,
    Lease,
    NewWakeup,
    RunSummary,
    UniqueViolation,
    WaitingRun,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
    WorkflowKey,
)

__all__ = [
    "EngineRow",
    "add_wakeup",
    "cancel_timer",
    "claim",
    "create",
    "delete",
    "engines",
    "get",
    "json_text",
    "next_wake",
    "notify",
    "owned_wakeups",
    "purge",
    "query",
    "register_engine",
    "release",
    "release_all",
    "renew",
    "seen_dedup_key",
    "summary",
    "unregister_engine",
    "wakeups",
    "write",
]

Conn = psycopg.Connection[Any]
EngineRow = tuple[str, str | None, int | None, datetime, datetime | None, int]
_LIVE = frozenset(s.value for s in Status if s.is_live)
PURGE_LOCK = 0x4845_5048_0002
"""Key of the advisory lock one purge holds ("HEPH", 2)."""


def q(name: str) -> LiteralString:
    """A named query of ``queries.sql`` (trusted text shipped with the package)."""
    return SQL.queries[name]  # mypy reads LiteralString as str; pyright checks it


def utc(value: datetime) -> datetime:
    """A timestamptz as read, in UTC (psycopg reads it in the session's time zone)."""
    return value.astimezone(UTC)


def _workflows(workflows: Collection[WorkflowKey] | None) -> dict[str, Any]:
    if workflows is None:
        return {"any_workflow": True, "wf_names": [], "wf_versions": []}
    pairs = sorted((str(name), int(version)) for name, version in workflows)
    return {
        "any_workflow": False,
        "wf_names": [name for name, _ in pairs],
        "wf_versions": [version for _, version in pairs],
    }


def json_text(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    return json.dumps(dict(value), allow_nan=False, sort_keys=True, separators=(",", ":"))


def _wakeup(row: Sequence[Any]) -> Wakeup:
    seq, run_id, kind, step, event, payload, dedup_key, due_at, created_at, trace = row
    return Wakeup(
        seq=int(seq),
        run_id=run_id,
        kind=WakeupKind(kind),
        step=step,
        event=event,
        payload=None if payload is None else json.loads(payload),
        dedup_key=dedup_key,
        due_at=utc(due_at),
        created_at=utc(created_at),
        trace_context=None if trace is None else json.loads(trace),
    )


def _with_timers(instance: Instance, timers: Sequence[tuple[str, str, datetime]]) -> Instance:
    records = tuple(
        TimerRecord(step=step, event=event, fire_at=utc(due_at)) for step, event, due_at in timers
    )
    if records == instance.timers:
        return instance
    from attrs import evolve

    return evolve(instance, timers=records)


def _insert_timers(
    conn: Conn, run_id: str, timers: Sequence[TimerRecord], created_at: datetime
) -> list[Wakeup]:
    if not timers:
        return []
    rows = conn.execute(
        q("insert_timers"),
        {
            "run_id": run_id,
            "created_at": created_at,
            "steps": [t.step for t in timers],
            "events": [t.event for t in timers],
            "due_ats": [t.fire_at for t in timers],
        },
    ).fetchall()
    return [_wakeup(row) for row in rows]


# -- runs ------------------------------------------------------------------------


def get(conn: Conn, run_id: str) -> Instance | None:
    row = conn.execute(q("get_run"), {"run_id": run_id}).fetchone()
    if row is None:
        return None
    text, steps, events, due_ats = row
    return _with_timers(loads(text), list(zip(steps, events, due_ats, strict=True)))


def query(conn: Conn, sql: LiteralString, params: Mapping[str, Any]) -> list[Instance]:
    """The runs ``sql`` selects, with their timers, from one snapshot."""
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        rows = conn.execute(sql, params).fetchall()
        timers: dict[str, list[tuple[str, str, datetime]]] = {}
        if rows:
            ids = [run_id for run_id, _ in rows]
            for run_id, step, event, due_at in conn.execute(q("timers_of_runs"), {"run_ids": ids}):
                timers.setdefault(run_id, []).append((step, event, due_at))
    return [_with_timers(loads(text), timers.get(run_id, ())) for run_id, text in rows]


def summary(conn: Conn, now: datetime | None) -> RunSummary:
    """``summary``'s aggregates, from one statement (one consistent state)."""
    row = conn.execute(q("summary"), {"now": now}).fetchone()
    assert row is not None
    names, statuses, counts, oldest, oldest_times, due, oldest_due, upcoming = row
    waiting = None
    if oldest is not None:
        run_id, id_, workflow = oldest
        created_at, updated_at = oldest_times
        waiting = WaitingRun(
            run_id=run_id,
            id=id_,
            workflow=workflow,
            created_at=utc(created_at),
            updated_at=utc(updated_at),
        )
    return RunSummary(
        counts={
            (name, Status(status)): int(n)
            for name, status, n in zip(names, statuses, counts, strict=True)
        },
        oldest_waiting=waiting,
        due_timers=int(due),
        oldest_due_timer_at=None if oldest_due is None else utc(oldest_due),
        next_timer_at=None if upcoming is None else utc(upcoming),
    )


def create(
    conn: Conn,
    instance: Instance,
    row: Mapping[str, Any],
    *,
    now: datetime | None,
    owner: str | None,
    ttl: float,
    created_at: datetime,
) -> datetime | None:
    """Insert the run (and its timers); the lease's expiry when ``owner`` is given.

    One statement when the run has no timers (the usual case), else one transaction.
    """
    run_id = instance.run_id
    params = {**row, "owner": owner, "now": now, "ttl": ttl}
    if instance.timers:
        with conn.transaction():
            found = conn.execute(q("insert_run"), params).fetchone()
            if found is not None:
                _insert_timers(conn, run_id, instance.timers, created_at)
    else:
        found = conn.execute(q("insert_run"), params).fetchone()
    if found is None:
        if conn.execute(q("run_exists"), {"run_id": run_id}).fetchone() is not None:
            raise ValueError(f"a run with run_id {run_id!r} exists already")
        key = instance.unique_key
        holder = conn.execute(q("live_holder"), {"unique_key": key}).fetchone()
        if key is None or holder is None:  # pragma: no cover - the holder ended meanwhile
            raise ValueError(f"run {run_id!r} could not be inserted; retry the create")
        raise UniqueViolation(key, holder[0], holder[1])
    expires: datetime | None = found[0]
    return None if expires is None else utc(expires)


def write(
    conn: Conn,
    lease: Lease,
    instance: Instance,
    row: Mapping[str, Any],
    *,
    consume: Sequence[int],
    add_timers: Sequence[TimerRecord],
    created_at: datetime,
) -> list[Wakeup]:
    """The fenced write and its wakeup changes, atomically.

    One statement for the usual transition (nothing consumed, no timer added);
    a transaction when a consumed wakeup may be missing or timers are inserted.
    """
    terminal = instance.status.is_terminal
    wanted = list(dict.fromkeys(consume))  # a seq named twice is consumed once
    timers = [] if terminal else list(add_timers)
    if not wanted and not timers:
        _fenced_write(conn, lease, instance, row, wanted)
        return []
    with conn.transaction():
        _fenced_write(conn, lease, instance, row, wanted)
        return _insert_timers(conn, lease.run_id, timers, created_at)


def _fenced_write(
    conn: Conn, lease: Lease, instance: Instance, row: Mapping[str, Any], wanted: list[int]
) -> None:
    run_id = lease.run_id
    fenced = {
        **row,
        "owner": lease.owner,
        "epoch": lease.epoch,
        "seqs": wanted,
        "waiting": sorted(instance.waiting_steps),
    }
    statement = "end_run" if instance.status.is_terminal else "write_run"
    written = conn.execute(q(statement), fenced).fetchone()
    if written is None:
        held = conn.execute(q("held_key"), fenced).fetchone()
        if held is None:
            raise LeaseLost(run_id, lease.owner, lease.epoch)
        raise ValueError(
            f"run {run_id!r}: its identity is fixed at create (unique_key {held[0]!r}, "
            f"id {held[1]!r}, workflow {held[2]!r} version {held[3]}); a write cannot "
            "change it"
        )
    deleted = {int(seq) for seq in written[1]}
    for seq in wanted:
        if seq not in deleted:
            raise WakeupGone(run_id, seq)  # the caller's transaction rolls back


def delete(conn: Conn, run_id: str) -> None:
    conn.execute(q("delete_run"), {"run_id": run_id})


def purge(conn: Conn, older_than: datetime) -> int:
    """Delete old terminal runs; 0 at once when another engine is purging."""
    with conn.transaction():
        locked = conn.execute(q("purge_lock"), {"key": PURGE_LOCK}).fetchone()
        if locked is None or not locked[0]:
            return 0
        return conn.execute(q("purge_runs"), {"older_than": older_than}).rowcount


# -- leases ----------------------------------------------------------------------


def claim(
    conn: Conn,
    owner: str,
    *,
    now: datetime | None,
    ttl: float,
    workflows: Collection[WorkflowKey] | None,
    limit: int,
    run_ids: Collection[str] | None,
) -> list[Lease]:
    params = {
        "owner": owner,
        "now": now,
        "ttl": ttl,
        "limit": limit,
        "any_run": run_ids is None,
        "run_ids": sorted(set(run_ids or ())),
        **_workflows(workflows),
    }
    rows = conn.execute(q("claim"), params).fetchall()
    rows.sort(key=lambda r: (r[3], r[4], r[0]))  # the pick's order: RETURNING keeps none
    return [
        Lease(run_id=run_id, owner=owner, epoch=int(epoch), expires_at=utc(expires))
        for run_id, epoch, expires, _, _ in rows
    ]


def renew(
    conn: Conn, owner: str, leases: Sequence[Lease], *, now: datetime | None, ttl: float
) -> dict[tuple[str, int], datetime]:
    """``(run_id, epoch) -> new expiry`` of the leases extended (and the heartbeat beats)."""
    params = {
        "owner": owner,
        "now": now,
        "ttl": ttl,
        "run_ids": [lease.run_id for lease in leases],
        "epochs": [lease.epoch for lease in leases],
    }
    rows = conn.execute(q("renew"), params).fetchall()
    return {(run_id, int(epoch)): utc(expires) for run_id, epoch, expires in rows}


def release(
    conn: Conn, lease: Lease, *, now: datetime | None, wake_at: datetime | None, seen: int
) -> bool:
    params = {
        "run_id": lease.run_id,
        "owner": lease.owner,
        "epoch": lease.epoch,
        "now": now,
        "wake_at": wake_at,
        "seen": seen,
    }
    row = conn.execute(q("release"), params).fetchone()
    if row is None:
        raise LeaseLost(lease.run_id, lease.owner, lease.epoch)
    return bool(row[0])


def release_all(conn: Conn, owner: str, *, now: datetime | None) -> int:
    return conn.execute(q("release_all"), {"owner": owner, "now": now}).rowcount


def next_wake(conn: Conn, owner: str, workflows: Collection[WorkflowKey] | None) -> datetime | None:
    row = conn.execute(q("next_wake"), {"owner": owner, **_workflows(workflows)}).fetchone()
    return None if row is None else utc(row[0])


# -- engines ---------------------------------------------------------------------


def register_engine(
    conn: Conn, row: Mapping[str, Any], *, now: datetime | None, alive_here: Sequence[str]
) -> list[str]:
    """Register; returns the engines found dead (same host and pid), whose leases lapse now.

    ``alive_here``: engines registered by this process, which share its host and pid.
    """
    with conn.transaction():
        found = conn.execute(q("same_host_and_pid"), {**row, "alive_here": list(alive_here)})
        dead = [engine_id for (engine_id,) in found]
        if dead:
            conn.execute(q("expire_owners"), {"owners": dead, "now": now})
        conn.execute(q("register_engine"), {**row, "now": now})
    return sorted(dead)


def unregister_engine(conn: Conn, engine_id: str) -> None:
    conn.execute(q("unregister_engine"), {"engine_id": engine_id})


def engines(conn: Conn) -> list[EngineRow]:
    return [
        (
            engine_id,
            host,
            None if pid is None else int(pid),
            utc(started_at),
            None if beat is None else utc(beat),
            int(owned),
        )
        for engine_id, host, pid, started_at, beat, owned in conn.execute(q("engines"))
    ]


# -- wakeups ---------------------------------------------------------------------


def add_wakeup(
    conn: Conn,
    wakeup: NewWakeup,
    *,
    now: datetime | None,
    created_at: datetime,
    max_pending: int | None,
) -> Wakeup | None:
    run_id, kind = wakeup.run_id, wakeup.kind
    params = {
        "run_id": run_id,
        "kind": kind.value,
        "step": wakeup.step,
        "event": wakeup.event,
        "payload": json_text(wakeup.payload),
        "dedup_key": wakeup.dedup_key,
        "due_at": wakeup.due_at,
        "created_at": created_at,
        "trace_context": json_text(wakeup.trace_context),
        "now": now,
    }
    with conn.transaction():
        found = conn.execute(q("lock_run"), params).fetchone()
        if found is None:
            raise WakeupRefused(run_id, "not_live", "missing")
        status, dedup_seen, step_pending, resumes, cancel_pending = found
        if status not in _LIVE:
            raise WakeupRefused(run_id, "not_live", status)
        if kind is WakeupKind.RESUME:
            if wakeup.dedup_key is not None and dedup_seen:
                return None
            if step_pending:
                raise WakeupRefused(run_id, "step_pending")
            if max_pending is not None and resumes >= max_pending:
                raise WakeupRefused(run_id, "full")
        elif kind is WakeupKind.CANCEL and cancel_pending:
            return None
        row = conn.execute(q("insert_wakeup"), params).fetchone()
    assert row is not None
    return _wakeup(row)


def add_wakeup_and_claim(
    conn: Conn,
    wakeup: NewWakeup,
    *,
    now: datetime | None,
    created_at: datetime,
    max_pending: int | None,
    owner: str,
    ttl: float,
    workflows: Collection[WorkflowKey] | None,
    advance: Advancer | None = None,
    encode: Callable[[Instance], Mapping[str, Any]] | None = None,
) -> tuple[Wakeup | None, ClaimedRun | None]:
    """``add_wakeup``, ``claim`` of the run and the reads its new driver starts from, at once.

    With ``advance`` (and ``encode``, the run row ``write`` takes), the
    advanced state is written in the same transaction, in a savepoint of its
    own: a write it cannot make leaves the claim as without ``advance``.
    """
    run_id = wakeup.run_id
    with conn.transaction():
        recorded = add_wakeup(conn, wakeup, now=now, created_at=created_at, max_pending=max_pending)
        if recorded is None:
            return None, None
        leases = claim(
            conn, owner, now=now, ttl=ttl, workflows=workflows, limit=1, run_ids=(run_id,)
        )
        if not leases:
            return recorded, None
        instance = get(conn, run_id)
        assert instance is not None  # add_wakeup locked it live just now
        pending = tuple(wakeups(conn, run_id))
        claimed = ClaimedRun(lease=leases[0], instance=instance, wakeups=pending)
        moved = None if advance is None else checked_advance(advance, claimed, recorded)
        if moved is None or encode is None:
            return recorded, claimed
        lease = leases[0]
        try:
            with conn.transaction():
                write(
                    conn,
                    lease,
                    moved.instance,
                    encode(moved.instance),
                    consume=[recorded.seq],
                    add_timers=moved.timers,
                    created_at=created_at,
                )
        except (HephaestusError, ValueError, psycopg.Error):
            logger.exception(
                "run %s: writing wakeup %d applied in its claim failed; its driver applies it",
                run_id,
                recorded.seq,
            )
            return recorded, claimed
        written = get(conn, run_id)
        assert written is not None  # written live just now, under our lease
        left = tuple(wakeups(conn, run_id))
    return recorded, ClaimedRun(lease=lease, instance=written, wakeups=left, applied=recorded)


def seen_dedup_key(conn: Conn, run_id: str, dedup_key: str) -> bool:
    key = {"run_id": run_id, "dedup_key": dedup_key}
    return conn.execute(q("dedup_seen"), key).fetchone() is not None


def wakeups(conn: Conn, run_id: str) -> list[Wakeup]:
    rows = conn.execute(q("wakeups_of_run"), {"run_id": run_id}).fetchall()
    return [_wakeup(row) for row in rows]


def cancel_timer(conn: Conn, run_id: str, seq: int) -> bool:
    row = conn.execute(q("cancel_timer"), {"run_id": run_id, "seq": seq}).fetchone()
    return row is not None


def owned_wakeups(
    conn: Conn, owner: str, after: int, previous: str | None
) -> tuple[list[tuple[str, int]], str]:
    """The owned runs with new wakeups, and the snapshot to pass as ``previous`` next time."""
    params = {"owner": owner, "after": after, "previous": previous}
    row = conn.execute(q("owned_wakeups"), params).fetchone()
    assert row is not None  # an aggregate: always one row
    snapshot, run_ids, tops = row
    return [(run_id, int(top)) for run_id, top in zip(run_ids, tops, strict=True)], str(snapshot)


def notify(conn: Conn, sender: str) -> None:
    """One change hint to every listener; the payload is the sending storage's id."""
    conn.execute(q("notify"), {"sender": sender})
