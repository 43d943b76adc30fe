"""Business-key uniqueness among live runs, per scope: workflow, version, global, none.

Uniqueness is enforced by the storage at the write that creates the run, so
concurrent starts of one key have exactly one winner. A completed, failed or
cancelled run frees its key.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    AlreadyRunning,
    AmbiguousInstance,
    Done,
    Engine,
    Fail,
    InstanceNotFound,
    Status,
    Step,
    Suspend,
    Unique,
    Workflow,
    open_engine,
)


class Hold(Step):
    """Parks until resumed with ``go``: keeps its run live for as long as a test needs."""

    events = ("go",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend()


class Settle(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Any:
        if context.initial.get("outcome") == "fail":
            return Fail("told to fail")
        return "ok"


class Keyed(Workflow, unique=Unique(key="order", scope="workflow")):
    start_at = Hold
    transitions = {(Hold, "go"): Settle, (Settle, "ok"): Done}


class KeyedV1(Workflow, unique=Unique(key="versioned", scope="version"), version=1):
    start_at = Hold
    transitions = {(Hold, "go"): Settle, (Settle, "ok"): Done}


class KeyedV2(Workflow, unique=Unique(key="versioned", scope="version"), version=2):
    start_at = Hold
    transitions = {(Hold, "go"): Done}


class KeyedVersions(
    Workflow,
    unique=Unique(key="versioned", scope="version"),
    versions={1: KeyedV1, 2: KeyedV2},
    current=2,
):
    pass


class GlobalA(Workflow, unique=Unique(key="shared", scope="global")):
    start_at = Hold
    transitions = {(Hold, "go"): Done}


class GlobalB(Workflow, unique=Unique(key="shared", scope="global")):
    start_at = Hold
    transitions = {(Hold, "go"): Done}


class PerWorkflowA(Workflow, unique=Unique(key="common", scope="workflow")):
    start_at = Hold
    transitions = {(Hold, "go"): Done}


class PerWorkflowB(Workflow, unique=Unique(key="common", scope="workflow")):
    start_at = Hold
    transitions = {(Hold, "go"): Settle, (Settle, "ok"): Done}


class Unscoped(Workflow, unique=Unique(key="event", scope="none")):
    start_at = Hold
    transitions = {(Hold, "go"): Done}


ALL = [Keyed, KeyedVersions, GlobalA, GlobalB, PerWorkflowA, PerWorkflowB, Unscoped]

Starter = Callable[[Engine], Awaitable[str]]

STARTERS: dict[str, tuple[type[Workflow], Starter]] = {
    "start_instance/workflow": (Keyed, lambda e: e.start_instance(Keyed, {}, id="order::k1")),
    "facade/workflow": (Keyed, lambda e: Keyed.start("k1", {})),
    "facade/version": (KeyedVersions, lambda e: KeyedVersions.start("k1", {})),
    "facade/global": (GlobalA, lambda e: GlobalA.start("k1", {})),
}


@pytest.mark.parametrize("how", sorted(STARTERS))
async def test_concurrent_starts_of_one_key_have_one_winner(autojump_clock: Any, how: str):
    workflow, start = STARTERS[how]
    won: list[str] = []
    lost: list[AlreadyRunning] = []

    async def attempt(engine: Engine) -> None:
        try:
            won.append(await start(engine))
        except AlreadyRunning as exc:
            lost.append(exc)

    async with open_engine(workflows=ALL) as engine:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(attempt, engine)
        assert len(won) == 1
        assert len(lost) == 49
        runs = await engine.list(id=won[0])
        assert len(runs) == 1
        assert runs[0].status.is_live
        assert {exc.instance_id for exc in lost} == {won[0]}
        assert {exc.scope for exc in lost} == {workflow.unique.scope}


async def _finish(engine: Engine, iid: str, outcome: str) -> Status:
    if outcome == "cancelled":
        return (await engine.cancel(iid)).status
    await engine.resume(iid, "go")
    return (await engine.wait(iid)).status


@pytest.mark.parametrize(
    ("outcome", "status"),
    [("completed", Status.COMPLETED), ("fail", Status.FAILED), ("cancelled", Status.CANCELLED)],
)
async def test_a_finished_run_frees_its_key(autojump_clock: Any, outcome: str, status: Status):
    async with open_engine(workflows=[Keyed]) as engine:
        iid = await Keyed.start("k2", {"outcome": outcome})
        with pytest.raises(AlreadyRunning):
            await Keyed.start("k2", {})
        await trio.sleep(1)
        assert await _finish(engine, iid, outcome) is status
        old = await engine.get(iid)

        again = await Keyed.start("k2", {})
        assert again == iid
        await trio.sleep(1)
        new = await engine.get(iid)  # the live run wins over the finished one
        assert new.run_id != old.run_id
        assert new.status is Status.WAITING
        runs = await engine.list(id=iid)
        assert [r.run_id for r in runs] == [old.run_id, new.run_id]
        assert runs[0].status is status  # the finished run keeps its history
        with pytest.raises(AlreadyRunning):
            await Keyed.start("k2", {})


async def test_scope_version_lets_each_version_hold_the_key(autojump_clock: Any):
    async with open_engine(workflows=[KeyedVersions]) as engine:
        one = await KeyedVersions.start("k3", {}, version=1)
        two = await KeyedVersions.start("k3", {}, version=2)
        assert one == two == "versioned::k3"
        with pytest.raises(AlreadyRunning):
            await KeyedVersions.start("k3", {}, version=1)
        with pytest.raises(AlreadyRunning):
            await KeyedVersions.start("k3", {})  # current = 2
        await trio.sleep(1)

        runs = await engine.list(id=one)
        assert sorted((r.workflow, r.workflow_version) for r in runs) == [
            (KeyedV1.name, 1),
            (KeyedV2.name, 2),
        ]
        # Two live runs share the id: the bare engine calls cannot choose ...
        with pytest.raises(AmbiguousInstance):
            await engine.get(one)
        with pytest.raises(AmbiguousInstance):
            await KeyedVersions.get("k3")  # the dispatcher spans both versions
        # ... a version class narrows to its own runs.
        assert (await engine.get(one, workflow=KeyedV1.name)).workflow_version == 1
        assert (await KeyedV2.get("k3")).workflow_version == 2
        await KeyedV2.resume("k3", "go")
        assert (await engine.wait(one, workflow=KeyedV2.name)).status is Status.COMPLETED
        # Only version 1 is live now: no more ambiguity.
        assert (await engine.get(one)).workflow_version == 1


async def test_scope_global_conflicts_across_workflows(autojump_clock: Any):
    async with open_engine(workflows=[GlobalA, GlobalB]) as engine:
        iid = await GlobalA.start("k4", {})
        with pytest.raises(AlreadyRunning) as info:
            await GlobalB.start("k4", {})
        assert info.value.scope == "global"
        with pytest.raises(AlreadyRunning):
            await engine.start_instance(GlobalB, {}, id=iid)
        await trio.sleep(1)
        await GlobalA.cancel("k4")
        assert await GlobalB.start("k4", {}) == iid
        await trio.sleep(1)
        assert (await engine.get(iid)).workflow == GlobalB.name


async def test_scope_workflow_lets_different_workflows_share_a_key(autojump_clock: Any):
    async with open_engine(workflows=[PerWorkflowA, PerWorkflowB]) as engine:
        a = await PerWorkflowA.start("k5", {})
        b = await PerWorkflowB.start("k5", {})
        assert a == b == "common::k5"
        with pytest.raises(AlreadyRunning):
            await PerWorkflowA.start("k5", {})
        await trio.sleep(1)

        with pytest.raises(AmbiguousInstance) as info:
            await engine.get(a)
        assert set(info.value.workflows) == {PerWorkflowA.name, PerWorkflowB.name}
        with pytest.raises(AmbiguousInstance):
            await engine.resume(a, "go")
        with pytest.raises(AmbiguousInstance):
            await engine.cancel(a)
        with pytest.raises(AmbiguousInstance):
            await engine.schedule_resume(a, "hold", 1.0, event="go")
        with pytest.raises(AmbiguousInstance):
            await engine.wait(a)

        assert (await engine.get(a, workflow=PerWorkflowA.name)).workflow == PerWorkflowA.name
        # The facade always narrows to its own workflow.
        assert (await PerWorkflowB.get("k5")).workflow == PerWorkflowB.name
        await PerWorkflowB.resume("k5", "go")
        assert (await engine.wait(b, workflow=PerWorkflowB.name)).status is Status.COMPLETED
        assert (await PerWorkflowA.get("k5")).status is Status.WAITING
        cancelled = await PerWorkflowA.cancel("k5")
        assert cancelled.workflow == PerWorkflowA.name
        with pytest.raises(InstanceNotFound):
            await engine.get(a, workflow="no.such.Workflow")


async def test_scope_none_adds_a_suffix_and_never_conflicts(autojump_clock: Any):
    async with open_engine(workflows=[Unscoped]) as engine:
        ids = [await Unscoped.start("k6", {}) for _ in range(5)]
        assert all(re.fullmatch(r"event::k6::[0-9a-f]{8}", iid) for iid in ids)
        assert len(set(ids)) == 5
        await trio.sleep(1)
        for iid in ids:
            assert (await engine.get(iid)).status is Status.WAITING
            assert (await Unscoped.get(iid)).id == iid
        await Unscoped.resume(ids[0], "go")
        assert (await engine.wait(ids[0])).status is Status.COMPLETED
        assert len(await Unscoped.list(status="waiting")) == 4


@pytest.mark.slow
async def test_concurrent_starts_on_sqlite_have_one_winner(tmp_path: Any):
    """The same race against a durable backend, where each start really waits on a thread."""
    from hephaestus_trio import SQLiteStorage

    won: list[str] = []
    lost: list[AlreadyRunning] = []

    async def attempt() -> None:
        try:
            won.append(await Keyed.start("k7", {}))
        except AlreadyRunning as exc:
            lost.append(exc)

    async with open_engine(SQLiteStorage(str(tmp_path / "unique.db")), ALL) as engine:
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(attempt)
        assert (len(won), len(lost)) == (1, 49)
        assert len(await engine.list(id="order::k7")) == 1
