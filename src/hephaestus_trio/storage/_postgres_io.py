"""Driving psycopg's synchronous API from Trio: cancellable queries and a thread-free LISTEN.

psycopg's async connection runs on asyncio only, so ``PostgresStorage`` uses
psycopg's *synchronous* connections and ``psycopg_pool.ConnectionPool``
through ``trio.to_thread``. This module is the one place where the storage
layer needs Trio's cancel scopes and a nursery (the layering test exempts it
by name, for these reasons):

- **A cancelled query must really stop.** ``trio.to_thread.run_sync`` cannot
  interrupt a thread. ``run`` starts the call with ``abandon_on_cancel=True``
  so the caller's cancellation is noticed at once, then, in a *shielded*
  scope (an unshielded ``await`` in a cancelled scope would itself be
  cancelled and the query would run on), sends the server a cancel request
  (``cancel_safe``) and waits for the worker thread to return. So a call
  never returns, cancelled or not, while its query still runs, and the
  connection goes back to the pool only when it is idle again (a connection
  that was cancelled is closed instead, so a late cancel can never hit the
  next query on it). A ``CapacityLimiter`` sized to the pool keeps threads and
  connections equal: no thread ever blocks waiting for a connection.
- **NOTIFY off the caller's path.** ``Coalescer`` sends the change hints from
  a Trio system task (``trio.lowlevel.spawn_system_task``), at most one per
  interval: a caller only marks a hint pending and returns, the first hint
  after a quiet spell goes out at once, and a burst of changes costs one
  NOTIFY per interval instead of one per change.
- **LISTEN without a thread.** ``doze`` waits for whichever comes first: the
  LISTEN connection's socket becoming readable
  (``trio.lowlevel.wait_readable``), a local change (a ``threading.Event``),
  or the poll interval elapsing on the *real* clock (in a worker thread, as
  SQLite's doze: a poll must make no Trio deadline, or a test's virtual clock
  would crawl through a week-long timer in poll-sized steps).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = ["Coalescer", "Executor", "doze"]

_T = TypeVar("_T")
_CANCEL_TIMEOUT = 10.0
"""Seconds ``cancel_safe`` may take to reach the server before we give up on it."""


class _Call(Generic[_T]):
    """One call of ``fn`` on a pooled connection in a worker thread, and how to stop it."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], fn: Callable[[Any], _T]) -> None:
        self._pool = pool
        self._fn = fn
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self._conn: psycopg.Connection[Any] | None = None
        self._cancelling = False
        self._cancel_sent = threading.Event()
        self._done = threading.Event()

    def run(self) -> _T | None:
        """Worker thread: take a connection, run ``fn``, give the connection back."""
        with self._lock:
            if self._stopped:
                return None  # cancelled before the thread started: do nothing
            self._started = True
        try:
            with self._pool.connection() as conn:
                with self._lock:
                    if self._stopped:
                        return None
                    self._conn = conn
                try:
                    return self._fn(conn)
                finally:
                    with self._lock:
                        self._conn = None
                        cancelling = self._cancelling
                    if cancelling:
                        # Keep the connection until the cancel request is out,
                        # then close it: the pool replaces it, and a cancel
                        # arriving late can only hit this dead connection.
                        self._cancel_sent.wait(_CANCEL_TIMEOUT)
                        conn.close()
        finally:
            self._done.set()

    async def stop(self) -> None:
        """Event loop, shielded: stop the query if one runs, then wait for the thread."""
        with self._lock:
            self._stopped = True
            conn, started = self._conn, self._started
            self._cancelling = conn is not None
        if conn is not None:
            try:
                await trio.to_thread.run_sync(_cancel, conn)
            finally:
                self._cancel_sent.set()
        if started:
            await trio.to_thread.run_sync(self._done.wait)


def _cancel(conn: psycopg.Connection[Any]) -> None:
    import psycopg

    try:
        conn.cancel_safe(timeout=_CANCEL_TIMEOUT)
    except (psycopg.Error, OSError):
        pass  # the server is unreachable: the query dies with the connection


class Executor:
    """Runs blocking functions of a pooled connection from Trio, one transaction each."""

    def __init__(self, pool: psycopg_pool.ConnectionPool[Any], size: int) -> None:
        self.pool = pool
        self.limiter = trio.CapacityLimiter(size)

    async def run(self, fn: Callable[[Any], _T]) -> _T:
        """``fn(connection)`` in a worker thread; cancelling the caller stops the query.

        ``fn`` runs at most once; on cancellation it may not run at all, or be
        interrupted (its transaction then rolls back), and the caller sees
        ``trio.Cancelled`` only once nothing of it runs any more.
        """
        call: _Call[_T] = _Call(self.pool, fn)
        try:
            result = await trio.to_thread.run_sync(
                call.run, limiter=self.limiter, abandon_on_cancel=True
            )
        except trio.Cancelled:
            with trio.CancelScope(shield=True):
                await call.stop()
            raise
        return result  # type: ignore[return-value]  # None only when stopped


async def doze(
    bell: threading.Event,
    timeout: float,
    *,
    fd: int | None,
    limiter: trio.CapacityLimiter,
) -> bool:
    """Wait until ``bell`` rings, ``timeout`` real seconds pass or ``fd`` is readable.

    Returns whether ``fd`` became readable (``False`` for the other two).
    """
    readable = False
    async with trio.open_nursery() as nursery:

        async def ring() -> None:
            await trio.to_thread.run_sync(
                bell.wait, timeout, limiter=limiter, abandon_on_cancel=True
            )
            nursery.cancel_scope.cancel()

        async def read() -> None:
            nonlocal readable
            assert fd is not None
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                pass  # the storage is closing: the caller finds it closed
            else:
                readable = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(ring)
        if fd is not None:
            nursery.start_soon(read)
    return readable


class Coalescer:
    """Runs ``send`` after ``poke``, at most once per ``interval`` real seconds; never blocks.

    One system task at a time does the sending, so the callers that poke
    (every write that may give another engine work) return at once. A poke
    while a send is in flight, or within ``interval`` of the last send, is
    covered by one more send when the interval is over; so nothing poked goes
    unsent, and a quiet storage's first poke is sent without delay. ``send``
    failing is ignored (the hint is only a hint).
    """

    def __init__(self, send: Callable[[], Awaitable[None]], interval: float) -> None:
        self._send = send
        self._interval = interval
        self._pending = False
        self._running = False
        self._last = -math.inf
        self._idle = trio.Event()
        self._idle.set()
        self.sent = 0
        """How many sends completed (observed by tests and benchmarks)."""

    def poke(self) -> None:
        """Ask for a send; returns at once."""
        self._pending = True
        if not self._running:
            self._running = True
            self._idle = trio.Event()
            trio.lowlevel.spawn_system_task(self._flush, name="hephaestus-trio NOTIFY hints")

    async def drain(self) -> None:
        """Wait until nothing poked is left unsent (before closing what ``send`` uses)."""
        await self._idle.wait()

    async def _flush(self) -> None:
        try:
            while self._pending:
                wait = self._last + self._interval - time.monotonic()
                if wait > 0:
                    await trio.sleep(wait)
                self._pending = False
                try:
                    await self._send()
                except Exception:
                    return  # a hint only: polling finds the change
                self._last = time.monotonic()
                self.sent += 1
        finally:
            self._running = False
            self._idle.set()
