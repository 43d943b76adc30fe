"""The class-method facade (``Flow.start("abc", ...)``) and versioned dispatchers."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Complete,
    Done,
    EngineClosed,
    InstanceNotFound,
    InvalidResume,
    MemoryStorage,
    NotCancellable,
    Status,
    Step,
    Suspend,
    Unique,
    Workflow,
    open_engine,
    trio_wall_clock,
)

EPOCH = datetime(2030, 1, 1, tzinfo=UTC)


class Review(Step):
    events = ("approved", "rejected")

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend()


class Record(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Complete:
        return Complete("ok", updates={"by": instance.workflow_version})


class Reject(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Approval(Workflow, unique=Unique(key="doc")):
    start_at = Review
    transitions = {
        (Review, "approved"): Record,
        (Review, "rejected"): Reject,
        (Record, "ok"): Done,
        (Reject, "ok"): Done,
    }


# -- a versioned dispatcher ----------------------------------------------------


class StampV1(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Complete:
        return Complete("ok", updates={"ran": "v1"})


class StampV2(Step):
    events = ("ok",)
    step_key = "stamp_v1"  # same context key on purpose: only the code differs

    async def execute(self, instance: Any, config: Any, context: Any) -> Complete:
        return Complete("ok", updates={"ran": "v2"})


class Pause(Step):
    events = ("go",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend()


class BillingV1(Workflow, unique=Unique(key="invoice"), version=1):
    start_at = Pause
    transitions = {(Pause, "go"): StampV1, (StampV1, "ok"): Done}


class BillingV2(Workflow, unique=Unique(key="invoice"), version=2):
    start_at = Pause
    transitions = {(Pause, "go"): StampV2, (StampV2, "ok"): Done}


class Billing(
    Workflow, unique=Unique(key="invoice"), versions={1: BillingV1, 2: BillingV2}, current=2
):
    @classmethod
    def version_for(cls, versions: Mapping[int, type[Workflow]], options: Mapping[str, Any]) -> Any:
        context = options.get("context") or {}
        return 1 if context.get("legacy") else None


# -- the facade ----------------------------------------------------------------


async def test_facade_round_trip(autojump_clock: Any):
    async with open_engine(workflows=[Approval]) as engine:
        iid = await Approval.start("abc123", {"amount": 5})
        assert iid == "doc::abc123"
        await Approval.start("other1", {})
        await trio.sleep(1)

        got = await Approval.get("abc123")
        assert got == await engine.get(iid)
        assert got.status is Status.WAITING
        assert got.context.initial == {"amount": 5}
        # A value and the id it builds address the same run.
        assert await Approval.get("doc::abc123") == got

        waiting = await Approval.list(status="waiting")
        assert sorted(i.id for i in waiting) == ["doc::abc123", "doc::other1"]

        await Approval.resume("abc123", "approved")
        final = await engine.wait(iid)
        assert final.status is Status.COMPLETED
        assert final.context.steps["record"] == {"by": 1}
        assert [i.id for i in await Approval.list(status="waiting")] == ["doc::other1"]
        assert [i.id for i in await Approval.list(status="completed")] == [iid]

        with pytest.raises(InvalidResume):
            await Approval.resume("abc123", "approved")
        cancelled = await Approval.cancel("other1")
        assert cancelled.status is Status.CANCELLED
        with pytest.raises(NotCancellable):
            await Approval.cancel("other1")
        with pytest.raises(InstanceNotFound):
            await Approval.get("missing")


@pytest.mark.parametrize("value", ["ABC", "a-b", "", "a b", "x::y", "ééé", "12345678-1234"])
async def test_facade_rejects_bad_values(autojump_clock: Any, value: str):
    async with open_engine(workflows=[Approval]) as engine:
        with pytest.raises(ValueError, match="invalid"):
            await Approval.start(value, {})
        for call in (Approval.get, Approval.cancel):
            with pytest.raises(ValueError):
                await call(value)
        with pytest.raises(ValueError):
            await Approval.resume(value, "approved")
        assert await engine.list() == []


async def test_facade_accepts_uuids(autojump_clock: Any):
    value = uuid.UUID("6f1c2b9e-1f2a-4c3d-8e4f-0a1b2c3d4e5f")
    async with open_engine(workflows=[Approval]):
        iid = await Approval.start(str(value).upper(), {})
        assert iid == f"doc::{value}"  # normalized to the canonical lowercase form
        assert (await Approval.get(str(value))).id == iid
        await trio.sleep(1)
        await Approval.resume(str(value), "rejected")


async def test_facade_with_explicit_engine(autojump_clock: Any):
    async with open_engine(workflows=[Approval]) as outer:
        async with open_engine(workflows=[Approval]) as inner:
            iid = await Approval.start("xyz", {}, engine=outer)
            await trio.sleep(1)
            # The context variable points at the inner engine ...
            with pytest.raises(InstanceNotFound):
                await Approval.get("xyz")
            with pytest.raises(InstanceNotFound):
                await inner.get(iid)
            # ... engine= reaches the outer one, for every facade method.
            assert (await Approval.get("xyz", engine=outer)).status is Status.WAITING
            assert [i.id for i in await Approval.list(engine=outer)] == [iid]
            await Approval.resume("xyz", "rejected", engine=outer)
            assert (await outer.wait(iid)).status is Status.COMPLETED
            await Approval.start("xyz", {}, engine=outer)
            assert (await Approval.cancel("xyz", engine=outer)).status is Status.CANCELLED
        # Leaving the inner block restores the outer engine as the current one.
        assert len(await Approval.list()) == 2


async def test_facade_outside_open_engine_raises_engine_closed(autojump_clock: Any):
    with pytest.raises(EngineClosed):
        await Approval.start("abc", {})
    with pytest.raises(EngineClosed):
        await Approval.get("abc")
    with pytest.raises(EngineClosed):
        await Approval.list()
    with pytest.raises(EngineClosed):
        await Approval.resume("abc", "approved")
    with pytest.raises(EngineClosed):
        await Approval.cancel("abc")

    async with open_engine(workflows=[Approval]) as engine:
        await Approval.start("abc", {})
    # After the block: the context variable is reset and the engine refuses calls.
    with pytest.raises(EngineClosed):
        await Approval.get("abc")
    with pytest.raises(EngineClosed):
        await Approval.get("abc", engine=engine)
    with pytest.raises(EngineClosed):
        await engine.start_instance(Approval, {}, id="doc::again")


# -- versioned dispatchers -----------------------------------------------------


@pytest.mark.parametrize(
    ("context", "version", "expected"),
    [
        ({}, None, BillingV2),  # current
        ({"legacy": True}, None, BillingV1),  # version_for beats current
        ({"legacy": True}, 2, BillingV2),  # explicit beats version_for
        ({}, 1, BillingV1),  # explicit beats current
    ],
)
async def test_dispatcher_resolves_the_version(
    autojump_clock: Any, context: dict[str, Any], version: int | None, expected: type[Workflow]
):
    async with open_engine(workflows=[Billing]) as engine:
        iid = await Billing.start("inv1", context, version=version)
        assert iid == "invoice::inv1"
        await trio.sleep(1)
        inst = await engine.get(iid)
        assert inst.workflow == expected.name
        assert inst.workflow_version == expected.version
        await Billing.resume("inv1", "go")
        final = await engine.wait(iid)
        assert final.workflow == expected.name
        assert final.workflow_version == expected.version
        assert final.context.steps["stamp_v1"] == {"ran": f"v{expected.version}"}


async def test_dispatcher_list_covers_every_version(autojump_clock: Any):
    async with open_engine(workflows=[Billing]):
        await Billing.start("a1", {}, version=1)
        await Billing.start("a2", {})
        await Billing.start("a3", {"legacy": True})
        await trio.sleep(1)
        everything = await Billing.list(status="waiting")
        assert sorted((i.id, i.workflow_version) for i in everything) == [
            ("invoice::a1", 1),
            ("invoice::a2", 2),
            ("invoice::a3", 1),
        ]
        assert sorted(i.id for i in await BillingV1.list()) == ["invoice::a1", "invoice::a3"]
        assert [i.id for i in await BillingV2.list()] == ["invoice::a2"]
        assert [i.id for i in await Billing.list(workflow_version=2)] == ["invoice::a2"]


async def test_dispatcher_unknown_version(autojump_clock: Any):
    async with open_engine(workflows=[Billing]) as engine:
        with pytest.raises(ValueError, match=r"7.*\[1, 2\]"):
            await Billing.start("b1", {}, version=7)
        with pytest.raises(ValueError, match="7"):
            await engine.start_instance(Billing, {}, id="invoice::b1", version=7)
        with pytest.raises(ValueError, match="3"):
            await BillingV1.start("b1", {}, version=3)
        assert await engine.list() == []


async def test_a_run_keeps_its_version_across_engine_restarts(autojump_clock: Any):
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    async with open_engine(storage, [Billing], wall_clock=clock):
        iid = await Billing.start("c1", {}, version=1)
        await trio.sleep(1)
    # Reopened: the same dispatcher, whose current version is 2.
    async with open_engine(storage, [Billing], wall_clock=clock) as engine:
        assert Billing.current == 2
        await Billing.resume("c1", "go")
        final = await engine.wait(iid)
    assert (final.workflow, final.workflow_version) == (BillingV1.name, 1)
    assert final.context.steps["stamp_v1"] == {"ran": "v1"}
