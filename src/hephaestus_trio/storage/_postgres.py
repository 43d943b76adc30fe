"""``PostgresStorage``: several engines on several machines share one PostgreSQL database.

The design in five points (``docs/storage.md`` has the long form):

- **psycopg's synchronous driver, from Trio.** psycopg's async connection
  runs on asyncio only, so every call is one short transaction on a pooled
  synchronous connection (``psycopg_pool.ConnectionPool``) in a worker thread,
  entered through a ``CapacityLimiter`` sized to the pool; a connection is held
  for one transaction, never across a step. Cancelling a call really stops
  its query (``_postgres_io.py``).
- **The database arbitrates ownership.** A claim, takeover included, is ONE
  statement (``FOR NO KEY UPDATE SKIP LOCKED`` and the epoch bump together),
  a renewal is ONE statement for all of an engine's leases (and beats its
  heart), and every write is fenced (``WHERE owner = ... AND lease_epoch =
  ...``; no row means ``LeaseLost`` and a rollback).
- **Whose clock.** With ``clock="database"`` (the default) every lease expiry
  and every claimability and due-time comparison uses the server's
  ``now()``, so engines on machines whose clocks disagree still agree on who
  owns what; the ``now`` arguments are then only metadata (``created_at``). With
  ``clock="caller"`` the passed ``now`` is used exactly as SQLite uses it (the
  conformance suite and virtual-time tests drive time through it).
- **NOTIFY is a hint.** Changes that give another engine work (an unowned
  run, a wakeup, a release that found new wakeups, a shutdown's release)
  mark a hint pending; a system task sends it off the caller's path, at most
  one NOTIFY per ``notify_interval`` (a burst costs one per interval, never
  one per change), with only the sending storage's id as payload (it ignores
  its own echo). One dedicated LISTEN connection per opened storage is
  driven without a thread; ``wait_for_change`` also returns every
  ``poll_interval`` whatever happened, so a lost LISTEN connection
  (reconnected with backoff) or ``notify=False`` only delays work by one
  poll interval and loses nothing.
- **Proof of death.** PostgreSQL cannot see another machine's processes, but
  an engine registering with the host and pid of a registered engine proves
  that one gone (the pid was reused on that host): its leases lapse at once.

psycopg is imported only when a storage is opened, so this module (and
``import hephaestus_trio``) works without the ``postgres`` extra.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, LiteralString, TypeVar, cast, final

import attrs
import trio

from .._errors import StorageError
from ..core._instance import Instance, Status, TimerRecord
from ..core._serialization import dumps
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

if TYPE_CHECKING:
    import psycopg

    from ._postgres_io import Coalescer, Executor

__all__ = ["PostgresStorage"]

_T = TypeVar("_T")
_CHANNEL = "hephaestus_changes"
_RECONNECT_FIRST = 0.1
_RECONNECT_MAX = 5.0
_ENGINES_HERE: set[str] = set()
"""Engines registered by this process through a ``PostgresStorage`` still open.

They share the process's host and pid, so a registration with that host and
pid proves none of *them* dead; only engines of an earlier process (or of a
storage object of this process that was closed without unregistering them:
that engine is gone too) are."""
_PASSWORD = re.compile(r"(password\s*=\s*)(\S+)|(://[^:/@]*:)([^@]*)(@)", re.IGNORECASE)


def redact(dsn: str) -> str:
    """The DSN with its password hidden, for messages."""

    def hide(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"{match.group(1)}***"
        return f"{match.group(3)}***{match.group(5)}"

    return _PASSWORD.sub(hide, dsn)


def describe(exc: BaseException) -> str:
    """A driver error on one line (libpq's messages span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _import_driver() -> tuple[Any, Any]:
    try:
        import psycopg
        import psycopg_pool
    except ImportError as exc:
        raise StorageError(
            f"PostgresStorage needs psycopg 3 and psycopg-pool ({exc}); install the "
            "'postgres' extra: pip install 'hephaestus-trio[postgres]'"
        ) from None
    return psycopg, psycopg_pool


def _aware(now: datetime, what: str = "now") -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"datetimes must be timezone-aware, got naive {what}={now!r}")
    return now


def _ttl(ttl: float) -> float:
    if not ttl > 0:
        raise ValueError(f"a lease ttl must be a positive number of seconds, got {ttl!r}")
    return float(ttl)


def _run_row(instance: Instance) -> dict[str, Any]:
    """The copied columns and the document (stored with no timers) of a run."""
    stored = instance if not instance.timers else attrs.evolve(instance, timers=())
    return {
        "run_id": instance.run_id,
        "id": instance.id,
        "workflow": instance.workflow,
        "workflow_version": instance.workflow_version,
        "status": instance.status.value,
        "unique_key": instance.unique_key,
        "created_at": _aware(instance.created_at, "created_at"),
        "updated_at": _aware(instance.updated_at, "updated_at"),
        "instance": dumps(stored),
    }


@attrs.define(eq=False)
class _Listener:
    """The LISTEN connection and its reconnection schedule (real time, ``time.monotonic``)."""

    conn: psycopg.Connection[Any] | None = None
    fd: int = -1
    """The connection's socket, kept: a lost connection no longer tells it."""
    retry_at: float = 0.0
    backoff: float = _RECONNECT_FIRST
    reading: bool = False
    connects: int = 0
    losses: int = 0
    received: int = 0


@final
class PostgresStorage:
    """Durable storage in a PostgreSQL database, shared by any number of engines.

    Synopsis::

        async with PostgresStorage("postgresql://app@db.internal/orders") as storage:
            async with open_engine(storage=storage, workflows=[Order]) as engine:
                ...

    Args:
        dsn: a libpq connection string or URL (``postgresql://user@host/db``).
            ``open`` creates or migrates the schema in the connection's
            default schema (set ``search_path`` in the DSN's ``options`` to use
            another).
        pool_size: connections in the pool, and worker threads that may use
            them at once (a ``CapacityLimiter`` of this size). Each opened
            storage also holds one LISTEN connection unless ``notify=False``.
        poll_interval: seconds after which ``wait_for_change`` returns even
            without a notification: the longest a change is unnoticed when
            NOTIFY is lost or off.
        notify: send coalesced NOTIFY hints and LISTEN for them. Turn it off
            behind a pooler in transaction mode (PgBouncer), which cannot
            carry LISTEN; polling then finds every change.
        notify_interval: at most one NOTIFY per this many seconds from this
            storage: the first change after a quiet spell is hinted at once,
            a burst costs one NOTIFY per interval (F12: NOTIFY serialises
            commits on the server).
        clock: ``"database"`` (the default): lease expiries and every
            claimability and due-time comparison use the server's ``now()``,
            never an engine's clock; ``"caller"``: use the ``now`` each call
            passes, as SQLite does (tests driving time through ``now``).
        connect_timeout: seconds to wait for a connection before failing.
        application_name: shown in ``pg_stat_activity`` (the LISTEN connection
            adds `` listener``).
        idle_in_transaction_timeout: seconds after which the server ends a
            session of ours idle inside a transaction. Our transactions never
            wait between statements, so only a paused or stuck process trips
            it; it frees the row locks such a process holds, which would
            otherwise keep its runs from being taken over.

    Raises:
        StorageError: a bad option; on ``open``: psycopg is not installed,
            the server is unreachable or refuses the login, or the database
            has a newer schema or foreign ``hephaestus_*`` tables; on any use
            before ``open`` or after ``close``; when a query fails.
    """

    durable = True

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        poll_interval: float = 1.0,
        notify: bool = True,
        notify_interval: float = 0.05,
        clock: Literal["database", "caller"] = "database",
        connect_timeout: float = 10.0,
        application_name: str = "hephaestus-trio",
        idle_in_transaction_timeout: float = 10.0,
    ) -> None:
        if not isinstance(dsn, str) or not dsn.strip():
            raise StorageError(f"PostgresStorage needs a DSN string, got {dsn!r}")
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise StorageError(f"pool_size must be a positive integer, got {pool_size!r}")
        if not poll_interval > 0:
            raise StorageError(
                f"poll_interval must be a positive number of seconds, got {poll_interval!r}"
            )
        if not notify_interval >= 0:
            raise StorageError(
                f"notify_interval must be a number of seconds >= 0, got {notify_interval!r}"
            )
        if clock not in ("database", "caller"):
            raise StorageError(f"clock must be 'database' or 'caller', got {clock!r}")
        if not idle_in_transaction_timeout > 0:
            raise StorageError(
                "idle_in_transaction_timeout must be a positive number of seconds, "
                f"got {idle_in_transaction_timeout!r}"
            )
        if not connect_timeout > 0:
            raise StorageError(
                f"connect_timeout must be a positive number of seconds, got {connect_timeout!r}"
            )
        self._dsn = dsn
        self._pool_size = pool_size
        self._poll_interval = float(poll_interval)
        self._notify = bool(notify)
        self._clock = clock
        self._connect_timeout = float(connect_timeout)
        self._application_name = application_name
        self._idle_timeout_ms = max(1, round(idle_in_transaction_timeout * 1000))
        self._executor: Executor | None = None
        self._heartbeat: Executor | None = None
        self._listener = _Listener()
        self._lifecycle = trio.Lock()
        self._is_open = False
        self._was_opened = False
        # wait_for_change: a counter moved by local changes, notifications and polls.
        self._changes = 0
        # One event per waiter dozing in a worker thread: a change sets them all;
        # a waiter that stops (cancelled) sets its own, so its thread ends at once.
        self._dozers: set[threading.Event] = set()
        self._doze_limiter = trio.CapacityLimiter(8)
        # NOTIFY coalescing (made at open): at most one NOTIFY per notify_interval.
        self._notify_interval = float(notify_interval)
        self._coalescer: Coalescer | None = None
        self._notifies_before = 0
        self._sender = uuid.uuid4().hex
        """NOTIFY payload: who sent it (a storage ignores its own hints, it bumped already)."""
        # owned_wakeups: per owner, the snapshot of its previous call.
        self._owned_marks: dict[str, str] = {}
        # Engines registered through this object (alive while it is open).
        self._registered: set[str] = set()

    def __repr__(self) -> str:
        return f"PostgresStorage({redact(self._dsn)!r}, clock={self._clock!r})"

    @property
    def dsn(self) -> str:
        """The connection string given."""
        return self._dsn

    @property
    def clock(self) -> Literal["database", "caller"]:
        """Whose clock compares leases and due times (``"database"`` or ``"caller"``)."""
        return self._clock

    @property
    def notifies_sent(self) -> int:
        """How many NOTIFYs this object sent (observed by tests and benchmarks)."""
        coalescer = self._coalescer
        return self._notifies_before + (0 if coalescer is None else coalescer.sent)

    @property
    def listener_connects(self) -> int:
        """How many times the LISTEN connection was (re)established (observed by tests)."""
        return self._listener.connects

    @property
    def listener_losses(self) -> int:
        """How many times the LISTEN connection was found lost (observed by tests)."""
        return self._listener.losses

    @property
    def notifications_received(self) -> int:
        """How many notifications the LISTEN connection consumed (observed by tests)."""
        return self._listener.received

    # -- lifecycle ---------------------------------------------------------------

    async def __aenter__(self) -> PostgresStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect, create or migrate the schema, open the pool and the LISTEN connection.

        Idempotent.

        Raises:
            StorageError: see the class docstring.
        """
        async with self._lifecycle:
            if self._is_open:
                return
            psycopg, psycopg_pool = _import_driver()
            from . import _postgres_ops as ops
            from . import _postgres_schema as schema
            from ._postgres_io import Coalescer, Executor

            def migrate() -> None:
                with self._connect(psycopg, self._application_name) as conn:
                    schema.migrate(conn, redact(self._dsn))

            await trio.to_thread.run_sync(migrate)

            def new_pool(size: int, role: str) -> Any:
                return psycopg_pool.ConnectionPool(
                    self._dsn,
                    min_size=min(2, size),
                    max_size=size,
                    kwargs={
                        "autocommit": True,
                        "application_name": self._application_name,
                        "connect_timeout": max(1, round(self._connect_timeout)),
                    },
                    open=False,
                    configure=self._configure,
                    timeout=self._connect_timeout,
                    name=f"hephaestus-trio {role} {redact(self._dsn)}",
                )

            pool = new_pool(self._pool_size, "pool")
            # Heartbeats get a connection of their own: a renewal queued behind a
            # burst of transitions on a saturated pool would let leases lapse
            # under an engine that is alive, and its runs be taken over.
            heartbeat_pool = new_pool(1, "heartbeat")

            def open_pools() -> None:
                try:
                    pool.open(wait=True, timeout=self._connect_timeout)
                    heartbeat_pool.open(wait=True, timeout=self._connect_timeout)
                except psycopg_pool.PoolTimeout as exc:
                    pool.close(timeout=0)
                    heartbeat_pool.close(timeout=0)
                    raise StorageError(
                        f"PostgreSQL storage {redact(self._dsn)}: the connection pool did not "
                        f"open within {self._connect_timeout}s ({exc})"
                    ) from exc

            await trio.to_thread.run_sync(open_pools)
            self._listener = _Listener()
            try:
                if self._notify:
                    await self._reconnect_listener()
            except BaseException:
                # Cancelled while connecting the listener: leave nothing open
                # (synchronously: an await here would itself be cancelled).
                if self._listener.conn is not None:
                    self._listener.conn.close()
                self._listener = _Listener()
                pool.close(timeout=0)
                heartbeat_pool.close(timeout=0)
                raise
            self._executor = Executor(pool, self._pool_size)
            self._heartbeat = Executor(heartbeat_pool, 1)
            sender = self._sender

            async def notify() -> None:
                await self._run("notify", lambda conn: ops.notify(conn, sender))

            self._coalescer = Coalescer(notify, self._notify_interval)
            self._is_open = self._was_opened = True

    async def close(self) -> None:
        """Close the LISTEN connection and the pool. Idempotent; ``open`` again works."""
        async with self._lifecycle:
            if not self._is_open:
                return
            coalescer = self._coalescer
            if coalescer is not None:
                await coalescer.drain()  # the last hint goes out before the pool closes
            self._is_open = False
            self._coalescer = None
            if coalescer is not None:
                self._notifies_before += coalescer.sent
            executor, self._executor = self._executor, None
            heartbeat, self._heartbeat = self._heartbeat, None
            listener, self._listener = self._listener, _Listener()
            self._owned_marks.clear()
            _ENGINES_HERE.difference_update(self._registered)
            self._registered.clear()
            # Waiters in wait_for_change wake up and find the storage closed.
            for dozer in self._dozers:
                dozer.set()
            if listener.conn is not None:
                trio.lowlevel.notify_closing(listener.fd)
                conn = listener.conn
                await trio.to_thread.run_sync(conn.close)
            if executor is not None:
                await trio.to_thread.run_sync(lambda: executor.pool.close(timeout=5.0))
            if heartbeat is not None:
                await trio.to_thread.run_sync(lambda: heartbeat.pool.close(timeout=5.0))

    def _connect(self, driver: Any, application_name: str) -> psycopg.Connection[Any]:
        """Worker thread: one autocommit connection of our own (``StorageError`` if refused)."""
        try:
            conn = driver.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self._connect_timeout)),
                application_name=application_name,
            )
        except driver.Error as exc:
            raise StorageError(
                f"PostgreSQL at {redact(self._dsn)} is not available (cannot connect): "
                f"{describe(exc)}"
            ) from exc
        return cast("psycopg.Connection[Any]", conn)

    def _configure(self, conn: psycopg.Connection[Any]) -> None:
        """Pool worker thread: settings of every new pooled connection."""
        conn.execute(
            "SELECT set_config('idle_in_transaction_session_timeout', %s, false)",
            (str(self._idle_timeout_ms),),
        )

    def _check_open(self) -> Executor:
        if not self._is_open or self._executor is None:
            if self._was_opened:
                raise StorageError(f"PostgreSQL storage {redact(self._dsn)} is closed")
            raise StorageError(
                f"PostgreSQL storage {redact(self._dsn)} is not open: use 'async with "
                "storage:' or 'await storage.open()' first"
            )
        return self._executor

    def _now(self, now: datetime) -> datetime | None:
        """What the SQL takes as ``%(now)s``: ``None`` (the server's ``now()``) or ``now``."""
        _aware(now)
        return now if self._clock == "caller" else None

    async def _run(
        self,
        what: str,
        fn: Callable[[psycopg.Connection[Any]], _T],
        *,
        heartbeat: bool = False,
    ) -> _T:
        """One transaction on a pooled connection; driver errors become ``StorageError``.

        ``heartbeat`` runs it on the connection reserved for lease renewals.
        """
        executor = self._check_open()
        if heartbeat and self._heartbeat is not None:
            executor = self._heartbeat
        import psycopg

        def call(conn: psycopg.Connection[Any]) -> _T:
            try:
                return fn(conn)
            except psycopg.OperationalError:
                # The server may have restarted: drop the pool's dead connections
                # now rather than failing once per connection.
                executor.pool.check()
                raise

        try:
            return await executor.run(call)
        except psycopg.Error as exc:
            raise StorageError(
                f"PostgreSQL storage {redact(self._dsn)}: {what} failed: {describe(exc)}"
            ) from exc

    # -- runs --------------------------------------------------------------------

    async def get(self, run_id: str) -> Instance | None:
        from . import _postgres_ops as ops

        return await self._run("get", lambda conn: ops.get(conn, run_id))

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
        from . import _postgres_ops as ops

        filters = normalize_filters(status, status_in, workflow, workflow_version, id)
        page = normalize_page(created_after, limit, after)
        where: list[LiteralString] = []
        params: dict[str, object] = {}
        if filters.statuses is not None:
            where.append("r.status = ANY(%(statuses)s::text[])")
            params["statuses"] = sorted(s.value for s in filters.statuses)
        if filters.workflow is not None:
            where.append("r.workflow = %(workflow)s")
            params["workflow"] = filters.workflow
        if filters.workflow_version is not None:
            where.append("r.workflow_version = %(workflow_version)s")
            params["workflow_version"] = filters.workflow_version
        if filters.id is not None:
            where.append("r.id = %(id)s")
            params["id"] = filters.id
        if page.created_after is not None:
            where.append("r.created_at >= %(created_after)s")
            params["created_after"] = page.created_after
        if page.after is not None:
            # A row comparison: the (created_at, run_id) index is walked from the cursor.
            where.append("(r.created_at, r.run_id) > (%(after_created_at)s, %(after_run_id)s)")
            params["after_created_at"], params["after_run_id"] = page.after
        sql: LiteralString = ops.q("select_runs")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " " + ops.q("order_runs")
        if page.limit is not None:
            sql += " " + ops.q("limit_runs")
            params["limit"] = page.limit
        return await self._run("query", lambda conn: ops.query(conn, sql, params))

    async def summary(self, *, now: datetime) -> RunSummary:
        """Counts by workflow and status, the oldest waiting run, the timers due.

        "Due" is by the database clock under ``clock="database"``.
        """
        from . import _postgres_ops as ops

        at = normalize_now(now) if self._clock == "caller" else None
        if at is None:
            normalize_now(now)  # InvalidArgument for a naive now, whatever the clock
        return await self._run("summary", lambda conn: ops.summary(conn, at))

    async def create(
        self, instance: Instance, *, now: datetime, owner: str | None = None, ttl: float = 30.0
    ) -> Lease | None:
        from . import _postgres_ops as ops

        if not instance.status.is_live:
            raise ValueError(
                f"create takes a live run; {instance.run_id!r} is {instance.status.value}"
            )
        at, ttl = self._now(now), _ttl(ttl)
        row = _run_row(instance)
        expires = await self._run(
            "create",
            lambda conn: ops.create(
                conn, instance, row, now=at, owner=owner, ttl=ttl, created_at=now
            ),
        )
        if owner is None or expires is None:
            self._bump()
            await self._hint()
            return None
        return Lease(run_id=instance.run_id, owner=owner, epoch=1, expires_at=expires)

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        from . import _postgres_ops as ops

        _aware(now)
        if instance.run_id != lease.run_id:
            raise ValueError(f"lease of {lease.run_id!r} cannot write run {instance.run_id!r}")
        row = _run_row(instance)
        consumed, timers = list(consume), list(add_timers)
        added = await self._run(
            "write",
            lambda conn: ops.write(
                conn, lease, instance, row, consume=consumed, add_timers=timers, created_at=now
            ),
        )
        return added

    async def delete(self, run_id: str) -> None:
        from . import _postgres_ops as ops

        await self._run("delete", lambda conn: ops.delete(conn, run_id))

    async def purge(self, older_than: datetime) -> int:
        """Delete old terminal runs; ``0`` at once while another engine purges (advisory lock)."""
        from . import _postgres_ops as ops

        cutoff = _aware(older_than, "older_than")
        return await self._run("purge", lambda conn: ops.purge(conn, cutoff))

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
        from . import _postgres_ops as ops

        at, ttl = self._now(now), _ttl(ttl)
        if limit <= 0 or (run_ids is not None and not run_ids):
            self._check_open()
            await trio.lowlevel.checkpoint()
            return []
        return await self._run(
            "claim",
            lambda conn: ops.claim(
                conn, owner, now=at, ttl=ttl, workflows=workflows, limit=limit, run_ids=run_ids
            ),
        )

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        """Extend the leases still held, in one statement that also beats ``owner``'s heart."""
        from . import _postgres_ops as ops

        at, ttl = self._now(now), _ttl(ttl)
        held = [lease for lease in leases if lease.owner == owner]
        renewed = await self._run(
            "renew", lambda conn: ops.renew(conn, owner, held, now=at, ttl=ttl), heartbeat=True
        )
        return [
            attrs.evolve(lease, expires_at=renewed[(lease.run_id, lease.epoch)])
            for lease in held
            if (lease.run_id, lease.epoch) in renewed
        ]

    async def release(
        self, lease: Lease, *, now: datetime, wake_at: datetime | None, seen: int
    ) -> bool:
        from . import _postgres_ops as ops

        at = self._now(now)
        wake = None if wake_at is None else _aware(wake_at, "wake_at")
        woke = await self._run(
            "release", lambda conn: ops.release(conn, lease, now=at, wake_at=wake, seen=seen)
        )
        self._bump()
        if woke:
            await self._hint()
        return woke

    async def release_all(self, owner: str, *, now: datetime) -> int:
        from . import _postgres_ops as ops

        at = self._now(now)
        count = await self._run("release_all", lambda conn: ops.release_all(conn, owner, now=at))
        self._bump()
        if count:
            await self._hint()
        return count

    async def next_wake(
        self, owner: str, *, workflows: Collection[WorkflowKey] | None
    ) -> datetime | None:
        from . import _postgres_ops as ops

        return await self._run("next_wake", lambda conn: ops.next_wake(conn, owner, workflows))

    # -- engines -----------------------------------------------------------------

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        """Record a running engine; one registered before with the same host and pid is dead.

        That older engine's process is gone (its pid now belongs to the
        registering process on the same host), so its leases lapse at once and
        its runs are claimable without waiting for the TTL. Engines registered
        by this same process (they share its pid) are of course not dead. The
        proof needs ``host`` to name the pid namespace: containers sharing the
        host's network and name (``hostNetwork``), all pid 1, must register a
        distinct ``host`` (e.g. the container id), or each start would expire
        the others' leases once (safely: fenced writes refuse the old owner).
        """
        from . import _postgres_ops as ops

        at = self._now(now)
        host, pid = info.get("host"), info.get("pid")
        row = {
            "engine_id": engine_id,
            "host": host if isinstance(host, str) else socket.gethostname(),
            "pid": pid if isinstance(pid, int) and not isinstance(pid, bool) else os.getpid(),
            "started_at": now,
            "info": ops.json_text(info),
        }
        here = sorted(_ENGINES_HERE - {engine_id})
        dead = await self._run(
            "register_engine",
            lambda conn: ops.register_engine(conn, row, now=at, alive_here=here),
        )
        _ENGINES_HERE.add(engine_id)
        self._registered.add(engine_id)
        if dead:
            self._bump()
            await self._hint()

    async def unregister_engine(self, engine_id: str) -> None:
        from . import _postgres_ops as ops

        await self._run("unregister_engine", lambda conn: ops.unregister_engine(conn, engine_id))
        _ENGINES_HERE.discard(engine_id)
        self._registered.discard(engine_id)

    async def reap_engines(self, *, now: datetime) -> list[str]:
        """``[]``: no engine can be proved dead from here (``register_engine`` proves some)."""
        _aware(now)
        self._check_open()
        await trio.lowlevel.checkpoint()
        return []

    async def engines(self, *, now: datetime) -> list[EngineRecord]:
        from . import _postgres_ops as ops

        _aware(now)
        rows = await self._run("engines", ops.engines)
        return [
            EngineRecord(
                engine_id=engine_id,
                host=host,
                pid=pid,
                started_at=started_at,
                last_heartbeat=beat,
                runs_owned=owned,
            )
            for engine_id, host, pid, started_at, beat, owned in rows
        ]

    # -- wakeups -----------------------------------------------------------------

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        from . import _postgres_ops as ops

        at = self._now(now)
        _aware(wakeup.due_at, "due_at")
        recorded = await self._run(
            "add_wakeup",
            lambda conn: ops.add_wakeup(
                conn, wakeup, now=at, created_at=now, max_pending=max_pending
            ),
        )
        if recorded is not None:
            self._bump()
            await self._hint()
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
        from . import _postgres_ops as ops

        at, ttl = self._now(now), _ttl(ttl)
        _aware(wakeup.due_at, "due_at")
        recorded, claimed = await self._run(
            "add_wakeup_and_claim",
            lambda conn: ops.add_wakeup_and_claim(
                conn,
                wakeup,
                now=at,
                created_at=now,
                max_pending=max_pending,
                owner=owner,
                ttl=ttl,
                workflows=workflows,
                advance=advance,
                encode=_run_row,
            ),
        )
        if recorded is not None:
            # Hinted even when claimed, as every recorded wakeup is: the hints
            # are coalesced (at most one per notify_interval), and an engine
            # watching the run elsewhere (a ``wait`` on it) learns of it.
            self._bump()
            await self._hint()
        return recorded, claimed

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        from . import _postgres_ops as ops

        return await self._run(
            "seen_dedup_key", lambda conn: ops.seen_dedup_key(conn, run_id, dedup_key)
        )

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        from . import _postgres_ops as ops

        return await self._run("wakeups", lambda conn: ops.wakeups(conn, run_id))

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        from . import _postgres_ops as ops

        return await self._run("cancel_timer", lambda conn: ops.cancel_timer(conn, run_id, seq))

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        """As the protocol says, and also runs whose wakeup's transaction was in flight last time.

        Seqs come from a sequence, so a wakeup of one run may commit after a
        higher seq of another run was already reported: ``after`` alone would
        skip it forever. Each call remembers its snapshot; the next call also
        reports wakeups whose transaction that snapshot did not see.
        """
        from . import _postgres_ops as ops

        previous = self._owned_marks.get(owner)
        found, mark = await self._run(
            "owned_wakeups", lambda conn: ops.owned_wakeups(conn, owner, after, previous)
        )
        self._owned_marks[owner] = mark
        return found

    # -- change notification ---------------------------------------------------------

    async def wait_for_change(self, seen: int) -> int:
        """Return once the counter differs from ``seen``: a local change, a NOTIFY, a poll.

        Every ``poll_interval`` seconds (real time) the counter moves whatever
        happened, so a caller that re-checks the database on every return
        misses nothing even when notifications are lost or off.
        """
        from ._postgres_io import doze

        self._check_open()
        await trio.lowlevel.checkpoint()
        poll_at = time.monotonic() + self._poll_interval
        while self._changes == seen:
            listener = self._listener
            if self._notify and listener.conn is None and time.monotonic() >= listener.retry_at:
                if await self._reconnect_listener():
                    self._bump()  # re-check the database: notifications may have been missed
                continue
            fd: int | None = None
            if listener.conn is not None and not listener.reading:
                fd = listener.fd
                listener.reading = True
            timeout = max(0.0, poll_at - time.monotonic())
            if self._notify and listener.conn is None:
                timeout = min(timeout, max(0.0, listener.retry_at - time.monotonic()))
            bell = threading.Event()
            self._dozers.add(bell)
            try:
                readable = await doze(bell, timeout, fd=fd, limiter=self._doze_limiter)
            finally:
                self._dozers.discard(bell)
                bell.set()  # a doze thread left behind by a cancellation ends now
                if fd is not None:
                    listener.reading = False
            self._check_open()
            if readable and listener is self._listener and self._consume(listener):
                self._bump()
            elif time.monotonic() >= poll_at:
                self._bump()  # the poll: the caller re-checks the database
        return self._changes

    def _consume(self, listener: _Listener) -> bool:
        """Drain the LISTEN connection (non-blocking); ``True`` if something happened."""
        import psycopg
        from psycopg import pq

        conn = listener.conn
        if conn is None:
            return False
        count = 0
        try:
            pgconn = conn.pgconn
            pgconn.consume_input()
            while (note := pgconn.notifies()) is not None:
                if note.extra.decode(errors="replace") != self._sender:
                    count += 1
            if pgconn.status != pq.ConnStatus.OK:
                raise psycopg.OperationalError("the LISTEN connection is broken")
        except psycopg.Error:
            self._lose_listener(listener)
            return True  # the caller re-checks the database
        listener.received += count
        return count > 0

    def _lose_listener(self, listener: _Listener) -> None:
        conn, listener.conn = listener.conn, None
        listener.losses += 1
        listener.retry_at = time.monotonic() + listener.backoff
        listener.backoff = min(listener.backoff * 2, _RECONNECT_MAX)
        if conn is not None:
            # No notify_closing here: nobody waits on the socket now (the reader
            # is the caller), and libpq may have closed it, its number reused.
            try:
                conn.close()
            except Exception:  # pragma: no cover - closing a broken connection
                pass

    async def _reconnect_listener(self) -> bool:
        """(Re)open the LISTEN connection; on failure try again after a backoff."""
        import psycopg

        listener = self._listener
        lock = threading.Lock()
        made: list[psycopg.Connection[Any]] = []
        abandoned = False

        def connect() -> None:
            conn = self._connect(psycopg, f"{self._application_name} listener")
            try:
                conn.execute(f"LISTEN {_CHANNEL}")
            except BaseException:
                conn.close()
                raise
            with lock:
                if abandoned:  # the waiter was cancelled meanwhile: nobody takes it
                    conn.close()
                else:
                    made.append(conn)

        try:
            # Abandoned on cancellation: an engine must not wait out a connect
            # timeout (the server down) to react to its doorbell.
            await trio.to_thread.run_sync(connect, abandon_on_cancel=True)
        except (StorageError, psycopg.Error):
            listener.retry_at = time.monotonic() + listener.backoff
            listener.backoff = min(listener.backoff * 2, _RECONNECT_MAX)
            return False
        except trio.Cancelled:
            with lock:
                abandoned = True
                leftover, made[:] = made[:], []
            for conn in leftover:  # connected just as we were cancelled
                conn.close()
            raise
        with lock:
            conn = made.pop()
        if listener is not self._listener:  # closed (or reopened) meanwhile
            conn.close()
            return False
        listener.conn, listener.fd = conn, conn.fileno()
        listener.backoff = _RECONNECT_FIRST
        listener.connects += 1
        return True

    def _bump(self) -> None:
        """A change that may give some engine work: wake ``wait_for_change``."""
        self._changes += 1
        for dozer in self._dozers:
            dozer.set()

    async def _hint(self) -> None:
        """Tell the other engines (a NOTIFY from the coalescer; this caller never waits)."""
        if self._notify and self._coalescer is not None and self._is_open:
            self._coalescer.poke()
