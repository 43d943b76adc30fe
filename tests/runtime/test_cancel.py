"""``engine.cancel``: a cancelled run never runs another step, whatever it was doing.

Three shapes of live run are cancelled: one with a step executing, one parked
with no task at all (hibernated), and one sleeping on a ``Wait`` timer. After
the cancel, virtual time is advanced far past every deadline and the step
counters must not move.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    Event,
    InstanceNotFound,
    InvalidResume,
    MemoryStorage,
    NotCancellable,
    Status,
    Step,
    Suspend,
    Unique,
    Wait,
    Workflow,
    open_engine,
)

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(instance id, what happened) -> count."""


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


class Busy(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "busy.start"] += 1
        try:
            await trio.sleep(10)
        except trio.Cancelled:
            CALLS[instance.id, "busy.cancelled"] += 1
            raise
        CALLS[instance.id, "busy.end"] += 1
        return "ok"


class After(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "after"] += 1
        return "ok"


class Running(Workflow, unique=Unique(key="running")):
    start_at = Busy
    transitions = {(Busy, "ok"): After, (After, "ok"): Done}


class Park(Step):
    events = ("go",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        CALLS[instance.id, "park"] += 1
        return Suspend()


class Parked(Workflow, unique=Unique(key="parked")):
    start_at = Park
    transitions = {(Park, "go"): After, (After, "ok"): Done}


class Before(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "before"] += 1
        return "ok"


class Sleeping(Workflow, unique=Unique(key="sleeping")):
    start_at = Before
    transitions = {
        (Before, "ok"): (Wait, {"seconds": 10}),
        (Wait, "timeout"): After,
        (After, "ok"): Done,
    }


class Quick(Workflow, unique=Unique(key="quick")):
    start_at = After
    transitions = {(After, "ok"): Done}


def cancel_events() -> tuple[list[Event], Any]:
    seen: list[Event] = []
    return seen, seen.append


async def test_cancel_running_instance_stops_its_step(autojump_clock: Any):
    seen, handler = cancel_events()
    async with open_engine(workflows=[Running]) as engine:
        engine.subscribe(handler, events=["instance.cancel", "step.stop", "step.start"])
        iid = await engine.start_instance(Running, {}, id="running::a")
        await trio.sleep(1)
        assert (await engine.get(iid)).running_steps == {"busy"}

        cancelled = await engine.cancel(iid)
        # cancel() returns after the step task is gone, not merely asked to stop.
        assert CALLS[iid, "busy.cancelled"] == 1
        assert engine.live_tasks == 0
        assert cancelled.status is Status.CANCELLED
        assert cancelled.timers == ()
        assert cancelled.active_steps == frozenset()

        await trio.sleep(1000)
        assert await engine.get(iid) == cancelled
        assert await engine.wait(iid) == cancelled
    assert CALLS == {(iid, "busy.start"): 1, (iid, "busy.cancelled"): 1}
    assert cancelled.execution_history == ()
    assert [e.name for e in seen] == ["step.start", "instance.cancel"]


async def test_cancel_parked_hibernated_instance(autojump_clock: Any):
    async with open_engine(workflows=[Parked]) as engine:
        iid = await engine.start_instance(Parked, {}, id="parked::a")
        await trio.sleep(1)
        assert (await engine.get(iid)).status is Status.WAITING
        assert engine.live_tasks == 0  # hibernated: no task to cancel

        cancelled = await engine.cancel(iid)
        assert cancelled.status is Status.CANCELLED
        assert cancelled.waiting_steps == frozenset()

        with pytest.raises(InvalidResume, match="cancelled"):
            await engine.resume(iid, "go")
        await trio.sleep(1000)
        assert await engine.get(iid) == cancelled
        assert engine.live_tasks == 0
    assert CALLS == {(iid, "park"): 1}


async def test_cancel_parked_instance_with_an_armed_timer(autojump_clock: Any):
    async with open_engine(workflows=[Parked]) as engine:
        iid = await engine.start_instance(Parked, {}, id="parked::b")
        await trio.sleep(1)
        handle = await engine.schedule_resume(iid, "park", 5.0, event="go")
        assert len((await engine.get(iid)).timers) == 1

        cancelled = await engine.cancel(iid)
        assert cancelled.status is Status.CANCELLED
        assert cancelled.timers == ()
        await trio.sleep(1000)
        assert await handle.state() == "cancelled"  # dropped with its run, never fired
        assert await engine.get(iid) == cancelled
    assert CALLS == {(iid, "park"): 1}


async def test_cancel_sleeping_instance_drops_its_timer(autojump_clock: Any):
    async with open_engine(workflows=[Sleeping]) as engine:
        iid = await engine.start_instance(Sleeping, {}, id="sleeping::a")
        await trio.sleep(1)
        before = await engine.get(iid)
        assert before.waiting_steps == {"wait"}
        assert [t.step for t in before.timers] == ["wait"]

        cancelled = await engine.cancel(iid)
        assert cancelled.status is Status.CANCELLED
        assert cancelled.timers == ()
        assert engine.live_tasks == 0

        await trio.sleep(1000)  # far past the Wait's deadline (t = 10)
        assert await engine.get(iid) == cancelled
    assert CALLS == {(iid, "before"): 1}  # Wait's successor never ran
    assert [e.step for e in cancelled.execution_history] == ["before"]


async def test_cancel_terminal_instance_is_refused_and_changes_nothing(autojump_clock: Any):
    seen, handler = cancel_events()
    async with open_engine(workflows=[Quick, Parked]) as engine:
        engine.subscribe(handler, events=["instance.cancel"])
        done = await engine.wait(await engine.start_instance(Quick, {}, id="quick::a"))
        assert done.status is Status.COMPLETED
        with pytest.raises(NotCancellable) as info:
            await engine.cancel("quick::a")
        assert info.value.status == "completed"
        assert await engine.get("quick::a") == done

        iid = await engine.start_instance(Parked, {}, id="parked::c")
        first = await engine.cancel(iid)
        with pytest.raises(NotCancellable, match="cancelled"):
            await engine.cancel(iid)
        assert await engine.get(iid) == first
    assert [e.metadata["instance_id"] for e in seen] == ["parked::c"]


async def test_cancel_unknown_instance(autojump_clock: Any):
    async with open_engine(workflows=[Quick]) as engine:
        with pytest.raises(InstanceNotFound):
            await engine.cancel("quick::nope")


async def test_resume_after_cancel_is_invalid(autojump_clock: Any):
    async with open_engine(workflows=[Parked]) as engine:
        iid = await engine.start_instance(Parked, {}, id="parked::d")
        await trio.sleep(1)
        await engine.cancel(iid)
        with pytest.raises(InvalidResume) as info:
            await engine.resume(iid, "go")
        assert info.value.instance_id == iid
        with pytest.raises(InvalidResume):
            await engine.schedule_resume(iid, "park", 1.0, event="go")
        await trio.sleep(10)
    assert CALLS == {(iid, "park"): 1}


async def test_cancel_does_not_touch_other_instances(autojump_clock: Any):
    async with open_engine(workflows=[Running]) as engine:
        a = await engine.start_instance(Running, {}, id="running::a")
        b = await engine.start_instance(Running, {}, id="running::b")
        await trio.sleep(1)
        await engine.cancel(a)
        final_b = await engine.wait(b)
        assert trio.current_time() == 10.0
    assert final_b.status is Status.COMPLETED
    assert CALLS[b, "after"] == 1
    assert CALLS[a, "after"] == 0


class Fast(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "fast"] += 1
        return "ok"


class Joined(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "joined"] += 1
        return "ok"


class Fanned(Workflow, unique=Unique(key="fanned")):
    """before -> [fast, busy] -> joined -> done: two steps in tasks of their own."""

    start_at = Before
    transitions = {
        (Before, "ok"): [Fast, Busy],
        (Fast, "ok"): Joined,
        (Busy, "ok"): Joined,
        (Joined, "ok"): Done,
    }


class GatedWrites(MemoryStorage):
    """Holds the first write of a completed ``fast`` step until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = trio.Event()
        self.release = trio.Event()

    async def write(self, lease: Any, instance: Any, **kwargs: Any) -> Any:
        if "fast" in instance.completed_steps and not self.holding.is_set():
            self.holding.set()
            await self.release.wait()
        return await super().write(lease, instance, **kwargs)


async def test_cancel_stops_every_step_running_in_a_task(autojump_clock: Any):
    async with open_engine(workflows=[Fanned]) as engine:
        iid = await engine.start_instance(Fanned, {}, id="fanned::tasks")
        await trio.sleep(1)
        assert (await engine.get(iid)).running_steps == {"busy"}
        cancelled = await engine.cancel(iid)
        assert engine.live_tasks == 0
        await trio.sleep(1000)
    assert cancelled.status is Status.CANCELLED
    assert [e.step for e in cancelled.execution_history] == ["before", "fast"]
    assert CALLS == {
        (iid, "before"): 1,
        (iid, "fast"): 1,
        (iid, "busy.start"): 1,
        (iid, "busy.cancelled"): 1,
    }


async def test_cancel_during_a_write_lets_the_write_finish_then_stops_the_steps(
    autojump_clock: Any,
):
    """A cancel request arriving while the run's loop waits for a write never cuts that
    write: it lands, then the steps still executing are stopped and nothing else runs."""
    storage = GatedWrites()
    async with open_engine(storage, workflows=[Fanned]) as engine:
        iid = await engine.start_instance(Fanned, {}, id="fanned::write")
        await storage.holding.wait()  # fast finished; its write is in flight
        async with trio.open_nursery() as nursery:
            results: list[Any] = []

            async def cancel() -> None:
                results.append(await engine.cancel(iid))

            nursery.start_soon(cancel)
            await trio.sleep(1)
            assert not results  # the cancel waits for the write in flight
            storage.release.set()
        cancelled = results[0]
        assert engine.live_tasks == 0
        await trio.sleep(1000)
    assert cancelled.status is Status.CANCELLED
    assert [e.step for e in cancelled.execution_history] == ["before", "fast"]
    assert CALLS[iid, "busy.cancelled"] == 1
    assert CALLS[iid, "busy.end"] == 0
    assert CALLS[iid, "joined"] == 0
