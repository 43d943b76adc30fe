"""``open_harness`` and ``reopen``: one test, several engines on the same storage."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from hephaestus_trio import (
    Complete,
    Done,
    MemoryStorage,
    SQLiteStorage,
    Status,
    Step,
    Suspend,
    Unique,
    Workflow,
    open_engine,
)
from hephaestus_trio.testing import EPOCH, UnknownEngine, open_harness, reopen


class Park(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        return Suspend()


class Parked(Workflow, unique=Unique(key="parked")):
    start_at = Park
    transitions = {(Park, "go"): Done}


class Hello(Step):
    events = ("ok",)

    async def execute(self, instance, config, context):
        return Complete("ok", {"at": str(trio.current_time())})


async def test_reopen_on_memory_keeps_the_object_and_the_workflows(autojump_clock):
    async with open_harness() as harness:
        first = harness.engine
        storage = harness.storage
        await first.start_instance(Parked, {}, id="parked::a")  # registers Parked
        second = await reopen(first)
        assert second is harness.engine
        assert second is not first
        assert harness.storage is storage
        assert harness.opened == 2
        # The new engine knows Parked although it was only registered by start_instance.
        await second.resume("parked::a", "go")
        assert (await second.wait("parked::a")).status is Status.COMPLETED


async def test_reopen_on_sqlite_uses_a_new_object_on_the_same_file(tmp_path: Path, autojump_clock):
    path = tmp_path / "h.db"
    async with open_harness(lambda: SQLiteStorage(path), workflows=[Parked]) as harness:
        before = harness.storage
        await harness.engine.start_instance(Parked, {}, id="parked::b")
        with trio.move_on_after(60):  # until it parks
            await harness.engine.wait("parked::b")
        engine = await harness.reopen()
        assert harness.storage is not before
        assert (await engine.get("parked::b")).waiting_steps == {"park"}


async def test_wall_time_follows_trio_from_the_epoch(autojump_clock):
    async with open_harness(MemoryStorage) as harness:
        await trio.sleep(90)
        iid = await harness.engine.start_instance(Parked, {}, id="parked::c")
        run = await harness.engine.get(iid)
        assert (run.created_at - EPOCH).total_seconds() == pytest.approx(90)


async def test_reopen_refuses_an_engine_it_did_not_open(autojump_clock):
    async with open_engine() as engine:
        with pytest.raises(UnknownEngine, match="was not opened by a harness"):
            await reopen(engine)
    async with open_harness() as harness:
        old = harness.engine
        await reopen(old)
        with pytest.raises(UnknownEngine, match="already reopened"):
            await reopen(old)
