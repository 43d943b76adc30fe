"""Our own errors for bad values, ``engine.wait`` timeouts, and ``engine.statistics()``."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs
import pytest
import trio

from hephaestus_trio import (
    Done,
    EngineStatistics,
    HephaestusError,
    InvalidValue,
    RetryPolicy,
    Status,
    Step,
    Unique,
    WaitForEvent,
    WaitTimeout,
    Workflow,
    open_engine,
)


class Nap(Step):
    events = ("done",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(100)
        return "done"


class Napping(Workflow, unique=Unique(key="nap")):
    start_at = Nap
    transitions = {(Nap, "done"): Done}


class Crash(Step):
    events = ("done",)
    retry = RetryPolicy(max_attempts=3, backoff="constant", base=50.0, max_backoff=50.0)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        raise ConnectionError("down")


class Crashing(Workflow, unique=Unique(key="crash")):
    start_at = Crash
    transitions = {(Crash, "done"): Done}


class Both(Step):
    """Runs beside a parked step: the run is not hibernating while this runs."""

    events = ("done",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(100)
        return "done"


class Fork(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Join(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Forked(Workflow, unique=Unique(key="fork")):
    start_at = Fork
    transitions = {
        (Fork, "ok"): [Both, WaitForEvent],
        (Both, "done"): Join,
        (WaitForEvent, "received"): Join,
        (Join, "ok"): Done,
    }


class Staged(Workflow, unique=Unique(key="staged")):
    start_at = Nap
    transitions = {(Nap, "done"): WaitForEvent, (WaitForEvent, "received"): Done}


class Parks(Workflow, unique=Unique(key="park")):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


# -- wait(timeout=) --------------------------------------------------------------------------


async def test_wait_timeout_names_the_run_and_its_status(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Napping, Parks]) as engine:
        iid = await engine.start_instance(Napping, id="nap::a")
        with pytest.raises(WaitTimeout) as caught:
            await engine.wait(iid, timeout=5)
        error = caught.value
        assert isinstance(error, TimeoutError)
        assert isinstance(error, HephaestusError)
        assert (error.instance_id, error.status, error.timeout) == ("nap::a", "running", 5.0)
        assert error.run_id == (await engine.get(iid)).run_id
        assert "'nap::a'" in str(error)
        assert "still running" in str(error)
        # The run went on: waiting again succeeds.
        final = await engine.wait(iid)
        assert final.status is Status.COMPLETED

        parked = await engine.start_instance(Parks, id="park::a")
        await trio.sleep(1)
        with pytest.raises(WaitTimeout, match="still waiting"):
            await engine.wait(parked, timeout=0)


@pytest.mark.parametrize("bad", [-1, float("nan"), "5", True])
async def test_wait_refuses_a_bad_timeout(autojump_clock: Any, bad: Any) -> None:
    async with open_engine(workflows=[Napping]) as engine:
        iid = await engine.start_instance(Napping, id="nap::b")
        with pytest.raises(InvalidValue, match="timeout must be a number of seconds >= 0"):
            await engine.wait(iid, timeout=bad)


# -- bad values ------------------------------------------------------------------------------


async def test_bad_engine_values_are_invalid_values(autojump_clock: Any) -> None:
    with pytest.raises(InvalidValue, match="inbox_size must be a positive int"):
        async with open_engine(inbox_size=0):
            pass
    with pytest.raises(ValueError, match="lease_ttl must be a positive number"):
        async with open_engine(lease_ttl=-1):
            pass
    async with open_engine(workflows=[Parks]) as engine:
        iid = await engine.start_instance(Parks, id="park::b")
        with pytest.raises(InvalidValue, match="delay must be a number of seconds >= 0, got -1"):
            await engine.schedule_resume(iid, "wait_for_event", -1, event="received")
        with pytest.raises(InvalidValue, match="non-empty string"):
            await engine.start_instance(Parks, id="")
        with pytest.raises(InvalidValue, match="unknown status 'bogus'"):
            await engine.list(status="bogus")
        with pytest.raises(InvalidValue, match="has no version 7"):
            await engine.start_instance(Parks, id="park::c", version=7)


async def test_a_context_that_is_not_a_mapping_is_a_clear_type_error(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Parks]) as engine:
        with pytest.raises(TypeError, match=r"context must be a mapping .* got list \[1, 2\]"):
            await engine.start_instance(Parks, [1, 2], id="park::d")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="context must be a mapping .* got str 'abc'"):
            await Parks.start("e", "abc", engine=engine)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="telemetry_metadata must be a mapping .* got int"):
            await engine.start_instance(Parks, {}, id="park::f", telemetry_metadata=3)  # type: ignore[arg-type]
        iid = await engine.start_instance(Parks, id="park::g")
        await trio.sleep(1)
        with pytest.raises(TypeError, match="payload must be a mapping .* got tuple"):
            await engine.resume(iid, "received", ("a",))  # type: ignore[arg-type]
        assert await engine.list(status="waiting") == [await engine.get(iid)]


# -- statistics --------------------------------------------------------------------------------


async def test_statistics_count_what_the_engine_holds(autojump_clock: Any) -> None:
    async with open_engine(workflows=[Napping, Crashing, Forked, Parks, Staged]) as engine:
        empty = engine.statistics()
        assert empty == EngineStatistics(
            runs=0,
            running=0,
            parked=0,
            backing_off=0,
            steps=0,
            tasks=0,
            leases=0,
            queued_wakeups=0,
            refused=0,
        )
        await engine.start_instance(Napping, id="nap::s")
        await engine.start_instance(Crashing, id="crash::s")
        await engine.start_instance(Forked, id="fork::s")
        await engine.start_instance(Parks, id="park::s")  # hibernates: held by nobody
        await trio.sleep(1)
        stats = engine.statistics()
        assert stats.runs == 3  # nap, crash (in its backoff), fork (a step still running)
        assert stats.running == 3
        assert stats.backing_off == 1
        assert stats.parked == 0
        # nap and crash run inline; fork runs both branches, `both` in a task of its own.
        assert stats.steps == 3
        assert stats.tasks == 3 + 1
        assert stats.leases == 3
        assert stats.queued_wakeups == 0
        assert stats.refused == 0
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            stats.runs = 7  # type: ignore[misc]

        # An early resume: recorded before its step parks; the loop, busy running
        # `nap` inline, has its doorbell waiting in the mailbox.
        staged = await engine.start_instance(Staged, id="staged::s")
        await trio.sleep(1)
        await engine.resume(staged, "received")
        assert engine.statistics().queued_wakeups == 1
        assert (await engine.wait(staged)).status is Status.COMPLETED
        await engine.resume("fork::s", "received")
        await engine.wait("fork::s")
        await engine.wait("nap::s")
        await engine.wait("crash::s")
        after = engine.statistics()
        assert (after.runs, after.running, after.steps, after.tasks, after.leases) == (0,) * 5


async def test_retention_and_purge_values_are_checked(autojump_clock: Any) -> None:
    with pytest.raises(InvalidValue, match="retention must be a positive timedelta"):
        async with open_engine(retention=timedelta(0)):
            pass
    with pytest.raises(InvalidValue, match="retention must be a positive timedelta"):
        async with open_engine(retention=3600):  # type: ignore[arg-type]
            pass
    async with open_engine() as engine:
        with pytest.raises(InvalidValue, match="older_than must be an age >= 0"):
            await engine.purge(timedelta(days=-1))
        with pytest.raises(InvalidValue, match="timezone-aware"):
            await engine.purge(datetime(2030, 1, 1))
        with pytest.raises(InvalidValue, match="got int 7"):
            await engine.purge(7)  # type: ignore[arg-type]
        assert await engine.purge(timedelta(days=1)) == 0
