"""A run whose workflow the engine was not given is left exactly as persisted."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    MemoryStorage,
    Status,
    Step,
    Unique,
    UnknownWorkflow,
    WaitForEvent,
    Workflow,
    WorkflowDefinitionError,
    open_engine,
    trio_wall_clock,
)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)
RUNS: list[str] = []


class Work(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        RUNS.append(instance.id)
        await trio.sleep(10)
        return "ok"


class Known(Workflow, unique=Unique(key="known")):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


class Busy(Workflow, unique=Unique(key="busy")):
    start_at = Work
    transitions = {(Work, "ok"): Done}


async def test_unknown_workflows_are_left_untouched_and_refused_clearly(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    async with open_engine(storage, workflows=[Known, Busy], wall_clock=clock) as first:
        parked = await first.start_instance(Known, {}, id="known::a")
        running = await first.start_instance(Busy, {}, id="busy::a")
        await trio.sleep(1)
    async with storage:  # open_engine closed it; reopen it to read
        before = {i.id: i for i in await storage.query()}
    assert before[parked].status is Status.WAITING
    assert before[running].status is Status.RUNNING
    RUNS.clear()

    with caplog.at_level(logging.ERROR, logger="hephaestus_trio"):
        async with open_engine(storage, workflows=[], wall_clock=clock) as second:
            await trio.sleep(60)
            with pytest.raises(UnknownWorkflow, match="Known"):
                await second.resume(parked, "received")
            with pytest.raises(UnknownWorkflow, match="Known"):
                await second.schedule_resume(parked, "wait_for_event", 5)
            assert second.live_tasks == 0
    assert RUNS == []  # nothing ran, nothing was restarted or failed
    async with storage:
        assert {i.id: i for i in await storage.query()} == before
        # The refused calls recorded nothing.
        assert [await storage.wakeups(i.run_id) for i in before.values()] == [[], []]
    # Changed on purpose: an engine claims only runs of the workflows it was
    # given, so it never even looks at the others (nothing to log an error about:
    # they simply wait for an engine that can run them).
    assert "busy::a" not in caplog.text

    # An engine that is given the workflows continues both runs.
    async with open_engine(storage, workflows=[Known, Busy], wall_clock=clock) as third:
        await third.resume(parked, "received")
        assert (await third.wait(parked)).status is Status.COMPLETED
        assert (await third.wait(running)).status is Status.COMPLETED
    assert RUNS == [running]


def _make_flow(name: str) -> type[Workflow]:
    class Flow(Workflow, unique=Unique(key="flow"), name=name):
        start_at = WaitForEvent
        transitions = {(WaitForEvent, "received"): Done}

    return Flow


async def test_two_classes_under_one_registry_name_are_refused(autojump_clock: Any) -> None:
    first, second = _make_flow("shared.Flow"), _make_flow("shared.Flow")
    with pytest.raises(WorkflowDefinitionError, match=r"'shared\.Flow'.*name="):
        async with open_engine(workflows=[first, second]):
            pass  # pragma: no cover - never entered
    async with open_engine(workflows=[first]) as engine:
        engine.register(first)  # the same class again is fine
        with pytest.raises(WorkflowDefinitionError, match="share the registry name"):
            await engine.start_instance(second, {}, id="flow::a")
        assert await engine.list() == []


async def test_cancel_of_a_hibernating_run_of_an_unknown_workflow_still_cancels_it(
    storage: Any, mock_clock: Any
) -> None:
    """The engine cannot drive the run (no workflow class), so it claims it and
    applies the cancel with one direct fenced write: no step code runs."""
    clock = trio_wall_clock(EPOCH)
    stops: list[Any] = []
    async with open_engine(storage, workflows=[Known], wall_clock=clock) as first:
        parked = await first.start_instance(Known, {}, id="known::c")
        with trio.fail_after(60):  # SQLite: real writes, so poll rather than assume
            while first.live_tasks or not (await first.get(parked)).waiting_steps:
                await trio.sleep(0.1)
        # hibernating: nobody owns it
    async with open_engine(
        storage, workflows=[], wall_clock=clock, handlers=[stops.append]
    ) as second:
        cancelled = await second.cancel(parked)
        assert second.live_tasks == 0
        assert await second.get(parked) == cancelled
        assert await storage.wakeups(cancelled.run_id) == []  # the request was consumed
    assert cancelled.status is Status.CANCELLED
    assert cancelled.execution_history == ()
    assert [e.name for e in stops if e.name.startswith("workflow.")] == []

    # An engine that knows the workflow finds it cancelled and runs nothing.
    async with open_engine(storage, workflows=[Known], wall_clock=clock) as third:
        assert await third.wait(parked) == cancelled
        await trio.sleep(10)
        assert third.live_tasks == 0
