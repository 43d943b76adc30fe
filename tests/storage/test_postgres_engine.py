"""Engines on ``PostgresStorage``, end to end: real time, the database clock.

Two storage objects on one database stand for two machines; each engine has
its own. The multi-process kill tests live with the scale-out tests; these
check that the runtime and the backend fit together: work is shared, a
resume accepted by one engine is applied by the other (woken by NOTIFY, long
before the poll), a durable timer fires, and a clean shutdown hands runs over.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import AsyncExitStack

import pytest
import trio

from hephaestus_trio import (
    Done,
    PostgresStorage,
    Status,
    Step,
    Unique,
    Wait,
    WaitForEvent,
    Workflow,
    open_engine,
)

pytestmark = pytest.mark.slow

EXECUTIONS: Counter[tuple[str, str]] = Counter()


@pytest.fixture(autouse=True)
def _reset() -> None:
    EXECUTIONS.clear()


class Quick(Step):
    events = ("done",)

    async def execute(self, instance, config, context):  # type: ignore[no-untyped-def]
        EXECUTIONS[(instance.run_id, "quick")] += 1
        await trio.sleep(0.01)
        return "done"


class Shared(Workflow, unique=Unique(key="shared")):
    start_at = Quick
    transitions = {(Quick, "done"): Done}


class Approval(Workflow, unique=Unique(key="approval")):
    start_at = Quick
    transitions = {(Quick, "done"): WaitForEvent, (WaitForEvent, "received"): Done}


class Nap(Workflow, unique=Unique(key="nap")):
    start_at = Quick
    transitions = {(Quick, "done"): (Wait, {"seconds": 0.3}), (Wait, "timeout"): Done}


def history(inst):  # type: ignore[no-untyped-def]
    return [(e.step, e.event) for e in inst.execution_history]


async def test_two_engines_share_the_work_and_each_step_runs_once(postgres_dsn: str) -> None:
    async with AsyncExitStack() as stack:
        engines = [
            await stack.enter_async_context(
                open_engine(PostgresStorage(postgres_dsn, poll_interval=0.5), [Shared])
            )
            for _ in range(2)
        ]
        ids = [await engines[n % 2].start_instance(Shared, id=f"shared::{n}") for n in range(20)]
        with trio.fail_after(60):
            finals = [await engines[0].wait(i) for i in ids]
    assert all(f.status is Status.COMPLETED for f in finals)
    assert all(history(f) == [("quick", "done"), ("done", "done")] for f in finals)
    assert sorted(EXECUTIONS.values()) == [1] * 20


async def test_a_resume_through_one_engine_is_applied_by_the_other(postgres_dsn: str) -> None:
    # The owner polls rarely: it hears of the resume by NOTIFY. The other engine
    # notices the run's end by its poll (no NOTIFY is sent when a run ends).
    async with (
        open_engine(PostgresStorage(postgres_dsn, poll_interval=30), [Approval]) as owner,
        open_engine(PostgresStorage(postgres_dsn, poll_interval=0.5), [Approval]) as other,
    ):
        iid = await owner.start_instance(Approval, id="approval::1")
        with trio.fail_after(30):
            while (await owner.get(iid)).status is not Status.WAITING:
                await trio.sleep(0.02)
        started = time.monotonic()
        await other.resume(iid, "received", {"by": "other"})
        with trio.fail_after(30):
            final = await other.wait(iid)
        took = time.monotonic() - started
    assert final.status is Status.COMPLETED
    assert final.context.steps["wait_for_event"] == {"by": "other"}
    assert took < 15, f"{took:.1f}s: the resume waited for a poll, not a NOTIFY"


async def test_a_durable_timer_fires_by_the_database_clock(postgres_dsn: str) -> None:
    async with open_engine(PostgresStorage(postgres_dsn, poll_interval=0.5), [Nap]) as engine:
        started = time.monotonic()
        iid = await engine.start_instance(Nap, id="nap::1")
        with trio.fail_after(30):
            final = await engine.wait(iid)
    assert time.monotonic() - started >= 0.3
    assert final.status is Status.COMPLETED
    assert history(final) == [("quick", "done"), ("wait", "timeout"), ("done", "done")]


async def test_a_clean_shutdown_hands_parked_runs_to_a_peer(postgres_dsn: str) -> None:
    async with open_engine(PostgresStorage(postgres_dsn, poll_interval=0.5), [Approval]) as peer:
        async with open_engine(PostgresStorage(postgres_dsn), [Approval]) as leaving:
            iid = await leaving.start_instance(Approval, id="approval::2")
            with trio.fail_after(30):
                while (await leaving.get(iid)).status is not Status.WAITING:
                    await trio.sleep(0.02)
        await peer.resume(iid, "received")
        with trio.fail_after(30):
            final = await peer.wait(iid)
        records = await peer.storage.engines(now=final.updated_at)
    assert final.status is Status.COMPLETED
    assert [r.engine_id for r in records] == [peer.engine_id], "the leaver unregistered"
