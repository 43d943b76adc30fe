"""``open_harness``: an engine a test can close and reopen on the same storage.

Why: recovery is the point of a durable engine, and testing it means ending
an engine and starting another on the same data *inside one test*. The
engine's ``open_engine`` block belongs to one task, so the harness keeps it
in a background task and swaps it on ``reopen``. Wall time follows Trio's
clock from a fixed epoch (``trio_wall_clock(EPOCH)``), the same for every
engine of the harness, so under ``MockClock`` timestamps and timers are
virtual and continue across a reopen.
"""

from __future__ import annotations

import functools
import inspect
import weakref
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing
from trio_util import AsyncValue

from .._errors import HephaestusError
from ..core._workflow import Workflow
from ..runtime._clock import trio_wall_clock
from ..runtime._open_engine import Engine, open_engine
from ..runtime._thread_clock import HOLD_CUSHION, _autojumping
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage
from ._driver import EPOCH

__all__ = [
    "ClockHeldStorage",
    "EngineHarness",
    "UnknownEngine",
    "hold_clock_while_busy",
    "open_harness",
    "reopen",
]


class UnknownEngine(HephaestusError, LookupError):
    """``reopen`` was given an engine no harness opened (or an engine already replaced)."""


class ClockHeldStorage:
    """A durable backend's calls counted in flight, so the mock clock can be held meanwhile.

    Why: a durable backend works in worker threads, and a task waiting for a
    thread looks idle to Trio, so an autojumping ``MockClock`` would jump to
    the next deadline (an ``engine.wait(timeout=...)``, a timer) while a write
    is on the disk. ``hold_clock_while_busy`` keeps the clock still while
    ``in_flight`` is above zero. ``wait_for_change`` (a long wait, not work)
    is not counted. Everything else passes through unchanged.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.in_flight: AsyncValue[int] = AsyncValue(0)

    @property
    def durable(self) -> bool:
        return self.inner.durable

    async def __aenter__(self) -> ClockHeldStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def wait_for_change(self, seen: int) -> int:
        return await self.inner.wait_for_change(seen)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        @functools.wraps(attr)
        async def counted(*args: Any, **kwargs: Any) -> Any:
            self.in_flight.value += 1
            try:
                return await attr(*args, **kwargs)
            finally:
                self.in_flight.value -= 1

        return counted


async def hold_clock_while_busy(in_flight: AsyncValue[int]) -> None:
    """Hold an autojumping mock clock while ``in_flight`` is above zero; never returns.

    Trio serves a task waiting in ``wait_all_tasks_blocked`` before it
    autojumps, so while a call is in flight this task waits there, again and
    again; once the count is back to zero it stops holding.
    """
    while True:
        await in_flight.wait_value(lambda v: v > 0)
        async with trio.open_nursery() as nursery:

            async def until_idle() -> None:
                await in_flight.wait_value(lambda v: v == 0)
                nursery.cancel_scope.cancel()

            async def hold() -> None:
                while True:
                    await trio.testing.wait_all_tasks_blocked(HOLD_CUSHION)

            nursery.start_soon(until_idle)
            nursery.start_soon(hold)


_owners: weakref.WeakKeyDictionary[Engine, EngineHarness] = weakref.WeakKeyDictionary()


class EngineHarness:
    """Holds the current engine of one storage; ``reopen`` replaces it.

    Do not construct it directly: use ``open_harness``.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        make_storage: Callable[[], Storage],
        workflows: Iterable[type[Workflow]],
        options: dict[str, Any],
    ) -> None:
        self._nursery = nursery
        self._make_storage = make_storage
        self._workflows = list(workflows)
        self._options = {"wall_clock": trio_wall_clock(EPOCH), **options}
        self._in_flight: AsyncValue[int] = AsyncValue(0)
        self.storage: Storage = self._made()
        """The storage object of the current engine (a new one per engine when durable)."""
        self.opened = 0
        """Engines opened so far."""
        self._engine: Engine | None = None
        self._scope: trio.CancelScope | None = None
        self._closed: trio.Event | None = None

    def _made(self) -> Storage:
        made = self._make_storage()
        if not made.durable:
            return made
        held = ClockHeldStorage(made)
        held.in_flight = self._in_flight
        return held  # type: ignore[return-value]

    @property
    def engine(self) -> Engine:
        """The current engine."""
        assert self._engine is not None, "the harness is not open"
        return self._engine

    async def _serve(self, *, task_status: trio.TaskStatus[Engine]) -> None:
        closed = self._closed = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with open_engine(self.storage, self._workflows, **self._options) as engine:
                    self.opened += 1
                    task_status.started(engine)
                    await trio.sleep_forever()
        finally:
            closed.set()

    async def _open(self) -> Engine:
        engine: Engine = await self._nursery.start(self._serve)
        self._engine = engine
        _owners[engine] = self
        return engine

    async def close(self) -> None:
        """Close the current engine as a shutdown does: its leases are handed back."""
        if self._engine is None:
            return
        # Workflows the test registered meanwhile (start_instance registers them)
        # must be known to the next engine too, or it would not claim their runs.
        self._workflows = list(self._engine._workflows.values())
        _owners.pop(self._engine, None)
        self._engine = None
        assert self._scope is not None
        assert self._closed is not None
        self._scope.cancel()
        await self._closed.wait()

    async def reopen(self) -> Engine:
        """Close the current engine and open a new one on the same data; returns it.

        A ``MemoryStorage`` object is its data, so the new engine uses the same
        object; a durable backend gets a new object from the factory, on the
        same file or database, as a new process would.
        """
        await self.close()
        if self.storage.durable:
            self.storage = self._made()
        return await self._open()


@asynccontextmanager
async def open_harness(
    storage: Callable[[], Storage] | None = None,
    workflows: Iterable[type[Workflow]] = (),
    **options: Any,
) -> AsyncIterator[EngineHarness]:
    """Open an engine on ``storage()`` (default ``MemoryStorage``), kept for ``reopen``.

    ``options`` go to ``open_engine`` (``wall_clock`` defaults to Trio's clock
    from ``EPOCH``). The pytest fixtures ``hephaestus_engine`` and
    ``hephaestus_sqlite_engine`` are built on this.
    """
    make_storage: Callable[[], Storage] = storage if storage is not None else MemoryStorage
    async with trio.open_nursery() as nursery:
        harness = EngineHarness(nursery, make_storage, workflows, options)
        if harness.storage.durable and _autojumping():
            nursery.start_soon(hold_clock_while_busy, harness._in_flight)
        await harness._open()
        try:
            yield harness
        finally:
            await harness.close()
            nursery.cancel_scope.cancel()


async def reopen(engine: Engine) -> Engine:
    """Close ``engine`` (opened by a harness) and open a new one on the same storage.

    Raises:
        UnknownEngine: ``engine`` was not opened by ``open_harness`` (or one of
            the fixtures), or was already replaced by an earlier ``reopen``.
    """
    harness = _owners.get(engine)
    if harness is None:
        raise UnknownEngine(
            f"engine {engine.engine_id} was not opened by a harness, or was already "
            "reopened: pass the engine the fixture (or the last reopen) gave you"
        )
    return await harness.reopen()
