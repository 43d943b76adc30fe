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
and the twenty protocol methods share the writer's state and one locking
discipline, which reads best in one place; each method is only its
parameters, its call into the worker thread and its local bookkeeping. What
runs in the worker threads (the statements of each method) is in
``_sqlite_ops.py``, the parameters they take in ``_sqlite_rows.py``, opening
and migrating the file in ``_sqlite_schema.py``, engine lock files in
``_sqlite_engines.py``.
"""

from __future__ import annotations

import enum
import os
import socket
import sqlite3
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar, cast, final

import attrs
import trio

from .._errors import HephaestusError, StorageError
from ..core._instance import Instance, Status, TimerRecord
from . import _sqlite_engines as engines
from . import _sqlite_ops as ops
from ._advance import checked_advance, logger
from ._protocol import (
    Advancer,
    ClaimedRun,
    EngineRecord,
    Lease,
    NewWakeup,
    RunSummary,
    Wakeup,
    WorkflowKey,
)
from ._query import normalize_filters, normalize_now, normalize_page
from ._sqlite_access import (
    SQLITE_READONLY,
    open_error,
    open_read_only,
    primary_code,
    probe,
    read_only_error,
    read_only_target,
    refuse_unwritable,
)
from ._sqlite_rows import (
    expiry,
    json_array,
    json_text,
    parse,
    run_row,
    timer_row,
    wakeup_row,
    workflows_param,
)
from ._sqlite_rows import timestamp as _timestamp
from ._sqlite_schema import SQL, check_header, prepare

__all__ = ["SQLiteStorage"]

_T = TypeVar("_T")
_LONG_AGO = datetime(1970, 1, 1, tzinfo=UTC)
"""Lease expiry given to a dead engine's runs found while polling: expired for any ``now``."""
_Q = SQL.queries
_Apply = Callable[[sqlite3.Connection], object]
# Errors a write raises on purpose: they roll back its savepoint only and are
# that caller's answer (an sqlite3.Error becomes a StorageError first).
_WRITE_ERRORS = (HephaestusError, sqlite3.Error, ValueError)
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


def _claim_params(
    owner: str,
    now: datetime,
    expires: datetime,
    workflows: Collection[WorkflowKey] | None,
    limit: int,
    run_ids: Collection[str] | None,
) -> dict[str, object]:
    """The parameters of ``ops.claim``: one place, for ``claim`` and ``add_wakeup_and_claim``."""
    return {
        "owner": owner,
        "now": _timestamp(now),
        "expires_at": _timestamp(expires),
        "workflows": workflows_param(workflows),
        "run_ids": None if run_ids is None else json_array(sorted(set(run_ids))),
        "limit": limit,
    }


def _advance_in_claim(
    conn: sqlite3.Connection,
    lease: Lease,
    rows: ops.ClaimedRows,
    recorded: Wakeup,
    advance: Advancer,
    stamp: str,
) -> ClaimedRun:
    """Worker thread, in the claim's transaction: apply ``recorded`` as ``advance`` says.

    The run is decoded, advanced and encoded here, holding the write lock: the
    price of writing the claim and the transition in one commit. A write the
    advanced state cannot make is rolled back to its own savepoint, leaving
    the claim as without ``advance``.
    """
    instance, pending = ops.decode_claimed(rows)
    claimed = ClaimedRun(lease=lease, instance=instance, wakeups=tuple(pending))
    moved = checked_advance(advance, claimed, recorded)
    if moved is None:
        return claimed
    new = moved.instance
    run_id = lease.run_id
    row = run_row(new) | {"owner": lease.owner, "epoch": lease.epoch, "terminal": 0, "now": stamp}
    timers = [timer_row(run_id, timer, stamp) for timer in moved.timers]
    conn.execute("SAVEPOINT hephaestus_advance")
    try:
        ops.write(
            conn,
            lease,
            new,
            row,
            consume=[recorded.seq],
            timers=timers,
            waiting=json_array(sorted(new.waiting_steps)),
        )
        left = ops.wakeups(conn, run_id)
    except _WRITE_ERRORS:
        conn.execute("ROLLBACK TO hephaestus_advance")
        conn.execute("RELEASE hephaestus_advance")
        logger.exception(
            "run %s: writing wakeup %d applied in its claim failed; its driver applies it",
            run_id,
            recorded.seq,
        )
        return claimed
    conn.execute("RELEASE hephaestus_advance")
    return ClaimedRun(
        lease=lease, instance=ops.with_timers_of(conn, new), wakeups=tuple(left), applied=recorded
    )


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
        read_only: inspect the file without ever writing it (read-only media,
            no write permission, a backup under inspection): it is opened as a
            ``mode=ro`` URI, never created or migrated, and every write raises
            ``StorageError``. Caveat: a WAL database without its ``-shm`` file
            in a directory SQLite may not write is opened ``immutable=1`` when
            the file is not writable either; such an open does not see a
            concurrent writer (``_sqlite_access.py`` says when it is allowed).

    Raises:
        StorageError: on ``open`` when the file is corrupt, not SQLite, another
            application's database or of a newer schema version (the file is
            left unchanged); when it cannot be opened (missing directory,
            permission denied, a read-only file or directory without
            ``read_only=True``), naming the file and the cause; with
            ``read_only=True`` also when it is missing, empty or of an older
            schema version (open it read-write once to migrate it); on any use
            before ``open`` or after ``close``; on any write when read-only.
    """

    durable = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        busy_timeout: float = 30.0,
        poll_interval: float = 0.5,
        read_only: bool = False,
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
        self._read_only = read_only
        self._immutable = False  # a read-only open fell back to ``immutable=1``
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
        self._bell = threading.Event()
        self._doze_limiter = trio.CapacityLimiter(1)
        self._data_version: int | None = None
        # Lock files of the engines registered through this object (fd or None).
        self._engine_locks: dict[str, int | None] = {}

    def __repr__(self) -> str:
        if self._read_only:
            return f"SQLiteStorage({self._path!r}, read_only=True)"
        return f"SQLiteStorage({self._path!r})"

    @property
    def read_only(self) -> bool:
        """Whether this storage only reads (``read_only=True``)."""
        return self._read_only

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
                # A fresh bell too: one left set would make every doze after a
                # reopen return at once (wait_for_change would spin).
                changed, self._changed = self._changed, trio.Event()
                changed.set()
                bell, self._bell = self._bell, threading.Event()
                bell.set()
            finally:
                # Cancelled before disconnecting: the storage stays usable.
                self._is_open = self._writer is not None

    def _connect(self) -> None:
        check_header(self._path)
        if self._read_only:
            self._writer, self._reader, self._immutable = open_read_only(
                self._path, self._new_connection
            )
            return
        refuse_unwritable(self._path)
        try:
            writer = self._new_connection()
        except (sqlite3.Error, OSError) as exc:
            raise open_error(self._path, exc, read_only=False) from exc
        reader: sqlite3.Connection | None = None
        try:
            probe(writer)
            prepare(writer, self._path)
            writer.execute("PRAGMA synchronous=FULL")
            reader = self._new_connection()
            reader.execute("PRAGMA query_only=ON")
        except Exception as exc:
            for conn in (reader, writer):
                if conn is not None:
                    conn.close()
            if isinstance(exc, sqlite3.Error | OSError):
                raise open_error(self._path, exc, read_only=False) from exc
            raise
        self._writer, self._reader = writer, reader

    def _new_connection(self, immutable: bool = False) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT.
        # check_same_thread=False: trio's worker threads change, the limiter
        # guarantees one user at a time. Read-only: a ``file:`` URI (mode=ro).
        return sqlite3.connect(
            read_only_target(self._path, immutable=immutable) if self._read_only else self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            uri=self._read_only,
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
        if self._read_only and primary_code(exc) == SQLITE_READONLY:
            return read_only_error(self._path, f"{what}: {exc}")
        return StorageError(f"SQLite storage {self._path!r}: {what}: {exc}")

    # -- grouped commits -------------------------------------------------------------

    async def _submit(self, apply: Callable[[sqlite3.Connection], _T]) -> _T:
        """Queue a write and return once it is committed (or raise its error)."""
        self._check_open()
        if self._read_only:
            raise read_only_error(self._path)
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
        return await self._read(lambda conn: ops.get(conn, run_id))

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
        created_after: datetime | None = None,
        limit: int | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[Instance]:
        filters = normalize_filters(status, status_in, workflow, workflow_version, id)
        page = normalize_page(created_after, limit, after)
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
        if page.created_after is not None:
            where.append("created_at >= :created_after")
            params["created_after"] = _timestamp(page.created_after)
        if page.after is not None:
            # A row value: SQLite walks the (created_at, run_id) index from the cursor.
            where.append("(created_at, run_id) > (:after_created_at, :after_run_id)")
            params["after_created_at"] = _timestamp(page.after[0])
            params["after_run_id"] = page.after[1]
        sql = _Q["select_runs"]
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " " + _Q["order_runs"]
        if page.limit is not None:
            sql += " " + _Q["limit_runs"]
            params["limit"] = page.limit
        return await self._read(lambda conn: ops.query(conn, sql, params))

    async def summary(self, *, now: datetime) -> RunSummary:
        stamp = _timestamp(normalize_now(now))
        return await self._read(lambda conn: ops.summary(conn, stamp))

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
        await self._submit(lambda conn: ops.create(conn, instance, row, timers))
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
        row = run_row(instance) | {
            "owner": lease.owner,
            "epoch": lease.epoch,
            "terminal": int(instance.status.is_terminal),
            "now": stamp,
        }
        timers = [timer_row(run_id, timer, stamp) for timer in add_timers]
        waiting = json_array(sorted(instance.waiting_steps))
        consumed = list(consume)
        return await self._submit(
            lambda conn: ops.write(
                conn, lease, instance, row, consume=consumed, timers=timers, waiting=waiting
            )
        )

    async def delete(self, run_id: str) -> None:
        await self._submit(lambda conn: ops.delete(conn, run_id))

    async def purge(self, older_than: datetime) -> int:
        cutoff = {"older_than": _timestamp(older_than)}
        return await self._submit(lambda conn: ops.purge(conn, cutoff))

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
        params = _claim_params(owner, now, expires, workflows, limit, run_ids)
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []
        among = run_ids is not None
        claimed = await self._submit(lambda conn: ops.claim(conn, params, among=among))
        return [
            Lease(run_id=run_id, owner=owner, epoch=epoch + 1, expires_at=expires)
            for run_id, epoch in claimed
        ]

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        expires = expiry(now, ttl)
        held = [lease for lease in leases if lease.owner == owner]
        params = {
            "owner": owner,
            "now": _timestamp(now),
            "expires_at": _timestamp(expires),
            "leases": json_array([lease.run_id, lease.epoch] for lease in held),
        }
        renewed = await self._submit(lambda conn: ops.renew(conn, params))
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
        woke = await self._submit(lambda conn: ops.release(conn, lease, params, stamp))
        self._bump()
        return woke

    async def release_all(self, owner: str, *, now: datetime) -> int:
        params = {"owner": owner, "now": _timestamp(now)}
        count = await self._submit(lambda conn: ops.release_all(conn, params))
        self._bump()
        return count

    async def next_wake(
        self, owner: str, *, workflows: Collection[WorkflowKey] | None
    ) -> datetime | None:
        params = {"owner": owner, "workflows": workflows_param(workflows)}
        earliest = await self._read(lambda conn: ops.next_wake(conn, params))
        return None if earliest is None else parse(earliest)

    # -- engines -----------------------------------------------------------------

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        self._check_open()
        if self._read_only:
            raise read_only_error(self._path)  # before any lock file is made
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
            await self._submit(lambda conn: ops.register_engine(conn, row))
        except BaseException:
            fd = self._engine_locks.pop(engine_id, None)
            engines.close_lock(fd, self._path, engine_id, unlink=True)
            raise

    async def unregister_engine(self, engine_id: str) -> None:
        # The row first, then the lock: an engine is never seen dead while registered.
        await self._submit(lambda conn: ops.unregister_engine(conn, engine_id))
        if engine_id in self._engine_locks:
            fd = self._engine_locks.pop(engine_id)
            await trio.to_thread.run_sync(
                lambda: engines.close_lock(fd, self._path, engine_id, unlink=True)
            )

    async def engines(self, *, now: datetime) -> list[EngineRecord]:
        _timestamp(now)  # ValueError for a naive now, as everywhere
        rows = await self._read(ops.engines)
        return [
            EngineRecord(
                engine_id=engine_id,
                host=host,
                pid=pid,
                started_at=parse(started_at),
                last_heartbeat=None if beat is None else parse(beat),
                runs_owned=int(owned),
            )
            for engine_id, host, pid, started_at, beat, owned in rows
        ]

    async def reap_engines(self, *, now: datetime) -> list[str]:
        if self._read_only:
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []  # probing would create lock files beside a read-only database
        stamp = _timestamp(now)
        others = [e for e in await self._read(ops.engine_ids) if e not in self._engine_locks]
        if engines.fcntl is None or not others:
            return []

        def probe_all() -> dict[str, int]:
            found = {e: engines.probe(self._path, e) for e in others}
            return {e: fd for e, fd in found.items() if fd is not None}

        dead = await trio.to_thread.run_sync(probe_all)
        try:
            if dead:
                await self._submit(lambda conn: ops.expire_engines(conn, list(dead), stamp))
                self._bump()
        finally:
            # Still holding each lock, remove the file; closing releases the lock.
            for engine_id, fd in dead.items():
                engines.close_lock(fd, self._path, engine_id, unlink=True)
        return sorted(dead)

    # -- wakeups -----------------------------------------------------------------

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        row = wakeup_row(wakeup, _timestamp(now))
        recorded = await self._submit(lambda conn: ops.add_wakeup(conn, wakeup, row, max_pending))
        if recorded is not None:
            self._bump()
        return recorded

    async def add_wakeup_and_claim(
        self,
        wakeup: NewWakeup,
        *,
        now: datetime,
        max_pending: int | None = None,
        owner: str,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        advance: Advancer | None = None,
    ) -> tuple[Wakeup | None, ClaimedRun | None]:
        stamp = _timestamp(now)
        row = wakeup_row(wakeup, stamp)
        expires = expiry(now, ttl)
        params = _claim_params(owner, now, expires, workflows, 1, (wakeup.run_id,))

        def apply(
            conn: sqlite3.Connection,
        ) -> tuple[Wakeup | None, tuple[Lease, ops.ClaimedRows | ClaimedRun] | None]:
            recorded = ops.add_wakeup(conn, wakeup, row, max_pending)
            if recorded is None:
                return None, None
            claimed = ops.claim(conn, params, among=True)
            if not claimed:
                return recorded, None
            epoch = claimed[0][1] + 1
            lease = Lease(run_id=wakeup.run_id, owner=owner, epoch=epoch, expires_at=expires)
            rows = ops.claimed_rows(conn, wakeup.run_id)
            if advance is None:
                return recorded, (lease, rows)
            return recorded, (lease, _advance_in_claim(conn, lease, rows, recorded, advance, stamp))

        recorded, claimed = await self._submit(apply)
        if claimed is None:
            if recorded is not None:
                self._bump()
            return recorded, None
        lease, found = claimed
        if isinstance(found, ClaimedRun):
            return recorded, found
        instance, pending = ops.decode_claimed(found)  # here, as ``write`` encodes here
        return recorded, ClaimedRun(lease=lease, instance=instance, wakeups=tuple(pending))

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        key = {"run_id": run_id, "dedup_key": dedup_key}

        def query(conn: sqlite3.Connection) -> bool:
            return conn.execute(_Q["dedup_seen"], key).fetchone() is not None

        return await self._read(query)

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        return await self._read(lambda conn: ops.wakeups(conn, run_id))

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        return await self._submit(lambda conn: ops.cancel_timer(conn, run_id, seq))

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        return await self._read(lambda conn: ops.owned_wakeups(conn, owner, after))

    async def wait_for_change(self, seen: int) -> int:
        self._check_open()
        await trio.lowlevel.checkpoint()
        while self._changes == seen:
            # Doze on the real clock, in a worker thread, not on Trio's: polling
            # for other processes must make no Trio deadline, or a test's virtual
            # clock would crawl through a week-long timer in half-second steps.
            # A local change rings the bell and ends the doze at once.
            bell = self._bell
            await trio.to_thread.run_sync(
                bell.wait,
                self._poll_interval,
                limiter=self._doze_limiter,
                abandon_on_cancel=True,
            )
            self._check_open()
            if self._changes == seen and self._engine_locks:
                # An engine runs on this object: a peer that died (its lock file
                # is free) gives it work now, not when the leases run out.
                await self.reap_engines(now=_LONG_AGO)
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
                return ops.data_version(conn)
            except sqlite3.Error as exc:
                raise self._error("read failed", exc) from exc

        return await trio.to_thread.run_sync(poll, limiter=self._write_limiter)

    def _bump(self) -> None:
        """A local change that may give some engine work: wake ``wait_for_change``."""
        self._changes += 1
        changed, self._changed = self._changed, trio.Event()
        changed.set()
        bell, self._bell = self._bell, threading.Event()
        bell.set()
