"""What ``SQLiteStorage`` runs in its worker threads: one function per read or write.

Each takes the connection and parameters prepared on the event loop
(``_sqlite_rows.py``), runs its named statements (``queries.sql``) and returns
plain values. A write function runs inside the ``SAVEPOINT`` its grouped
commit opened for it; raising one of the protocol's errors (``LeaseLost``,
``WakeupGone``, ``WakeupRefused``, ``UniqueViolation``, ``ValueError``) rolls
back that write alone and makes the error its caller's answer. A read
function runs on the reader connection, outside any transaction unless it
opens a ``snapshot``.

Writes run in ``BEGIN IMMEDIATE`` transactions, which hold the file's write
lock: a function that reads and then writes (``claim``, ``release``,
``add_wakeup``) sees no other connection commit in between.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from .._errors import LeaseLost
from ..core._instance import Instance, Status
from ..core._serialization import loads
from ._protocol import (
    Lease,
    NewWakeup,
    RunSummary,
    UniqueViolation,
    WaitingRun,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
)
from ._sqlite_rows import inserted, json_array, parse, wakeup_from_row, with_timers
from ._sqlite_schema import SQL

__all__ = [
    "add_wakeup",
    "cancel_timer",
    "claim",
    "create",
    "data_version",
    "delete",
    "engine_ids",
    "engines",
    "expire_engines",
    "get",
    "next_wake",
    "owned_wakeups",
    "purge",
    "query",
    "release",
    "release_all",
    "renew",
    "summary",
    "unregister_engine",
    "wakeups",
    "write",
]

_Q = SQL.queries
_LIVE = frozenset(s.value for s in Status if s.is_live)
Params = Mapping[str, Any]


@contextlib.contextmanager
def snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Run several reads in one read transaction, so they see one committed state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def data_version(conn: sqlite3.Connection) -> int:
    """Moves whenever another connection (of any process) committed to the file."""
    return int(conn.execute(_Q["data_version"]).fetchone()[0])


# -- runs ------------------------------------------------------------------------


def get(conn: sqlite3.Connection, run_id: str) -> Instance | None:
    with snapshot(conn):
        row = conn.execute(_Q["get_run"], {"run_id": run_id}).fetchone()
        if row is None:
            return None
        timers = conn.execute(_Q["timers_of_run"], {"run_id": run_id}).fetchall()
    return with_timers(loads(row[0]), timers)


ClaimedRows = tuple[str, list[tuple[str, str, str]], list[Any]]
"""A claimed run as stored: its document, its timers and its wakeup rows, still encoded."""


def claimed_rows(conn: sqlite3.Connection, run_id: str) -> ClaimedRows:
    """What a new driver starts from, read in the claim's own (write) transaction.

    Left encoded: decoding a large document here would hold the write lock
    (and every queued write) for it; the caller decodes after the commit.
    """
    key = {"run_id": run_id}
    (text,) = conn.execute(_Q["get_run"], key).fetchone()
    timers = conn.execute(_Q["timers_of_run"], key).fetchall()
    return text, timers, conn.execute(_Q["wakeups_of_run"], key).fetchall()


def with_timers_of(conn: sqlite3.Connection, instance: Instance) -> Instance:
    """``instance`` (just written) as ``get`` would read it back: with its pending timers."""
    timers = conn.execute(_Q["timers_of_run"], {"run_id": instance.run_id}).fetchall()
    return with_timers(instance, timers)


def decode_claimed(rows: ClaimedRows) -> tuple[Instance, list[Wakeup]]:
    text, timers, wakeups = rows
    return with_timers(loads(text), timers), [wakeup_from_row(row) for row in wakeups]


def query(conn: sqlite3.Connection, sql: str, params: Params) -> list[Instance]:
    """The runs ``sql`` selects, with their timers: one more ``SELECT`` for all of them."""
    with snapshot(conn):
        rows = conn.execute(sql, params).fetchall()
        timers: dict[str, list[tuple[str, str, str]]] = {}
        if rows:
            ids = json_array(run_id for run_id, _ in rows)
            for run_id, step, event, due_at in conn.execute(_Q["timers_of_runs"], {"run_ids": ids}):
                timers.setdefault(run_id, []).append((step, event, due_at))
    return [with_timers(loads(text), timers.get(run_id, ())) for run_id, text in rows]


def summary(conn: sqlite3.Connection, now: str) -> RunSummary:
    """``summary``'s four aggregates, in one read transaction (one consistent state)."""
    with snapshot(conn):
        counts = {
            (workflow, Status(status)): int(n)
            for workflow, status, n in conn.execute(_Q["summary_counts"])
        }
        oldest = conn.execute(_Q["oldest_waiting"]).fetchone()
        due, oldest_due = conn.execute(_Q["due_timers"], {"now": now}).fetchone()
        (upcoming,) = conn.execute(_Q["next_timer"], {"now": now}).fetchone()
    waiting = None
    if oldest is not None:
        run_id, id_, workflow, created_at, updated_at = oldest
        waiting = WaitingRun(
            run_id=run_id,
            id=id_,
            workflow=workflow,
            created_at=parse(created_at),
            updated_at=parse(updated_at),
        )
    return RunSummary(
        counts=counts,
        oldest_waiting=waiting,
        due_timers=int(due),
        oldest_due_timer_at=None if oldest_due is None else parse(oldest_due),
        next_timer_at=None if upcoming is None else parse(upcoming),
    )


def create(
    conn: sqlite3.Connection, instance: Instance, row: Params, timers: Sequence[Params]
) -> None:
    run_id = instance.run_id
    if conn.execute(_Q["run_exists"], {"run_id": run_id}).fetchone() is not None:
        raise ValueError(f"a run with run_id {run_id!r} exists already")
    try:
        conn.execute(_Q["insert_run"], row)
    except sqlite3.IntegrityError as exc:
        violation = _unique_violation(conn, instance)
        if violation is None:
            raise
        raise violation from exc
    conn.executemany(_Q["insert_wakeup"], timers)


def write(
    conn: sqlite3.Connection,
    lease: Lease,
    instance: Instance,
    row: Params,
    *,
    consume: Sequence[int],
    timers: Sequence[Params],
    waiting: str,
) -> list[Wakeup]:
    """The fenced write and its wakeup changes (``waiting``: JSON array of parked steps)."""
    run_id = lease.run_id
    statement = "end_run" if instance.status.is_terminal else "write_run"
    if conn.execute(_Q[statement], row).rowcount != 1:
        held = conn.execute(_Q["held_key"], row).fetchone()
        if held is None:
            raise LeaseLost(run_id, lease.owner, lease.epoch)
        raise ValueError(
            f"run {run_id!r}: its identity is fixed at create (unique_key {held[0]!r}, "
            f"id {held[1]!r}, workflow {held[2]!r} version {held[3]}); a write cannot "
            "change it"
        )
    for seq in dict.fromkeys(consume):  # a seq named twice is consumed once, as in memory
        if conn.execute(_Q["consume_wakeup"], {"seq": seq, "run_id": run_id}).rowcount != 1:
            raise WakeupGone(run_id, seq)
    if instance.status.is_terminal:
        conn.execute(_Q["delete_run_wakeups"], {"run_id": run_id})
        return []
    # Timers of steps no longer parked go; add_timers are inserted as given (a
    # timer of a step not parked goes at the next write).
    conn.execute(_Q["drop_stale_timers"], {"run_id": run_id, "waiting": waiting})
    return [_insert_wakeup(conn, timer) for timer in timers]


def delete(conn: sqlite3.Connection, run_id: str) -> None:
    for name in ("delete_run_wakeups", "delete_run_dedup", "delete_run"):
        conn.execute(_Q[name], {"run_id": run_id})


def purge(conn: sqlite3.Connection, cutoff: Params) -> int:
    conn.execute(_Q["purge_wakeups"], cutoff)
    conn.execute(_Q["purge_dedup"], cutoff)
    return int(conn.execute(_Q["purge_runs"], cutoff).rowcount)


# -- leases ----------------------------------------------------------------------


def claim(conn: sqlite3.Connection, params: Params, *, among: bool) -> list[tuple[str, int]]:
    """Find the claimable runs, then lease them: ``(run_id, epoch before the claim)``."""
    found: list[tuple[str, int]] = conn.execute(
        _Q["claimable_among" if among else "claimable"], params
    ).fetchall()
    if found:
        taken = {**params, "run_ids": json_array(run_id for run_id, _ in found)}
        conn.execute(_Q["take_leases"], taken)
    return found


def renew(conn: sqlite3.Connection, params: Params) -> set[tuple[str, int]]:
    """``(run_id, epoch)`` of the leases extended; the owner's heartbeat beats."""
    conn.execute(_Q["heartbeat"], params)
    return {(run_id, epoch) for run_id, epoch, _ in conn.execute(_Q["renew"], params)}


def release(conn: sqlite3.Connection, lease: Lease, params: Params, now: str) -> bool:
    """The fenced release; ``True`` (and ``wake_at = now``) when a wakeup above ``seen`` came."""
    woke = bool(conn.execute(_Q["wakeup_above"], params).fetchone()[0])
    released = {**params, "wake_at": now} if woke else params
    if conn.execute(_Q["release"], released).rowcount != 1:
        raise LeaseLost(lease.run_id, lease.owner, lease.epoch)
    return woke


def release_all(conn: sqlite3.Connection, params: Params) -> int:
    return int(conn.execute(_Q["release_all"], params).rowcount)


def next_wake(conn: sqlite3.Connection, params: Params) -> str | None:
    row = conn.execute(_Q["next_wake"], params).fetchone()
    return None if row is None else str(row[0])


# -- engines ---------------------------------------------------------------------


def register_engine(conn: sqlite3.Connection, row: Params) -> None:
    conn.execute(_Q["register_engine"], row)


def unregister_engine(conn: sqlite3.Connection, engine_id: str) -> None:
    conn.execute(_Q["unregister_engine"], {"engine_id": engine_id})


EngineRow = tuple[str, str | None, int | None, str, str | None, int]


def engines(conn: sqlite3.Connection) -> list[EngineRow]:
    """``(engine_id, host, pid, started_at, last_heartbeat, live runs held)`` of every engine."""
    return [tuple(row) for row in conn.execute(_Q["engines"])]


def engine_ids(conn: sqlite3.Connection) -> list[str]:
    return [engine_id for (engine_id,) in conn.execute(_Q["engine_ids"])]


def expire_engines(conn: sqlite3.Connection, engines: Sequence[str], now: str) -> None:
    """Dead engines: their live runs are claimable at once, their rows go."""
    for engine_id in engines:
        conn.execute(_Q["expire_owner"], {"owner": engine_id, "now": now})
        unregister_engine(conn, engine_id)


# -- wakeups ---------------------------------------------------------------------


def add_wakeup(
    conn: sqlite3.Connection, wakeup: NewWakeup, row: Params, max_pending: int | None
) -> Wakeup | None:
    run_id, kind = wakeup.run_id, wakeup.kind
    key = {"run_id": run_id, "dedup_key": wakeup.dedup_key}
    found = conn.execute(_Q["run_status"], {"run_id": run_id}).fetchone()
    if found is None:
        raise WakeupRefused(run_id, "not_live", "missing")
    if found[0] not in _LIVE:
        raise WakeupRefused(run_id, "not_live", found[0])
    if kind is WakeupKind.RESUME:
        if wakeup.dedup_key is not None and conn.execute(_Q["dedup_seen"], key).fetchone():
            return None
        pending = {"run_id": run_id, "step": wakeup.step}
        if conn.execute(_Q["pending_resume"], pending).fetchone() is not None:
            raise WakeupRefused(run_id, "step_pending")
        if max_pending is not None:
            count = conn.execute(_Q["count_resumes"], {"run_id": run_id}).fetchone()[0]
            if count >= max_pending:
                raise WakeupRefused(run_id, "full")
    elif kind is WakeupKind.CANCEL:
        if conn.execute(_Q["pending_cancel"], {"run_id": run_id}).fetchone() is not None:
            return None
    recorded = _insert_wakeup(conn, row)
    if kind is WakeupKind.RESUME and wakeup.dedup_key is not None:
        conn.execute(_Q["record_dedup"], key)
    conn.execute(_Q["wake_by"], {"run_id": run_id, "due_at": row["due_at"]})
    return recorded


def wakeups(conn: sqlite3.Connection, run_id: str) -> list[Wakeup]:
    rows = conn.execute(_Q["wakeups_of_run"], {"run_id": run_id}).fetchall()
    return [wakeup_from_row(row) for row in rows]


def cancel_timer(conn: sqlite3.Connection, run_id: str, seq: int) -> bool:
    return bool(conn.execute(_Q["cancel_timer"], {"run_id": run_id, "seq": seq}).rowcount == 1)


def owned_wakeups(conn: sqlite3.Connection, owner: str, after: int) -> list[tuple[str, int]]:
    params = {"owner": owner, "after": after}
    return [(run_id, seq) for run_id, seq in conn.execute(_Q["owned_wakeups"], params)]


# -- helpers ---------------------------------------------------------------------


def _insert_wakeup(conn: sqlite3.Connection, row: Params) -> Wakeup:
    seq = conn.execute(_Q["insert_wakeup"], row).lastrowid
    assert seq is not None
    return inserted(seq, row)


def _unique_violation(conn: sqlite3.Connection, instance: Instance) -> UniqueViolation | None:
    """The ``UniqueViolation`` an ``IntegrityError`` inserting ``instance`` means, if any."""
    key = instance.unique_key
    if key is None or not instance.status.is_live:
        return None
    holder = conn.execute(_Q["live_holder"], {"unique_key": key}).fetchone()
    if holder is None or holder[0] == instance.run_id:
        return None
    return UniqueViolation(key, holder[0], holder[1])
