"""Leaving ``open_engine``: live runs are cancelled cleanly, and the next engine continues them.

Both engines of a test share one ``MemoryStorage`` object (it keeps its data
across opens) and a ``trio_wall_clock(EPOCH)`` wall clock, so persisted
timestamps and timer deadlines line up with Trio's virtual clock in both.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    EngineClosed,
    Instance,
    MemoryStorage,
    Status,
    Step,
    Suspend,
    Unique,
    Wait,
    Workflow,
    open_engine,
    trio_wall_clock,
)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(instance id, what happened) -> count."""


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


def at(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


class Prepare(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "prepare"] += 1
        return "ok"


class Crunch(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "crunch.start"] += 1
        await trio.sleep(10)
        CALLS[instance.id, "crunch.end"] += 1
        return "ok"


class Finish(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "finish"] += 1
        return "ok"


class Busy(Workflow, unique=Unique(key="busy")):
    start_at = Prepare
    transitions = {(Prepare, "ok"): Crunch, (Crunch, "ok"): Finish, (Finish, "ok"): Done}


class Sleepy(Workflow, unique=Unique(key="sleepy")):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (Wait, {"seconds": 10}),
        (Wait, "timeout"): Finish,
        (Finish, "ok"): Done,
    }


class Approve(Step):
    events = ("go",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        CALLS[instance.id, "approve"] += 1
        return Suspend()


class Parked(Workflow, unique=Unique(key="parked")):
    start_at = Prepare
    transitions = {(Prepare, "ok"): Approve, (Approve, "go"): Finish, (Finish, "ok"): Done}


ALL = [Busy, Sleepy, Parked]


def all_tasks() -> set[trio.lowlevel.Task]:
    """Every task of this ``trio.run``, found by walking the task tree from the root."""
    found: set[trio.lowlevel.Task] = set()
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        found.add(task)
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return found


async def start_three(engine: Any) -> tuple[str, str, str]:
    busy = await engine.start_instance(Busy, {}, id="busy::a")
    sleepy = await engine.start_instance(Sleepy, {}, id="sleepy::a")
    parked = await engine.start_instance(Parked, {}, id="parked::a")
    return busy, sleepy, parked


def statuses(instances: Sequence[Instance]) -> dict[str, Status]:
    return {i.id: i.status for i in instances}


async def test_leaving_open_engine_cancels_every_task(autojump_clock: Any):
    storage = MemoryStorage()
    before = all_tasks()
    async with open_engine(storage, ALL, wall_clock=trio_wall_clock(EPOCH)) as engine:
        busy, sleepy, parked = await start_three(engine)
        await trio.sleep(3)
        assert len(all_tasks()) > len(before)
        # running (a step executing) has a task; sleeping (Wait timer armed) and
        # parked both hibernate: a pending timer is a row, not a task.
        assert engine.live_tasks == 1
        snapshot = {i.run_id: i for i in await engine.list()}
    assert all_tasks() == before
    assert trio.current_time() == 3.0  # leaving did not wait for any step or timer

    # What was persisted stays, untouched by the shutdown.
    async with storage:
        stored = {i.run_id: i for i in await storage.query()}
    assert stored == snapshot
    assert statuses(list(stored.values())) == {
        busy: Status.RUNNING,
        sleepy: Status.WAITING,
        parked: Status.WAITING,
    }
    by_id = {i.id: i for i in stored.values()}
    assert by_id[busy].running_steps == {"crunch"}
    assert [(t.step, t.fire_at) for t in by_id[sleepy].timers] == [("wait", at(10))]
    assert by_id[parked].waiting_steps == {"approve"}
    assert CALLS[busy, "crunch.end"] == 0

    with pytest.raises(EngineClosed):
        await engine.get(busy)
    await trio.sleep(100)  # nothing of the closed engine runs any more
    assert CALLS == {
        (busy, "prepare"): 1,
        (busy, "crunch.start"): 1,
        (sleepy, "prepare"): 1,
        (parked, "prepare"): 1,
        (parked, "approve"): 1,
    }


async def test_reopened_engine_continues_live_runs(autojump_clock: Any):
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        busy, sleepy, parked = await start_three(engine)
        await trio.sleep(3)

    init: list[Any] = []
    async with open_engine(storage, ALL, wall_clock=clock, handlers=[init.append]) as engine:
        # Only the run cut off mid-step needs a driver now. The parked run and
        # the one sleeping on its timer stay hibernated (rows, not tasks): the
        # sleeping one is claimed when its timer is due.
        assert init[0].name == "runner.init"
        assert init[0].measurements == {"recovered": 1.0}
        assert engine.live_tasks == 1

        # The Wait timer re-arms for its remaining 7 s: it fires at t = 10.
        done_sleepy = await engine.wait(sleepy)
        assert trio.current_time() == 10.0
        assert done_sleepy.status is Status.COMPLETED
        assert done_sleepy.updated_at == at(10)

        # The interrupted step runs again from the start (at-least-once).
        done_busy = await engine.wait(busy)
        assert trio.current_time() == 13.0
        assert done_busy.status is Status.COMPLETED

        await engine.resume(parked, "go")
        done_parked = await engine.wait(parked)
        assert done_parked.status is Status.COMPLETED

    assert CALLS == {
        # completed steps never ran again
        (busy, "prepare"): 1,
        (sleepy, "prepare"): 1,
        (parked, "prepare"): 1,
        (parked, "approve"): 1,
        # the step running at shutdown ran twice, but finished once
        (busy, "crunch.start"): 2,
        (busy, "crunch.end"): 1,
        (busy, "finish"): 1,
        (sleepy, "finish"): 1,
        (parked, "finish"): 1,
    }
    assert [e.step for e in done_busy.execution_history] == ["prepare", "crunch", "finish", "done"]
    assert [e.step for e in done_sleepy.execution_history] == ["prepare", "wait", "finish", "done"]


async def test_overdue_timer_fires_at_once_on_reopen(autojump_clock: Any):
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        sleepy = await engine.start_instance(Sleepy, {}, id="sleepy::b")
        await trio.sleep(3)
    await trio.sleep(20)  # the engine is down past the deadline (t = 10)
    assert CALLS[sleepy, "finish"] == 0

    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        final = await engine.wait(sleepy)
        assert trio.current_time() == 23.0
    assert final.status is Status.COMPLETED
    assert final.updated_at == at(23)
    assert CALLS == {(sleepy, "prepare"): 1, (sleepy, "finish"): 1}
    assert [e.timestamp for e in final.execution_history if e.step == "wait"] == [at(23)]


class SlowWriteStorage(MemoryStorage):
    """``write`` yields before it writes, as a real database round-trip does."""

    async def write(self, lease: Any, instance: Instance, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return await super().write(lease, instance, **kwargs)


async def pending_resumes(storage: MemoryStorage, run_id: str) -> list[tuple[Any, Any]]:
    return [(w.step, w.event) for w in await storage.wakeups(run_id) if w.kind.value == "resume"]


@pytest.mark.parametrize("storage_cls", [MemoryStorage, SlowWriteStorage])
async def test_accepted_resume_is_applied_exactly_once_after_reopen(
    autojump_clock: Any, storage_cls: type[MemoryStorage]
):
    storage = storage_cls()
    clock = trio_wall_clock(EPOCH)
    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        parked = await engine.start_instance(Parked, {}, id="parked::b")
        await trio.sleep(1)
        assert engine.live_tasks == 0
        await engine.resume(parked, "go")
        # Leave at once: no checkpoint between the accepted resume and shutdown.

    async with storage:
        between = (await storage.query(id=parked))[0]
        pending = await pending_resumes(storage, between.run_id)
    # The resume is a durable row the moment it is accepted. Leaving at once
    # gave no owner the chance to apply it: it is still recorded, unapplied
    # (applying it and consuming its row are one write, so never half done).
    assert between.waiting_steps == {"approve"}
    assert pending == [("approve", "go")]
    assert CALLS[parked, "finish"] == 0

    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        final = await engine.wait(parked)
        assert await pending_resumes(storage, final.run_id) == []
    assert final.status is Status.COMPLETED
    assert [e.step for e in final.execution_history] == ["prepare", "approve", "finish", "done"]
    assert [e.wakeup is not None for e in final.execution_history] == [False, True, False, False]
    assert CALLS == {(parked, "prepare"): 1, (parked, "approve"): 1, (parked, "finish"): 1}


async def test_shutdown_during_a_burst_of_starts(autojump_clock: Any):
    """Runs started right before leaving (some not yet advanced) are continued too."""
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    before = all_tasks()
    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        ids = [await engine.start_instance(Busy, {}, id=f"busy::n{n}") for n in range(20)]
    assert all_tasks() == before
    async with storage:
        assert {i.status for i in await storage.query()} <= {Status.PENDING, Status.RUNNING}

    async with open_engine(storage, ALL, wall_clock=clock) as engine:
        finals = [await engine.wait(iid) for iid in ids]
    assert {f.status for f in finals} == {Status.COMPLETED}
    # A step cut off by the shutdown may run again; the ones after it run once.
    assert all(CALLS[iid, "prepare"] >= 1 for iid in ids)
    assert all(CALLS[iid, "crunch.end"] == 1 and CALLS[iid, "finish"] == 1 for iid in ids)
