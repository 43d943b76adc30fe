"""Ownership through leases: several engines on one storage, takeover, fencing, wakeups.

Every test runs on the autojump clock with engines that share a wall clock
(``trio_wall_clock``), so leases expire and timers fire in virtual time.
Engines in one process share one storage object, as two web workers share
one database. Tests with several engines use ``MemoryStorage`` (no real I/O,
so virtual time is exact); ``test_ownership_sqlite.py`` runs the same
scenarios on one SQLite file in real time.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Done,
    Event,
    InvalidResume,
    LeaseLost,
    MemoryStorage,
    NotCancellable,
    Status,
    Step,
    Suspend,
    Unique,
    Wait,
    WaitForEvent,
    WaitTimeout,
    Workflow,
    open_engine,
    trio_wall_clock,
)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
CLOCK = trio_wall_clock(EPOCH)
EXECUTIONS: Counter[tuple[str, str]] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EXECUTIONS.clear()


def history(inst):
    return [(e.step, e.event) for e in inst.execution_history]


async def until_hibernating(engine, *ids):
    """Wait (in virtual time) until every run parked and gave up its task.

    On SQLite the mock clock may jump while a write is in its worker thread,
    so a fixed sleep could look before the park is written.
    """
    for _ in range(200):
        await trio.testing.wait_all_tasks_blocked()
        runs = [await engine.get(i) for i in ids]
        if all(r.status is Status.WAITING for r in runs) and engine.live_tasks == 0:
            return runs
        await trio.sleep(0.5)
    raise AssertionError(f"never hibernated: {[(r.id, r.status) for r in runs]}")


class Slow(Step):
    """Runs for 60 s of virtual time, counting each execution per run."""

    events = ("done",)

    async def execute(self, instance, config, context):
        EXECUTIONS[(instance.run_id, "slow")] += 1
        await trio.sleep(60)
        return "done"


class Quick(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        EXECUTIONS[(instance.run_id, "quick")] += 1
        await trio.sleep(1)
        return "done"


class SlowFlow(Workflow, unique=Unique(key="slow")):
    start_at = Quick
    transitions = {(Quick, "done"): Slow, (Slow, "done"): Done}


class Park(Step):
    """Runs a little, then parks until resumed with ``go``."""

    events = ("go",)

    async def execute(self, instance, config, context):
        EXECUTIONS[(instance.run_id, "park")] += 1
        await trio.sleep(5)
        return Suspend()


class Parking(Workflow, unique=Unique(key="parking")):
    start_at = Quick
    transitions = {(Quick, "done"): Park, (Park, "go"): Done}


class Later(Workflow, unique=Unique(key="later")):
    start_at = Quick
    transitions = {(Quick, "done"): WaitForEvent, (WaitForEvent, "received"): Done}


class Sleepy(Workflow, unique=Unique(key="sleepy")):
    start_at = Quick
    transitions = {(Quick, "done"): (Wait, {"duration": 7, "unit": "day"}), (Wait, "timeout"): Done}


class Instant(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        await trio.sleep(0.001 * (int(instance.id.rsplit("::", 1)[1]) % 7))
        return "done"


class OneStep(Workflow, unique=Unique(key="one")):
    start_at = Instant
    transitions = {(Instant, "done"): Done}


# -- several engines share the work -------------------------------------------------


async def test_each_run_is_driven_by_exactly_one_of_two_engines(autojump_clock):
    storage = MemoryStorage()
    started: Counter[str] = Counter()

    def watch(event: Event) -> None:
        if event.name == "step.start":
            started[event.metadata["run_id"]] += 1

    async with (
        open_engine(storage, [SlowFlow], wall_clock=CLOCK, handlers=[watch]) as a,
        open_engine(storage, [SlowFlow], wall_clock=CLOCK, handlers=[watch]) as b,
    ):
        ids = [
            await (a if n % 2 else b).start_instance(SlowFlow, id=f"slow::{n}") for n in range(10)
        ]
        finals = [await a.wait(i) for i in ids]
    assert all(f.status is Status.COMPLETED for f in finals)
    # quick, slow, done: three step starts per run, whichever engine drove it.
    assert all(started[f.run_id] == 3 for f in finals)
    assert all(n == 1 for n in EXECUTIONS.values())


class _Abandoning(MemoryStorage):
    """A shared storage whose release of one engine's leases never happens (a crash)."""

    dead: set[str]

    def __init__(self) -> None:
        super().__init__()
        self.dead = set()

    async def release_all(self, owner: str, *, now: datetime) -> int:
        if owner in self.dead:
            await trio.lowlevel.checkpoint()
            return 0
        return await super().release_all(owner, now=now)


async def test_a_dead_engines_runs_are_taken_over_after_the_lease_expires(autojump_clock):
    storage = _Abandoning()
    async with open_engine(storage, [SlowFlow], wall_clock=CLOCK, lease_ttl=30) as b:
        with trio.CancelScope() as a_scope:
            async with open_engine(storage, [SlowFlow], wall_clock=CLOCK, lease_ttl=30) as a:
                iid = await a.start_instance(SlowFlow, id="slow::crash")
                await trio.sleep(10)  # quick done, slow running in A
                assert a.live_tasks == 1
                storage.dead.add(a.engine_id)
                killed_at = trio.current_time()
                a_scope.cancel()  # A dies without releasing its lease
        assert b.live_tasks == 0
        final = await b.wait(iid)
        # B took over only once A's lease lapsed, then ran slow again (at least once).
        assert trio.current_time() - killed_at >= 30 - 5
    assert final.status is Status.COMPLETED
    assert history(final) == [("quick", "done"), ("slow", "done"), ("done", "done")]
    assert EXECUTIONS[(final.run_id, "quick")] == 1
    assert EXECUTIONS[(final.run_id, "slow")] == 2


async def test_clean_shutdown_releases_leases_so_a_peer_continues_at_once(autojump_clock):
    storage = MemoryStorage()
    async with open_engine(storage, [SlowFlow], wall_clock=CLOCK) as b:
        async with open_engine(storage, [SlowFlow], wall_clock=CLOCK) as a:
            iid = await a.start_instance(SlowFlow, id="slow::handover")
            await trio.sleep(10)
        handed_over_at = trio.current_time()
        await trio.testing.wait_all_tasks_blocked()
        assert b.live_tasks == 1  # claimed at once, not after the TTL
        final = await b.wait(iid)
        assert trio.current_time() - handed_over_at == pytest.approx(60, abs=0.01)
    assert final.status is Status.COMPLETED


class _Freezable(MemoryStorage):
    """A storage where one engine can be frozen (a long pause, or a partition).

    While frozen, that engine's renewals hang and its writes stay "in flight"
    (sent, not yet executed: shielded from cancellation), as a paused process
    would leave them; when thawed, they reach the storage with the old lease.
    """

    def __init__(self) -> None:
        super().__init__()
        self.frozen: str | None = None
        self.thawed = trio.Event()
        self.refused: list[LeaseLost] = []

    async def _gate(self, owner: str) -> None:
        if owner == self.frozen:
            await self.thawed.wait()

    async def renew(self, owner, leases, *, now, ttl):
        await self._gate(owner)
        return await super().renew(owner, leases, now=now, ttl=ttl)

    async def write(self, lease, instance, **kwargs):
        with trio.CancelScope(shield=True):
            await self._gate(lease.owner)
            kwargs["now"] = CLOCK()
            try:
                return await super().write(lease, instance, **kwargs)
            except LeaseLost as exc:
                self.refused.append(exc)
                raise


async def test_a_frozen_engines_late_write_is_refused_and_history_does_not_interleave(
    autojump_clock,
):
    storage = _Freezable()
    async with (
        open_engine(storage, [SlowFlow], wall_clock=CLOCK) as a,
        open_engine(storage, [SlowFlow], wall_clock=CLOCK) as b,
    ):
        iid = await a.start_instance(SlowFlow, id="slow::frozen")
        await trio.sleep(10)  # slow is running in A
        storage.frozen = a.engine_id
        try:
            # A's lease lapses at about 40 s and B takes over; at 61 s A's slow
            # step finishes and its write hangs.
            await trio.sleep(60)
            assert b.live_tasks == 1
            assert storage.refused == []
        finally:
            storage.thawed.set()  # A's stale write reaches the storage now
        final = await b.wait(iid)
        await trio.testing.wait_all_tasks_blocked()
        assert a.live_tasks == 0  # A stopped the run locally: not a crash
    assert [e.owner for e in storage.refused] == [a.engine_id]
    assert final.status is Status.COMPLETED
    assert history(final) == [("quick", "done"), ("slow", "done"), ("done", "done")]
    assert final.error is None


# -- wakeups from anywhere ---------------------------------------------------------------


async def test_a_resume_accepted_by_a_non_owner_is_applied_by_the_owner(autojump_clock):
    storage = MemoryStorage()
    async with (
        open_engine(storage, [Parking], wall_clock=CLOCK) as a,
        open_engine(storage, [Parking], wall_clock=CLOCK) as b,
    ):
        iid = await a.start_instance(Parking, id="parking::one")
        await trio.sleep(1.5)  # quick done, park running in A
        await b.resume(iid, "go")  # recorded before the step parked
        final = await a.wait(iid)
    assert final.status is Status.COMPLETED
    assert history(final) == [("quick", "done"), ("park", "go"), ("done", "done")]


async def test_early_resume_for_a_step_not_yet_active_applies_when_it_parks(autojump_clock):
    async with open_engine(workflows=[Later], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(Later, id="later::early")
        await engine.resume(iid, "received", {"amount": 12})  # quick is still running
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert final.context.steps["wait_for_event"] == {"amount": 12}
    [entry] = [e for e in final.execution_history if e.step == "wait_for_event"]
    assert entry.context_updates == {"amount": 12}
    assert entry.wakeup is not None


async def test_resume_refused_only_when_no_step_that_can_still_run_declares_it(autojump_clock):
    async with open_engine(workflows=[Later], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(Later, id="later::undeclared")
        with pytest.raises(InvalidResume, match="bogus"):
            await engine.resume(iid, "bogus")
        with pytest.raises(WaitTimeout, match="still waiting"):
            await engine.wait(iid, timeout=5)  # nothing was recorded: it parks and waits
        parked = await engine.get(iid)
    assert parked.status is Status.WAITING
    assert parked.waiting_steps == {"wait_for_event"}


async def test_duplicate_dedup_key_is_a_no_op_even_after_the_resume_applied(autojump_clock):
    async with open_engine(workflows=[Later], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(Later, id="later::dedup")
        await engine.resume(iid, "received", {"n": 1}, dedup_key="hook-1")
        await engine.resume(iid, "received", {"n": 2}, dedup_key="hook-1")  # no-op
        final = await engine.wait(iid)
        await engine.resume(iid, "received", {"n": 3}, dedup_key="hook-1")  # still a no-op
    assert final.context.steps["wait_for_event"] == {"n": 1}
    assert [e.step for e in final.execution_history].count("wait_for_event") == 1


async def test_payload_must_be_json_safe(autojump_clock):
    async with open_engine(workflows=[Later], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(Later, id="later::payload")
        with pytest.raises(TypeError, match=r"payload\['when'\]"):
            await engine.resume(iid, "received", {"when": datetime.now(UTC)})
        with pytest.raises(TypeError, match="dict"):
            await engine.resume(iid, "received", [1, 2])  # type: ignore[arg-type]


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_racing_the_last_step_emits_stop_exactly_once(storage, mock_clock):
    stops: Counter[str] = Counter()
    statuses: dict[str, str] = {}

    def watch(event: Event) -> None:
        if event.name == "workflow.stop":
            stops[event.metadata["instance_id"]] += 1
            statuses[event.metadata["instance_id"]] = event.metadata["status"]

    ids = [f"one::{n}" for n in range(300)]
    outcomes: dict[str, str] = {}
    async with open_engine(storage, [OneStep], wall_clock=CLOCK, handlers=[watch]) as engine:
        async with trio.open_nursery() as nursery:
            for n, iid in enumerate(ids):
                await engine.start_instance(OneStep, id=iid)

                async def cancel_later(iid: str = iid, n: int = n) -> None:
                    await trio.sleep(0.001 * (n % 11))
                    try:
                        outcomes[iid] = (await engine.cancel(iid)).status.value
                    except NotCancellable as exc:
                        outcomes[iid] = exc.status

                nursery.start_soon(cancel_later)
        finals = {iid: await engine.wait(iid) for iid in ids}
    assert all(stops[iid] == 1 for iid in ids), {i: c for i, c in stops.items() if c != 1}
    for iid, final in finals.items():
        assert final.status.value == statuses[iid] == outcomes[iid]
        assert final.status in (Status.CANCELLED, Status.COMPLETED)


async def test_cancel_through_another_engine_stops_the_owners_running_step(autojump_clock):
    storage = MemoryStorage()
    async with (
        open_engine(storage, [SlowFlow], wall_clock=CLOCK) as a,
        open_engine(storage, [SlowFlow], wall_clock=CLOCK) as b,
    ):
        iid = await a.start_instance(SlowFlow, id="slow::stop")
        await trio.sleep(10)
        asked = trio.current_time()
        cancelled = await b.cancel(iid)
        assert trio.current_time() - asked < 2
    assert cancelled.status is Status.CANCELLED
    assert history(cancelled) == [("quick", "done")]


# -- timers are data ------------------------------------------------------------------------


async def test_a_run_parked_on_a_long_timer_hibernates_and_fires_on_time(storage, mock_clock):
    async with open_engine(storage, [Sleepy], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(Sleepy, id="sleepy::week")
        (parked,) = await until_hibernating(engine, iid)
        assert parked.status is Status.WAITING
        assert len(parked.timers) == 1
        assert engine.live_tasks == 0  # a pending timer keeps no task
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert (final.updated_at - parked.updated_at).total_seconds() == pytest.approx(7 * 86400, abs=1)


class Hold(Step):
    events = ("timeout", "go")

    async def execute(self, instance, config, context):
        return Suspend()


class Holding(Workflow, unique=Unique(key="holding")):
    start_at = Quick
    transitions = {(Quick, "done"): Hold, (Hold, "timeout"): Done, (Hold, "go"): Done}


async def test_timer_handle_state_follows_the_storage(storage, mock_clock):
    async with open_engine(storage, [Holding], wall_clock=CLOCK) as engine:
        fired_id = await engine.start_instance(Holding, id="holding::fires")
        cancelled_id = await engine.start_instance(Holding, id="holding::cancelled")
        stopped_id = await engine.start_instance(Holding, id="holding::stopped")
        await until_hibernating(engine, fired_id, cancelled_id, stopped_id)
        fires = await engine.schedule_resume(fired_id, "hold", 10)
        cancelled = await engine.schedule_resume(cancelled_id, "hold", 10)
        stopped = await engine.schedule_resume(stopped_id, "hold", 10)
        assert await fires.state() == "pending"
        assert await cancelled.cancel() is True
        assert await cancelled.cancel() is False
        await engine.cancel(stopped_id)
        assert await stopped.state() == "cancelled"  # its run was cancelled
        assert (await engine.wait(fired_id)).status is Status.COMPLETED
        assert await fires.state() == "fired"
        assert await fires.cancel() is False
        assert await cancelled.state() == "cancelled"
        still = await engine.get(cancelled_id)
        assert still.status is Status.WAITING
        assert still.timers == ()
