"""A failed write of one run (not a crash of the process): its loop starts again from storage.

The storage raises once while the run persists a transition. Changed on
purpose: a storage failure is no longer a *crash* of the run's task (no
``instance.restart`` event, no restart budget spent); the driver backs off
briefly and starts a fresh incarnation from the last persisted state. That
incarnation must start again every step that was executing (at-least-once)
and keep every persisted timer at its original ``fire_at``; a
``schedule_resume`` handle taken before the failure still controls its
timer (a handle is now a value naming a durable timer row: ``await
handle.cancel()``, ``await handle.state()``). In-process, on virtual time.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    Event,
    Instance,
    MemoryStorage,
    Status,
    Step,
    Suspend,
    TimerRecord,
    Unique,
    Wait,
    Workflow,
    open_engine,
)
from hephaestus_trio.storage import Lease, Wakeup

RAN: Counter[str] = Counter()


class FailOnce(MemoryStorage):
    """Raises once, on the first ``write`` that matches ``when`` (nothing is written)."""

    def __init__(self, when: Callable[[Instance], bool]) -> None:
        super().__init__()
        self.when: Callable[[Instance], bool] | None = when
        self.failed = 0

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        if self.when is not None and self.when(instance):
            self.when = None
            self.failed += 1
            raise RuntimeError("injected: the disk is on fire")
        return await super().write(lease, instance, now=now, consume=consume, add_timers=add_timers)


def sleeper(key: str, seconds: float) -> type[Step]:
    class Sleeper(Step):
        events = ("ok",)
        step_key = key

        async def execute(self, instance: Instance, config: Any, context: Any) -> str:
            RAN[key] += 1
            await trio.sleep(seconds)
            return "ok"

    Sleeper.__name__ = Sleeper.__qualname__ = key.title()
    return Sleeper


Kick = sleeper("kick", 0)
Fast = sleeper("fast", 0.5)
Slow = sleeper("slow", 2.0)
Join = sleeper("join", 0)


class Park(Step):
    """Parks with no timer of its own."""

    events = ("go",)

    async def execute(self, instance: Instance, config: Any, context: Any) -> Suspend:
        return Suspend()


class Branches(Workflow, unique=Unique(key="branches"), name="crash.branches"):
    start_at = Kick
    transitions = {
        (Kick, "ok"): [Fast, Slow, (Wait, {"seconds": 5})],
        (Fast, "ok"): Join,
        (Slow, "ok"): Join,
        (Wait, "timeout"): Join,
        (Join, "ok"): Done,
    }


class Scheduled(Workflow, unique=Unique(key="scheduled"), name="crash.scheduled"):
    start_at = Kick
    transitions = {
        (Kick, "ok"): [Fast, Park],
        (Fast, "ok"): Join,
        (Park, "go"): Join,
        (Join, "ok"): Done,
    }


@pytest.fixture(autouse=True)
def _reset_counts() -> None:
    RAN.clear()


def _at(run: Instance, step: str) -> datetime:
    [entry] = [e for e in run.execution_history if e.step == step]
    stamp: datetime = entry.timestamp
    return stamp


async def test_running_steps_and_timers_restart_with_the_task(autojump_clock: Any) -> None:
    storage = FailOnce(lambda inst: "fast" in inst.completed_steps)
    restarts: list[Event] = []
    async with open_engine(storage=storage, workflows=[Branches]) as engine:
        engine.subscribe(restarts.append, events=["instance.restart"])
        iid = await engine.start_instance(Branches, {}, id="branches::a1")
        with trio.fail_after(60):
            done = await engine.wait(iid)

    assert done.status is Status.COMPLETED, done.error
    assert storage.failed == 1
    assert restarts == []  # a storage fault is not a crash: no restart budget spent
    # fast's completion was never persisted, slow was executing: both ran again.
    assert RAN == {"kick": 1, "fast": 2, "slow": 2, "join": 1}
    # The timer kept its persisted fire_at (5 s after it was armed at t=0).
    assert _at(done, "wait") - done.created_at == timedelta(seconds=5)
    assert Counter(e.step for e in done.execution_history) == dict.fromkeys(
        ["kick", "fast", "slow", "wait", "join", "done"], 1
    )


@pytest.mark.parametrize("cancel", [False, True])
async def test_a_timer_handle_outlives_a_task_restart(autojump_clock: Any, cancel: bool) -> None:
    storage = FailOnce(lambda inst: "fast" in inst.completed_steps)
    async with open_engine(storage=storage, workflows=[Scheduled]) as engine:
        iid = await engine.start_instance(Scheduled, {}, id="scheduled::a1")
        with trio.fail_after(60):
            while "park" not in (await engine.get(iid)).waiting_steps:
                await trio.sleep(0.1)
            t0 = trio.current_time()
            handle = await engine.schedule_resume(iid, "park", 5.0, event="go")
            await trio.sleep(2.0)  # fast crashed the task at 0.5 s; restarted
            assert RAN["fast"] == 2
            assert storage.failed == 1
            assert await handle.state() == "pending"
            if cancel:
                assert await handle.cancel() is True
                assert await handle.cancel() is False  # already gone
                await trio.sleep(10.0)
                parked = await engine.get(iid)
                assert parked.status is Status.WAITING
                assert parked.timers == ()
                assert await handle.state() == "cancelled"
                await engine.resume(iid, "go")
            done = await engine.wait(iid)
            fired = trio.current_time() - t0
            state = await handle.state()

    assert done.status is Status.COMPLETED, done.error
    assert state == ("cancelled" if cancel else "fired")
    assert fired == (12.0 if cancel else 5.0)
