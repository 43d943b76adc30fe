"""Every public coroutine of the running engine (and of the facade) checkpoints,
fast paths included, so callers can rely on it to yield and to be cancellable."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import trio
from trio.testing import assert_checkpoints

from hephaestus_trio import Done, Step, Unique, WaitForEvent, Workflow, open_engine


class Quick(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Short(Workflow, unique=Unique(key="short")):
    start_at = Quick
    transitions = {(Quick, "ok"): Done}


class Parks(Workflow, unique=Unique(key="parks")):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


async def test_engine_calls_checkpoint(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Short, Parks]) as engine:
        with assert_checkpoints():
            done = await engine.start_instance(Short, {}, id="short::a")
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            await engine.wait(done)  # already terminal: the fast path
        with assert_checkpoints():
            await engine.get(done)
        with assert_checkpoints():
            await engine.list(status="completed")
        with assert_checkpoints():
            await engine.purge(timedelta(days=1))

        parked = await engine.start_instance(Parks, {}, id="parks::a")
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            handle = await engine.schedule_resume(parked, "wait_for_event", 60, event="received")
        assert await handle.cancel() is True
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            await engine.resume(parked, "received")
        other = await engine.start_instance(Parks, {}, id="parks::b")
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            await engine.cancel(other)


async def test_facade_calls_checkpoint(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Parks]):
        with assert_checkpoints():
            await Parks.start("a", {})
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            await Parks.get("a")
        with assert_checkpoints():
            await Parks.list(status="waiting")
        with assert_checkpoints():
            await Parks.resume("a", "received")
        await Parks.start("b", {})
        await trio.testing.wait_all_tasks_blocked()
        with assert_checkpoints():
            await Parks.cancel("b")
