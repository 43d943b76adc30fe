"""The lease heartbeat: failed renewals are retried within the trust window, then stop runs.

A renewal that fails (an error, not a refusal) is retried until
``lease_ttl - lease_renewal`` seconds have passed since the last successful
renewal *started*; past that window a peer may own the runs, so the engine
stops them locally (not a crash: nothing fails), and claims them again once
their leases lapse. Virtual time, ``MemoryStorage``; the PostgreSQL tests
(``tests/postgres``) restart a real server inside and beyond the window.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Done,
    MemoryStorage,
    Status,
    Step,
    StorageError,
    Unique,
    Workflow,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.storage import Lease

CLOCK = trio_wall_clock(datetime(2030, 1, 1, tzinfo=UTC))
TTL, RENEWAL = 30.0, 5.0
WINDOW = TTL - RENEWAL
STARTS: list[float] = []
STOPS: list[float] = []


class Long(Step):
    """Runs 100 s; records when each execution starts and when one is stopped."""

    events = ("done",)

    async def execute(self, instance, config, context) -> str:
        STARTS.append(trio.current_time())
        try:
            await trio.sleep(100)
        except trio.Cancelled:
            STOPS.append(trio.current_time())
            raise
        return "done"


class LongFlow(Workflow, unique=Unique(key="long"), name="renewal.LongFlow"):
    start_at = Long
    transitions = {(Long, "done"): Done}


class Renewals(MemoryStorage):
    """A storage whose renewals work or fail, as the test says."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = "ok"
        self.calls = 0

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        self.calls += 1
        if self.mode == "fail":
            await trio.lowlevel.checkpoint()
            raise StorageError("the database is unreachable (test)")
        return await super().renew(owner, leases, now=now, ttl=ttl)


@pytest.fixture(autouse=True)
def _reset() -> None:
    STARTS.clear()
    STOPS.clear()


def _engine(storage: Renewals):  # type: ignore[no-untyped-def]
    return open_engine(storage, [LongFlow], wall_clock=CLOCK, lease_ttl=TTL, lease_renewal=RENEWAL)


async def test_renewals_failing_inside_the_window_interrupt_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = Renewals()
    async with _engine(storage) as engine:
        iid = await engine.start_instance(LongFlow, id="long::a")
        await trio.sleep(12)  # two renewals succeeded
        storage.mode = "fail"
        failing_from = storage.calls
        await trio.sleep(WINDOW - RENEWAL)  # failures, but never past the window
        assert storage.calls - failing_from >= 3
        storage.mode = "ok"
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert len(STARTS) == 1
    assert STOPS == []
    assert "lease renewal failed" in caplog.text
    assert "past the trust window" not in caplog.text


async def test_renewals_failing_past_the_window_stop_the_run_which_is_claimed_again(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = Renewals()
    caplog.set_level(logging.WARNING)
    async with _engine(storage) as engine:
        iid = await engine.start_instance(LongFlow, id="long::b")
        await trio.sleep(12)
        storage.mode = "fail"
        failing_at = trio.current_time()
        while not STOPS:
            await trio.sleep(1)
        # Stopped once the window since the last renewal's start ran out, not before.
        last_success = failing_at - (failing_at % RENEWAL)
        assert last_success + WINDOW <= STOPS[0] <= failing_at + WINDOW + RENEWAL
        await trio.sleep(RENEWAL)
        storage.mode = "ok"
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED  # stopped locally is not failed
    assert len(STARTS) == 2  # claimed again once its lease lapsed, the step ran again
    assert "past the trust window" in caplog.text


class SlowTerminalAnswer(MemoryStorage):
    """The terminal write commits, then its answer is held until a renewal has answered
    without the run (a terminal write ends the lease) and the engine handled that."""

    def __init__(self) -> None:
        super().__init__()
        self.terminal_committed = False
        self.renewed_after = trio.Event()

    async def write(self, lease, instance, **kwargs):  # type: ignore[no-untyped-def]
        added = await super().write(lease, instance, **kwargs)
        if instance.is_terminal:
            self.terminal_committed = True
            await self.renewed_after.wait()
            await trio.testing.wait_all_tasks_blocked()
        return added

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        renewed = await super().renew(owner, leases, now=now, ttl=ttl)
        if self.terminal_committed:
            assert not renewed  # the run ended: its lease with it
            self.renewed_after.set()
        return renewed


async def test_a_renewal_racing_the_terminal_write_is_not_a_lost_lease(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    storage = SlowTerminalAnswer()
    stops: list[str] = []
    async with _engine(storage) as engine:
        engine.subscribe(lambda event: stops.append(event.name), events=["workflow.stop"])
        iid = await engine.start_instance(LongFlow, id="long::d")
        final = await engine.wait(iid)
        await trio.testing.wait_all_tasks_blocked()
    assert storage.renewed_after.is_set()
    assert final.status is Status.COMPLETED
    assert stops == ["workflow.stop"]  # announced once, not lost to a spurious stop
    assert "lease lost" not in caplog.text
