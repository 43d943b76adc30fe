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
- **LISTEN without a thread.** ``doze`` waits for whichever comes first: the
  LISTEN connection's socket becoming readable
  (``trio.lowlevel.wait_readable``), a local change (a ``threading.Event``),
  or the poll interval elapsing on the *real* clock (in a worker thread, as
  SQLite's doze: a poll must make no Trio deadline, or a test's virtual clock
  would crawl through a week-long timer in poll-sized steps).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = ["Executor", "doze"]

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
