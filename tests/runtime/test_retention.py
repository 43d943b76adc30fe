"""Retention: terminal runs are purged on demand or in the background; live ones never."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    InstanceNotFound,
    Status,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
)


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


async def test_purge_deletes_only_terminal_runs_older_than_the_age(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Short, Parks]) as engine:
        old = await engine.start_instance(Short, {}, id="short::old")
        await engine.wait(old)
        parked = await engine.start_instance(Parks, {}, id="parks::p")
        await trio.sleep(3600)
        recent = await engine.start_instance(Short, {}, id="short::recent")
        await engine.wait(recent)

        assert await engine.purge(older_than=timedelta(minutes=30)) == 1
        with pytest.raises(InstanceNotFound):
            await engine.get(old)
        assert (await engine.get(recent)).status is Status.COMPLETED
        assert (await engine.get(parked)).status is Status.WAITING

        # An absolute cutoff works too; live runs survive any cutoff.
        cutoff = datetime.now(UTC) + timedelta(days=365)
        assert await engine.purge(older_than=cutoff) == 1
        assert [i.id for i in await engine.list()] == [parked]


async def test_retention_purges_in_the_background(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Short, Parks], retention=timedelta(days=7)) as engine:
        done = await engine.start_instance(Short, {}, id="short::done")
        await engine.wait(done)
        parked = await engine.start_instance(Parks, {}, id="parks::p")

        await trio.sleep(timedelta(days=6).total_seconds())
        assert {i.id for i in await engine.list()} == {done, parked}

        await trio.sleep(timedelta(days=2).total_seconds())
        assert [i.id for i in await engine.list()] == [parked]
        assert (await engine.get(parked)).status is Status.WAITING
