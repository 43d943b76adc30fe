"""Engine calls that give up half-way leave no reservation behind.

A resume that is cancelled while it waits for a hibernating run to wake must
not keep that run awake forever: the run hibernates again once it settles.
"""

from __future__ import annotations

from typing import Any

import trio

from hephaestus_trio import (
    Done,
    Instance,
    MemoryStorage,
    Status,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
)


class Begin(Step):
    events = ("next",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "next"


class Signal(Workflow, unique=Unique(key="signal")):
    start_at = Begin
    transitions = {(Begin, "next"): WaitForEvent, (WaitForEvent, "received"): Done}


class SlowLoads(MemoryStorage):
    """``get`` (what a waking run reads first) waits at a gate while it is closed."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None

    async def get(self, run_id: str) -> Instance | None:
        if self.gate is not None:
            await self.gate.wait()
        return await super().get(run_id)


async def test_a_cancelled_resume_does_not_keep_the_run_awake(autojump_clock: Any) -> None:
    storage = SlowLoads()
    async with open_engine(storage, workflows=[Signal]) as engine:
        iid = await engine.start_instance(Signal, {}, id="signal::one")
        await trio.testing.wait_all_tasks_blocked()
        assert engine.live_tasks == 0  # parked without a timer: hibernating

        storage.gate = trio.Event()
        with trio.move_on_after(1):  # the caller gives up while the run wakes
            await engine.resume(iid, "received")
        assert engine.live_tasks == 1

        storage.gate.set()
        storage.gate = None
        await trio.testing.wait_all_tasks_blocked()
        assert engine.live_tasks == 0  # back to sleep: nothing kept it awake
        parked = await engine.get(iid)
        assert parked.status is Status.WAITING
        assert parked.waiting_steps == {"wait_for_event"}

        await engine.resume(iid, "received")
        assert (await engine.wait(iid)).status is Status.COMPLETED
