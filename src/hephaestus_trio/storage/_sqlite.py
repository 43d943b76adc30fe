"""``SQLiteStorage``: the embedded durable backend (WAL, one writer, grouped commits).

The design in five points (``docs/storage.md`` has the long form):

- **Two connections, each behind its own ``CapacityLimiter(1)``.** The writer
  connection is only used inside ``trio.to_thread.run_sync`` holding the write
  limiter, the reader connection inside the read limiter, so the event loop
  never waits on the disk and no connection is used by two threads at once.
  WAL mode lets the reader see every committed write while a commit is running.
- **Grouped commits, leader-based.** A write (``create``, ``write``, ``claim``,
  ``release``, ``add_wakeup``, ...) is queued; the caller that finds no flush
  in flight becomes the flusher and commits every queued write (up to
  ``_MAX_BATCH``) in one transaction, one ``SAVEPOINT`` per write so that one
  write's failure (a ``UniqueViolation``, a ``LeaseLost``) rolls back only
  that write. Callers that arrive while a flush runs wait for it and the next
  caller forms the next batch. Every caller returns only once its own write
  is committed, or raises its own error. No background task is needed.
- **``synchronous=FULL``.** ``add_wakeup`` must be durable when it returns;
  FULL fsyncs the WAL at every commit, so not even a power loss drops an
  acknowledged write. Grouping amortises that fsync over a whole batch.
- **The database arbitrates ownership.** Every transaction is ``BEGIN
  IMMEDIATE``, which serialises writers across connections and processes, so
  a ``claim`` (one ``UPDATE ... RETURNING``) is atomic and a fenced ``write``
  (``WHERE owner = ? AND lease_epoch = ?``) can never overwrite a newer
  owner's state. Uniqueness is the partial unique index
  ``hephaestus_runs_live_unique_key_v1``; its ``IntegrityError`` is
  translated here into ``UniqueViolation``.
- **Changes from elsewhere are polled.** ``wait_for_change`` reads the
  writer's ``PRAGMA data_version`` (which other connections' commits move)
  every ``poll_interval`` seconds; engine death is proved by lock files
  (``_sqlite_engines.py``).

Cancellation: a write cancelled before its batch reaches the worker thread
never happens (it is taken out of the queue); once the batch is in the thread
it runs to completion, like any commit whose reply was lost.

The module is over the house's 400-line aim on purpose: the grouped commit
and the protocol methods share the writer's state and one locking discipline,
which reads best in one place. Opening and migrating the file is in
``_sqlite_schema.py``, row conversions in ``_sqlite_rows.py``, engine lock
files in ``_sqlite_engines.py``.
"""

from __future__ import annotations

import contextlib
import enum
import os
import socket
import sqlite3
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast, final

import attrs
import trio

from .._errors import HephaestusError, LeaseLost, StorageError
from ..core._instance import Instance, Status, TimerRecord
from ..core._serialization import loads
from . import _sqlite_engines as engines
from ._protocol import (
    Lease,
    NewWakeup,
    UniqueViolation,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
    WorkflowKey,
)
from ._query import normalize_filters
from ._sqlite_rows import (
    expiry,
    inserted,
    json_array,
    json_text,
    parse,
    run_row,
    timer_row,
    wakeup_from_row,
    wakeup_row,
    with_timers,
    workflows_param,
)
from ._sqlite_rows import timestamp as _timestamp
from ._sqlite_schema import SQL, check_header, prepare

__all__ = ["SQLiteStorage"]

_T = TypeVar("_T")
_Q = SQL.queries
_Apply = Callable[[sqlite3.Connection], object]
# Errors a write raises on purpose: they roll back its savepoint only and are
# that caller's answer (an sqlite3.Error becomes a StorageError first).
_WRITE_ERRORS = (HephaestusError, sqlite3.Error, ValueError)
_LIVE = frozenset(s.value for s in Status if s.is_live)
# Writes per transaction: enough to amortise the fsync, small enough that one
# flush never holds the write lock (or memory) for long.
_MAX_BATCH = 500


class _State(enum.Enum):
    QUEUED = "queued"
    IN_FLIGHT = "in flight"
    DONE = "done"


@attrs.define(eq=False)
class _Write:
    """One queued write and, once its batch is committed, its outcome."""

    apply: _Apply
    state: _State = _State.QUEUED
    result: object = None
    error: Exception | None = None


@final
class SQLiteStorage:
    """Durable storage in one SQLite file (WAL mode); safe to share between processes.

    Several engines, in one process or several, may run on one file: the
    leases in the file say which engine drives which run.

    Synopsis::

        async with SQLiteStorage("app.db") as storage:
            waiting = await storage.query(status="waiting")

    Args:
        path: the database file; created (with its schema) when missing. Engines
            also keep lock files in the folder ``<path>.engines``.
        busy_timeout: seconds a connection waits for another *process* holding
            the write lock before failing with ``StorageError``.
        poll_interval: seconds between two looks (``PRAGMA data_version``) for
            commits of other connections while ``wait_for_change`` waits; the
            delay before another process's wakeup is noticed without polling
            by the engine itself.

    Raises:
        StorageError: on ``open`` when the file is corrupt, not SQLite, another
            application's database or of a newer schema version (the file is
            left unchanged); on any use before ``open`` or after ``close``.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        poll_interval: float = 0.5,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(
                f"poll_interval must be a positive number of seconds, got {poll_interval!r}"
            )
        self._path = os.fspath(path)
        self._busy_timeout = busy_timeout
        self._poll_interval = poll_interval
        self._writer: sqlite3.Connection | None = None
        self._reader: sqlite3.Connection | None = None
        self._write_limiter = trio.CapacityLimiter(1)
        self._read_limiter = trio.CapacityLimiter(1)
        self._lifecycle = trio.Lock()
        self._is_open = False
        self._was_opened = False
        self._queue: list[_Write] = []
        self._flushing = False
        self._flushed = trio.Event()
        # Observed by the tests: how many transactions committed how many writes.
        self._commit_count = 0
        self._write_count = 0
        # wait_for_change: a counter moved by local changes and by a new
        # PRAGMA data_version (a commit of another connection).
        self._changes = 0
        self._changed = trio.Event()
        self._data_version: int | None = None
        # Lock files of the engines registered through this object (fd or None).
        self._engine_locks: dict[str, int | None] = {}

    def __repr__(self) -> str:
        return f"SQLiteStorage({self._path!r})"

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> SQLiteStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, then create or migrate the schema. Idempotent.

        Raises:
            StorageError: the file cannot be used (see the class docstring).
        """
        async with self._lifecycle:
            if self._is_open:
                return
            await trio.to_thread.run_sync(self._connect, limiter=self._write_limiter)
            self._is_open = self._was_opened = True
            self._data_version = await self._foreign_commits()

    async def close(self) -> None:
        """Commit every queued write, then disconnect. Idempotent; ``open`` again works."""
        async with self._lifecycle:
            if not self._is_open:
                return
            self._is_open = False  # refuse new work while the queue drains
            try:
                while self._queue or self._flushing:
                    if self._flushing:
                        await self._flushed.wait()
                    else:
                        await self._flush()
                async with self._read_limiter:
                    await trio.to_thread.run_sync(self._disconnect, limiter=self._write_limiter)
                # Closing the files releases the locks: registered engines of
                # this object are now provably gone for everyone else.
                locks, self._engine_locks = self._engine_locks, {}
                for fd in locks.values():
                    if fd is not None:
                        os.close(fd)
                # Waiters in wait_for_change wake up and find the storage closed.
                changed, self._changed = self._changed, trio.Event()
                changed.set()
            finally:
                # Cancelled before disconnecting: the storage stays usable.
                self._is_open = self._writer is not None

    def _connect(self) -> None:
        check_header(self._path)
        try:
            writer = self._new_connection()
        except sqlite3.Error as exc:
            raise self._error("cannot open the database", exc) from exc
        reader: sqlite3.Connection | None = None
        try:
            prepare(writer, self._path)
            writer.execute("PRAGMA synchronous=FULL")
            reader = self._new_connection()
            reader.execute("PRAGMA query_only=ON")
        except Exception as exc:
            for conn in (reader, writer):
                if conn is not None:
                    conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot open the database", exc) from exc
            raise
        self._writer, self._reader = writer, reader

    def _new_connection(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT.
        # check_same_thread=False: trio's worker threads change, the limiter
        # guarantees one user at a time.
        return sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )

    def _disconnect(self) -> None:
        writer, reader = self._writer, self._reader
        self._writer = self._reader = None
        for conn in (reader, writer):
            if conn is not None:
                conn.close()

    def _check_open(self) -> None:
        if not self._is_open:
            raise self._not_open()

    def _not_open(self) -> StorageError:
        if self._was_opened:
            return StorageError(f"SQLite storage {self._path!r} is closed")
        return StorageError(
            f"SQLite storage {self._path!r} is not open: use 'async with storage:' "
            "or 'await storage.open()' first"
        )

    def _error(self, what: str, exc: BaseException) -> StorageError:
        return StorageError(f"SQLite storage {self._path!r}: {what}: {exc}")

    # -- grouped commits -------------------------------------------------------------

    async def _submit(self, apply: Callable[[sqlite3.Connection], _T]) -> _T:
        """Queue a write and return once it is committed (or raise its error)."""
        self._check_open()
        write = _Write(apply)
        self._queue.append(write)
        try:
            while write.state is not _State.DONE:
                if self._flushing:
                    await self._flushed.wait()
                else:
                    await self._flush()
        finally:
            if write.state is _State.QUEUED:
                # Cancelled before its batch reached the thread: it never happens.
                self._queue.remove(write)
        if write.error is not None:
            raise write.error
        return cast("_T", write.result)

    async def _flush(self) -> None:
        """Become the flusher: commit everything queued so far in one transaction."""
        self._flushing = True
        batch, self._queue = self._queue[:_MAX_BATCH], self._queue[_MAX_BATCH:]
        for write in batch:
            write.state = _State.IN_FLIGHT
        try:
            await trio.to_thread.run_sync(self._apply_batch, batch, limiter=self._write_limiter)
        finally:
            # If we were cancelled before the thread started, nothing was
            # written: hand the batch back, in order, to the next flusher.
            unsent = [write for write in batch if write.state is _State.IN_FLIGHT]
            for write in unsent:
                write.state = _State.QUEUED
            self._queue[:0] = unsent
            self._flushing = False
            flushed, self._flushed = self._flushed, trio.Event()
            flushed.set()

    def _apply_batch(self, batch: list[_Write]) -> None:
        """Worker thread: one transaction, one savepoint per write. Never raises."""
        conn = self._writer
        try:
            if conn is None:  # pragma: no cover - close drains the queue first
                raise StorageError(f"SQLite storage {self._path!r} is closed")
            self._run_transaction(conn, batch)
        except Exception as exc:
            error = exc if isinstance(exc, StorageError) else self._error("write failed", exc)
            for write in batch:
                if write.error is None:  # a write's own error stays its answer
                    write.error, write.result = error, None
        finally:
            for write in batch:
                write.state = _State.DONE

    def _run_transaction(self, conn: sqlite3.Connection, batch: list[_Write]) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for write in batch:
                conn.execute("SAVEPOINT hephaestus_write")
                try:
                    write.result = write.apply(conn)
                except _WRITE_ERRORS as exc:
                    conn.execute("ROLLBACK TO hephaestus_write")
                    write.error = (
                        self._error("write failed", exc) if isinstance(exc, sqlite3.Error) else exc
                    )
                    write.state = _State.DONE
                conn.execute("RELEASE hephaestus_write")
            conn.execute("COMMIT")
        finally:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        self._commit_count += 1
        self._write_count += len(batch)

    # -- reads ---------------------------------------------------------------------

    async def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        return await trio.to_thread.run_sync(self._run_read, query, limiter=self._read_limiter)

    def _run_read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        conn = self._reader
        if conn is None:
            raise self._not_open()
        try:
            return query(conn)
        except sqlite3.Error as exc:
            raise self._error("read failed", exc) from exc

    # -- runs --------------------------------------------------------------------

    async def get(self, run_id: str) -> Instance | None:
        def query(conn: sqlite3.Connection) -> Instance | None:
            with _snapshot(conn):
                row = conn.execute(_Q["get_run"], {"run_id": run_id}).fetchone()
                if row is None:
                    return None
                timers = conn.execute(_Q["timers_of_run"], {"run_id": run_id}).fetchall()
            return with_timers(loads(row[0]), timers)

        return await self._read(query)

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
    ) -> list[Instance]:
        filters = normalize_filters(status, status_in, workflow, workflow_version, id)
        where: list[str] = []
        params: dict[str, object] = {}
        if filters.statuses is not None:
            names = sorted(s.value for s in filters.statuses)
            params.update({f"status{i}": name for i, name in enumerate(names)})
            where.append(f"status IN ({', '.join(f':status{i}' for i in range(len(names)))})")
        for column, value in (
            ("workflow", filters.workflow),
            ("workflow_version", filters.workflow_version),
            ("id", filters.id),
        ):
            if value is not None:
                where.append(f"{column} = :{column}")
                params[column] = value
        sql = _Q["select_runs"]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " " + _Q["order_runs"]

        def query(conn: sqlite3.Connection) -> list[Instance]:
            with _snapshot(conn):
                rows = conn.execute(sql, params).fetchall()
                timers: dict[str, list[tuple[str, str, str]]] = {}
                if rows:
                    ids = json_array(run_id for run_id, _ in rows)
                    for run_id, step, event, due_at in conn.execute(
                        _Q["timers_of_runs"], {"run_ids": ids}
                    ):
                        timers.setdefault(run_id, []).append((step, event, due_at))
            return [with_timers(loads(text), timers.get(run_id, ())) for run_id, text in rows]

        return await self._read(query)

    async def create(
        self, instance: Instance, *, now: datetime, owner: str | None = None, ttl: float = 30.0
    ) -> Lease | None:
        if not instance.status.is_live:
            raise ValueError(
                f"create takes a live run; {instance.run_id!r} is {instance.status.value}"
            )
        run_id, stamp = instance.run_id, _timestamp(now)
        expires = None if owner is None else expiry(now, ttl)
        row = run_row(instance) | {
            "owner": owner,
            "lease_epoch": 0 if owner is None else 1,
            "lease_expires_at": None if expires is None else _timestamp(expires),
            "now": stamp,
        }
        timers = [timer_row(run_id, timer, stamp) for timer in instance.timers]

        def apply(conn: sqlite3.Connection) -> None:
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

        await self._submit(apply)
        if owner is None or expires is None:
            self._bump()
            return None
        return Lease(run_id=run_id, owner=owner, epoch=1, expires_at=expires)

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        run_id, stamp = lease.run_id, _timestamp(now)
        if instance.run_id != run_id:
            raise ValueError(f"lease of {run_id!r} cannot write run {instance.run_id!r}")
        terminal = instance.status.is_terminal
        row = run_row(instance) | {
            "owner": lease.owner,
            "epoch": lease.epoch,
            "terminal": int(terminal),
            "now": stamp,
        }
        timers = [timer_row(run_id, timer, stamp) for timer in add_timers]
        stale = {"run_id": run_id, "waiting": json_array(sorted(instance.waiting_steps))}

        def apply(conn: sqlite3.Connection) -> list[Wakeup]:
            if conn.execute(_Q["write_run"], row).rowcount != 1:
                held = conn.execute(_Q["held_key"], row).fetchone()
                if held is None:
                    raise LeaseLost(run_id, lease.owner, lease.epoch)
                raise ValueError(
                    f"run {run_id!r}: unique_key is fixed at create ({held[0]!r}), "
                    f"cannot become {instance.unique_key!r}"
                )
            for seq in consume:
                gone = {"seq": seq, "run_id": run_id}
                if conn.execute(_Q["consume_wakeup"], gone).rowcount != 1:
                    raise WakeupGone(run_id, seq)
            if terminal:
                conn.execute(_Q["delete_run_wakeups"], {"run_id": run_id})
                return []
            # Timers of steps no longer parked go; add_timers are inserted as
            # given (a timer of a step not parked goes at the next write).
            conn.execute(_Q["drop_stale_timers"], stale)
            return [_insert_wakeup(conn, timer) for timer in timers]

        return await self._submit(apply)

    async def delete(self, run_id: str) -> None:
        def apply(conn: sqlite3.Connection) -> None:
            for name in ("delete_run_wakeups", "delete_run_dedup", "delete_run"):
                conn.execute(_Q[name], {"run_id": run_id})

        await self._submit(apply)

    async def purge(self, older_than: datetime) -> int:
        cutoff = {"older_than": _timestamp(older_than)}

        def apply(conn: sqlite3.Connection) -> int:
            conn.execute(_Q["purge_wakeups"], cutoff)
            conn.execute(_Q["purge_dedup"], cutoff)
            return int(conn.execute(_Q["purge_runs"], cutoff).rowcount)

        return await self._submit(apply)

    # -- leases ------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        now: datetime,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        limit: int,
        run_ids: Collection[str] | None = None,
    ) -> list[Lease]:
        expires = expiry(now, ttl)
        params = {
            "owner": owner,
            "now": _timestamp(now),
            "expires_at": _timestamp(expires),
            "workflows": workflows_param(workflows),
            "run_ids": None if run_ids is None else json_array(sorted(run_ids)),
            "limit": limit,
        }
        find = _Q["claimable" if run_ids is None else "claimable_among"]
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []

        def apply(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            # One write transaction (BEGIN IMMEDIATE): nobody commits in between.
            found: list[tuple[str, int]] = conn.execute(find, params).fetchall()
            if found:
                taken = params | {"run_ids": json_array(run_id for run_id, _ in found)}
                conn.execute(_Q["take_leases"], taken)
            return found

        return [
            Lease(run_id=run_id, owner=owner, epoch=epoch + 1, expires_at=expires)
            for run_id, epoch in await self._submit(apply)
        ]

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        expires = expiry(now, ttl)
        held = [lease for lease in leases if lease.owner == owner]
        params = {
            "owner": owner,
            "expires_at": _timestamp(expires),
            "leases": json_array([lease.run_id, lease.epoch] for lease in held),
        }
        if not held:
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []

        def apply(conn: sqlite3.Connection) -> set[tuple[str, int]]:
            return {(run_id, epoch) for run_id, epoch, _ in conn.execute(_Q["renew"], params)}

        renewed = await self._submit(apply)
        return [
            attrs.evolve(lease, expires_at=expires)
            for lease in held
            if (lease.run_id, lease.epoch) in renewed
        ]

    async def release(
        self, lease: Lease, *, now: datetime, wake_at: datetime | None, seen: int
    ) -> bool:
        params = {
            "run_id": lease.run_id,
            "owner": lease.owner,
            "epoch": lease.epoch,
            "seen": seen,
            "wake_at": None if wake_at is None else _timestamp(wake_at),
        }
        stamp = _timestamp(now)

        def apply(conn: sqlite3.Connection) -> bool:
            woke = bool(conn.execute(_Q["wakeup_above"], params).fetchone()[0])
            released = (params | {"wake_at": stamp}) if woke else params
            if conn.execute(_Q["release"], released).rowcount != 1:
                raise LeaseLost(lease.run_id, lease.owner, lease.epoch)
            return woke

        woke = await self._submit(apply)
        self._bump()
        return woke

    async def release_all(self, owner: str, *, now: datetime) -> int:
        params = {"owner": owner, "now": _timestamp(now)}

        def apply(conn: sqlite3.Connection) -> int:
            return int(conn.execute(_Q["release_all"], params).rowcount)

        count = await self._submit(apply)
        self._bump()
        return count

    async def next_wake(
        self, owner: str, *, workflows: Collection[WorkflowKey] | None
    ) -> datetime | None:
        params = {"owner": owner, "workflows": workflows_param(workflows)}

        def query(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(_Q["next_wake"], params).fetchone()
            return None if row is None else str(row[0])

        earliest = await self._read(query)
        return None if earliest is None else parse(earliest)

    # -- engines -----------------------------------------------------------------

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        self._check_open()
        host, pid = info.get("host"), info.get("pid")
        row = {
            "engine_id": engine_id,
            "host": host if isinstance(host, str) else socket.gethostname(),
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else os.getpid(),
            "started_at": _timestamp(now),
            "info": json_text(info),
        }
        engines.lock_path(self._path, engine_id)  # ValueError for an id unfit for a file name
        # The lock first, then the row: a row whose lock is free is a dead engine.
        if engine_id not in self._engine_locks:
            fd = await trio.to_thread.run_sync(engines.take_lock, self._path, engine_id)
            self._engine_locks[engine_id] = fd
        try:
            await self._submit(lambda conn: conn.execute(_Q["register_engine"], row))
        except BaseException:
            fd = self._engine_locks.pop(engine_id, None)
            engines.close_lock(fd, self._path, engine_id, unlink=True)
            raise

    async def unregister_engine(self, engine_id: str) -> None:
        params = {"engine_id": engine_id}
        # The row first, then the lock: an engine is never seen dead while registered.
        await self._submit(lambda conn: conn.execute(_Q["unregister_engine"], params))
        if engine_id in self._engine_locks:
            fd = self._engine_locks.pop(engine_id)
            await trio.to_thread.run_sync(
                lambda: engines.close_lock(fd, self._path, engine_id, unlink=True)
            )

    async def reap_engines(self, *, now: datetime) -> list[str]:
        stamp = _timestamp(now)

        def query(conn: sqlite3.Connection) -> list[str]:
            return [engine_id for (engine_id,) in conn.execute(_Q["engine_ids"])]

        others = [e for e in await self._read(query) if e not in self._engine_locks]
        if engines.fcntl is None or not others:
            return []

        def probe_all() -> dict[str, int]:
            found = {e: engines.probe(self._path, e) for e in others}
            return {e: fd for e, fd in found.items() if fd is not None}

        dead = await trio.to_thread.run_sync(probe_all)
        try:
            if dead:

                def apply(conn: sqlite3.Connection) -> None:
                    for engine_id in dead:
                        conn.execute(_Q["expire_owner"], {"owner": engine_id, "now": stamp})
                        conn.execute(_Q["unregister_engine"], {"engine_id": engine_id})

                await self._submit(apply)
                self._bump()
        finally:
            for engine_id, fd in dead.items():
                engines.close_lock(fd, self._path, engine_id, unlink=True)
        return sorted(dead)

    # -- wakeups -----------------------------------------------------------------

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        row = wakeup_row(wakeup, _timestamp(now))
        run_id, kind = wakeup.run_id, wakeup.kind
        key = {"run_id": run_id, "dedup_key": wakeup.dedup_key}

        def apply(conn: sqlite3.Connection) -> Wakeup | None:
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

        recorded = await self._submit(apply)
        if recorded is not None:
            self._bump()
        return recorded

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        def query(conn: sqlite3.Connection) -> list[Wakeup]:
            rows = conn.execute(_Q["wakeups_of_run"], {"run_id": run_id}).fetchall()
            return [wakeup_from_row(row) for row in rows]

        return await self._read(query)

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        params = {"run_id": run_id, "seq": seq}

        def apply(conn: sqlite3.Connection) -> bool:
            return bool(conn.execute(_Q["cancel_timer"], params).rowcount == 1)

        return await self._submit(apply)

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        params = {"owner": owner, "after": after}

        def query(conn: sqlite3.Connection) -> list[tuple[str, int]]:
            return [(run_id, seq) for run_id, seq in conn.execute(_Q["owned_wakeups"], params)]

        return await self._read(query)

    async def wait_for_change(self, seen: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        while self._changes == seen:
            with trio.move_on_after(self._poll_interval):
                await self._changed.wait()
            self._check_open()
            if self._changes == seen:
                version = await self._foreign_commits()
                if version != self._data_version:
                    self._data_version = version
                    self._bump()
        return self._changes

    async def _foreign_commits(self) -> int:
        """``PRAGMA data_version`` of the writer: it moves for every *other* connection's commit.

        Read on the writer (behind the write limiter, between batches) because
        a connection's own commits leave its ``data_version`` alone: the
        reader's would move for this object's own writes too, waking its
        engine for nothing at every poll.
        """
        self._check_open()

        def poll() -> int:
            conn = self._writer
            if conn is None:
                raise self._not_open()
            try:
                return _data_version(conn)
            except sqlite3.Error as exc:
                raise self._error("read failed", exc) from exc

        return await trio.to_thread.run_sync(poll, limiter=self._write_limiter)

    def _bump(self) -> None:
        """A local change that may give some engine work: wake ``wait_for_change``."""
        self._changes += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()


def _data_version(conn: sqlite3.Connection) -> int:
    """Moves whenever another connection (of any process) committed to the file."""
    return int(conn.execute(_Q["data_version"]).fetchone()[0])


@contextlib.contextmanager
def _snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """Run several reads in one read transaction, so they see one committed state."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        if conn.in_transaction:
            conn.execute("COMMIT")


def _insert_wakeup(conn: sqlite3.Connection, row: Mapping[str, Any]) -> Wakeup:
    seq = conn.execute(_Q["insert_wakeup"], row).lastrowid
    assert seq is not None
    return inserted(seq, row)


def _unique_violation(conn: sqlite3.Connection, instance: Instance) -> UniqueViolation | None:
    """The ``UniqueViolation`` an ``IntegrityError`` writing ``instance`` means, if any."""
    key = instance.unique_key
    if key is None or not instance.status.is_live:
        return None
    holder = conn.execute(_Q["live_holder"], {"unique_key": key}).fetchone()
    if holder is None or holder[0] == instance.run_id:
        return None
    return UniqueViolation(key, holder[0], holder[1])
