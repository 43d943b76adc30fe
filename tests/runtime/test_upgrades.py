"""Safe upgrades: a run refuses to be driven by a definition edited in place.

Each run records its definition's fingerprint and shape when it starts. An
engine whose class under the run's name and version has another shape leaves
the run untouched (no write), releases it for an engine that has the old
definition, logs the difference at ERROR, and ``resume`` raises
``DefinitionMismatch``. Registering the old definition as version 1 beside
the new version 2 is the fix, and it drives the run to its end.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    DefinitionMismatch,
    Done,
    Instance,
    MemoryStorage,
    Status,
    Step,
    Storage,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
    trio_wall_clock,
)

CLOCK = trio_wall_clock(datetime(2030, 1, 1, tzinfo=UTC))


class Pick(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(10)
        return "ok"


class Weigh(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Pack(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


# Version 1 as it was deployed, and the same class edited in place (same name, version).
class OrderV1(Workflow, unique=Unique(key="order"), name="shop.order", version=1):
    start_at = Pick
    transitions = {(Pick, "ok"): Pack, (Pack, "ok"): Done}


class EditedV1(Workflow, unique=Unique(key="order"), name="shop.order", version=1):
    start_at = Pick
    transitions = {(Pick, "ok"): Weigh, (Weigh, "ok"): Pack, (Pack, "ok"): Done}


# The right way: the new definition is version 2, the old one stays registered as 1.
class OrderV2(Workflow, unique=Unique(key="order"), name="shop.order.v2", version=2):
    start_at = Pick
    transitions = {(Pick, "ok"): Weigh, (Weigh, "ok"): Pack, (Pack, "ok"): Done}


class Order(Workflow, unique=Unique(key="order"), versions={1: OrderV1, 2: OrderV2}, current=2):
    pass


class ParkedV1(Workflow, unique=Unique(key="parked"), name="shop.parked"):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


class ParkedEdited(Workflow, unique=Unique(key="parked"), name="shop.parked"):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Pack, (Pack, "ok"): Done}


def steps(inst: Instance) -> list[str]:
    return [e.step for e in inst.completions]


async def stored(storage: Storage, run_id: str) -> Instance:
    found = await storage.get(run_id)
    assert found is not None
    return found


async def test_an_engine_with_an_edited_definition_leaves_the_run_untouched(
    storage: Storage, mock_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="hephaestus_trio.runtime")
    async with open_engine(storage=storage, workflows=[OrderV1], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(OrderV1, id="order::a1")
        await trio.sleep(1)  # `pick` is running; leaving the block releases the run
        before = await engine.get(iid)
    run_id = before.run_id
    assert before.definition_fingerprint == OrderV1.definition_fingerprint()
    assert before.status is Status.RUNNING

    async with open_engine(storage=storage, workflows=[EditedV1], wall_clock=CLOCK) as engine:
        await trio.sleep(5)
        assert await stored(storage, run_id) == before  # nothing written
        stats = engine.statistics()
        assert (stats.runs, stats.refused) == (0, 1)  # refused and released
        with pytest.raises(DefinitionMismatch) as caught:
            await engine.resume(iid, "ok")
        assert "added step 'weigh'" in caught.value.changes
        assert "missing transition 'pick' --ok--> 'pack'" in caught.value.changes
        assert "added transition 'pick' --ok--> 'weigh'" in caught.value.changes
        assert await storage.wakeups(run_id) == []

    [record] = [r for r in caplog.records if "refused" in r.getMessage()]
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert "'order::a1'" in message
    assert "'shop.order' version 1" in message
    assert "added step 'weigh'" in message
    assert "register the old definition as its own version beside the new one" in message

    # The old definition, registered as version 1 beside version 2, drives it to its end.
    async with open_engine(storage=storage, workflows=[Order], wall_clock=CLOCK) as engine:
        final = await engine.wait(iid)
        fresh = await engine.wait(await engine.start_instance(Order, id="order::b2"))
    assert final.status is Status.COMPLETED
    assert steps(final) == ["pick", "pack", "done"]
    assert fresh.workflow == "shop.order.v2"
    assert steps(fresh) == ["pick", "weigh", "pack", "done"]


async def test_a_refused_run_is_offered_again_to_every_engine(autojump_clock: Any) -> None:
    """Both engines run at once: the edited one refuses, the old one takes the run."""
    storage = MemoryStorage()
    async with open_engine(storage=storage, workflows=[OrderV1], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(OrderV1, id="order::c3")
        await trio.sleep(1)
    async with (
        open_engine(storage=storage, workflows=[EditedV1], wall_clock=CLOCK) as edited,
        open_engine(storage=storage, workflows=[OrderV1], wall_clock=CLOCK) as old,
    ):
        final = await old.wait(iid)
        assert edited.statistics().refused == 1
    assert final.status is Status.COMPLETED
    assert steps(final) == ["pick", "pack", "done"]


async def test_resuming_a_parked_run_with_an_edited_definition_raises(
    storage: Storage, mock_clock: Any
) -> None:
    async with open_engine(storage=storage, workflows=[ParkedV1], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(ParkedV1, id="parked::a")
        await trio.sleep(1)
        before = await engine.get(iid)
    run_id = before.run_id
    assert before.status is Status.WAITING

    async with open_engine(storage=storage, workflows=[ParkedEdited], wall_clock=CLOCK) as engine:
        with pytest.raises(DefinitionMismatch, match="added step 'pack'"):
            await engine.resume(iid, "received")
        with pytest.raises(DefinitionMismatch):
            await engine.schedule_resume(iid, "wait_for_event", 5, event="received")
        assert await storage.wakeups(run_id) == []
        # Cancelling needs no definition: it still works.
        cancelled = await engine.cancel(iid)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.execution_history == before.execution_history


async def test_a_running_refused_run_can_still_be_cancelled(autojump_clock: Any) -> None:
    storage = MemoryStorage()
    stops: list[str] = []
    async with open_engine(storage=storage, workflows=[OrderV1], wall_clock=CLOCK) as engine:
        iid = await engine.start_instance(OrderV1, id="order::d4")
        await trio.sleep(1)
    async with open_engine(storage=storage, workflows=[EditedV1], wall_clock=CLOCK) as engine:
        engine.subscribe(lambda e: stops.append(e.metadata["status"]), events=["workflow.stop"])
        await trio.sleep(1)
        assert engine.statistics().refused == 1
        cancelled = await engine.cancel(iid)
    assert cancelled.status is Status.CANCELLED
    assert cancelled.completions == ()
    assert stops == ["cancelled"]  # announced exactly once


async def test_runs_stored_before_fingerprints_are_trusted(autojump_clock: Any) -> None:
    storage = MemoryStorage()
    async with storage:
        legacy = Instance.new(
            "shop.order", {}, id="order::e5", run_id="legacy", now=CLOCK(), version=1
        )
        assert legacy.definition_fingerprint is None
        await storage.create(legacy, now=CLOCK())
    async with open_engine(storage=storage, workflows=[EditedV1], wall_clock=CLOCK) as engine:
        final = await engine.wait("order::e5")
    assert final.status is Status.COMPLETED
    assert steps(final) == ["pick", "weigh", "pack", "done"]
