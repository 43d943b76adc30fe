"""Resumes are rows: validated against the stored run, applied by its owner.

``test_reservations.py`` tested the reservation count that kept a hibernating
run awake while a resume waited for it; that mechanism is gone (a resume no
longer wakes a task, it records a row). Its scenario, "a resume the caller
gives up on does not keep the run awake", is kept here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Done,
    MemoryStorage,
    Status,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
    trio_wall_clock,
)

CLOCK = trio_wall_clock(datetime(2030, 1, 1, tzinfo=UTC))


class Begin(Step):
    events = ("next",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(0.001 * (int(instance.id.rsplit("::", 1)[1].lstrip("n") or 0) % 7))
        return "next"


class Signal(Workflow, unique=Unique(key="signal")):
    start_at = Begin
    transitions = {(Begin, "next"): WaitForEvent, (WaitForEvent, "received"): Done}


# -- a resume the caller gives up on ------------------------------------------------------


class GatedWakeups(MemoryStorage):
    """``add_wakeup`` waits at a gate, before or after it records the row."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where
        self.gate: trio.Event | None = None

    async def add_wakeup(self, wakeup: Any, **kwargs: Any) -> Any:
        if self.where == "before" and self.gate is not None:
            await self.gate.wait()
        added = await super().add_wakeup(wakeup, **kwargs)
        if self.where == "after" and self.gate is not None:
            await self.gate.wait()
        return added


@pytest.mark.parametrize("where", ["before", "after"])
async def test_a_cancelled_resume_does_not_keep_the_run_awake(
    autojump_clock: Any, where: str
) -> None:
    """Cancelled before the row is recorded: nothing happened, the run sleeps on.
    Cancelled after: the resume stands (it is durable) and is applied once; either
    way no task is left behind once the run settles."""
    storage = GatedWakeups(where)
    async with open_engine(storage, workflows=[Signal]) as engine:
        iid = await engine.start_instance(Signal, {}, id="signal::n1")
        await trio.sleep(1)
        assert engine.live_tasks == 0  # parked without a timer: hibernating

        storage.gate = trio.Event()
        with trio.move_on_after(1) as scope:  # the caller gives up
            await engine.resume(iid, "received")
        assert scope.cancelled_caught
        storage.gate.set()
        storage.gate = None
        await trio.testing.wait_all_tasks_blocked()
        assert engine.live_tasks == 0  # nothing kept it awake
        settled = await engine.get(iid)
        assert await storage.wakeups(settled.run_id) == []
        if where == "before":
            assert settled.status is Status.WAITING
            assert settled.waiting_steps == {"wait_for_event"}
            await engine.resume(iid, "received")
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert [e.step for e in final.execution_history].count("wait_for_event") == 1


# -- the resuming engine claims a hibernated run ----------------------------------------


class WatchedReads(MemoryStorage):
    """Counts, while ``watching``, the runs read back and the leases the claim loop takes."""

    def __init__(self) -> None:
        super().__init__()
        self.watching = False
        self.reads: list[str] = []
        self.loop_claims: list[str] = []

    async def get(self, run_id: str) -> Any:
        if self.watching:
            self.reads.append(run_id)
        return await super().get(run_id)

    async def claim(self, owner: str, **kwargs: Any) -> Any:
        leases = await super().claim(owner, **kwargs)
        if self.watching:
            self.loop_claims += [lease.run_id for lease in leases]
        return leases


async def test_a_resumed_hibernated_run_is_driven_from_the_resume_claim(
    autojump_clock: Any,
) -> None:
    """The engine that records the resume claims the run in the same call and its
    driver starts from what that call read: the claim loop takes no lease for it
    and nothing reads the run back."""
    storage = WatchedReads()
    async with open_engine(storage, workflows=[Signal]) as engine:
        iid = await engine.start_instance(Signal, {}, id="signal::n1")
        await trio.sleep(1)
        assert engine.live_tasks == 0  # parked without a timer: hibernating
        storage.watching = True
        await engine.resume(iid, "received", {"ok": True})
        assert engine.live_tasks > 0  # driven at once, before any claim loop pass
        await trio.sleep(1)
        storage.watching = False
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert final.context.steps["wait_for_event"] == {"ok": True}
    assert storage.loop_claims == []
    assert storage.reads == []


# -- a resume right after get shows the step parked -------------------------------------


async def test_resume_right_after_get_shows_the_step_parked_is_never_refused(
    storage: Any, mock_clock: Any
) -> None:
    """50 runs with ~1 MB contexts (slow writes): whenever ``get`` shows the step
    parked, a resume sent at once is accepted, because it is validated against
    the same stored run ``get`` read."""
    blob = "x" * 1_000_000
    ids = [f"signal::n{n}" for n in range(50)]
    refused: list[BaseException] = []
    async with open_engine(storage, [Signal], wall_clock=CLOCK) as engine:

        async def resume_when_parked(iid: str) -> None:
            while "wait_for_event" not in (await engine.get(iid)).waiting_steps:
                await trio.sleep(0.01)
            try:
                await engine.resume(iid, "received", {"n": iid})
            except Exception as exc:  # pragma: no cover - the failure this test catches
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for iid in ids:
                await engine.start_instance(Signal, {"blob": blob}, id=iid)
                nursery.start_soon(resume_when_parked, iid)
        finals = [await engine.wait(iid) for iid in ids]
    assert refused == []
    assert [f.status for f in finals] == [Status.COMPLETED] * 50
    assert all(f.context.steps["wait_for_event"] == {"n": f.id} for f in finals)
