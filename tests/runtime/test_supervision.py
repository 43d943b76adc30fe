"""Supervision: transient restarts after a crash of the instance task, within a budget.

A crash of an instance (not of a step) is an exception raised while the run
persists a transition (SPEC clarification): here a storage wrapper makes
``put`` raise for one run. Steps are counted per run so the tests can tell
which steps ran again after a restart.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    Event,
    Fail,
    Instance,
    MemoryStorage,
    RestartPolicy,
    RetryPolicy,
    Status,
    Step,
    Unique,
    Workflow,
    open_engine,
)

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(instance id, step key) -> executions started."""


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


class StorageCrash(OSError):
    """What the flaky storage raises: the disk refused a write."""


class FlakyStorage:
    """A ``MemoryStorage`` whose ``put`` raises for chosen runs.

    ``crash(id, when=..., times=n)`` makes the next ``n`` puts of a state of run
    ``id`` that satisfies ``when`` raise ``StorageCrash`` (``times=None``: every
    one). Everything else is delegated untouched.
    """

    durable = False

    def __init__(self) -> None:
        self.inner = MemoryStorage()
        self._rules: list[list[Any]] = []
        self.crashes = 0

    def crash(self, id: str, *, when: Callable[[Instance], bool], times: int | None = None) -> None:
        self._rules.append([id, when, times])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def __aenter__(self) -> FlakyStorage:
        await self.inner.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.inner.close()

    async def put(self, instance: Instance, *, consume: Sequence[int] = ()) -> None:
        for rule in self._rules:
            id, when, times = rule
            if instance.id == id and (times is None or times > 0) and when(instance):
                if times is not None:
                    rule[2] = times - 1
                self.crashes += 1
                await trio.lowlevel.checkpoint()
                raise StorageCrash(f"disk on fire while writing {instance.id}")
        await self.inner.put(instance, consume=consume)


def completed(step_key: str) -> Callable[[Instance], bool]:
    """Matches a live state in which ``step_key`` has just been recorded as completed."""
    return lambda inst: inst.status.is_live and step_key in inst.completed_steps


class First(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "first"] += 1
        return "ok"


class Second(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "second"] += 1
        await trio.sleep(1)
        return "ok"


class Third(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "third"] += 1
        return "ok"


class Chain(Workflow, unique=Unique(key="chain")):
    start_at = First
    transitions = {
        (First, "ok"): Second,
        (Second, "ok"): Third,
        (Third, "ok"): Done,
    }


class Sluggish(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "sluggish"] += 1
        await trio.sleep(context.initial.get("sleep", 1))
        return "ok"


class Slow(Workflow, unique=Unique(key="slow")):
    start_at = Sluggish
    transitions = {(Sluggish, "ok"): Done}


class Refuse(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Any:
        CALLS[instance.id, "refuse"] += 1
        return Fail("card declined")


class Refusing(Workflow, unique=Unique(key="refusing")):
    start_at = Refuse
    transitions = {(Refuse, "ok"): Done}


class Explode(Step):
    events = ("ok",)
    retry = RetryPolicy(max_attempts=3, backoff="constant", base=0.5)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "explode"] += 1
        raise ValueError("step bug")


class Exploding(Workflow, unique=Unique(key="exploding")):
    start_at = Explode
    transitions = {(Explode, "ok"): Done}


class Hang(Step):
    events = ("ok",)
    timeout = 2.0
    retry = RetryPolicy(max_attempts=2, backoff="constant", base=1.0)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        CALLS[instance.id, "hang"] += 1
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class Hanging(Workflow, unique=Unique(key="hanging")):
    start_at = Hang
    transitions = {(Hang, "ok"): Done}


def recorder(names: Sequence[str]) -> tuple[list[Event], Callable[[Event], None]]:
    seen: list[Event] = []

    def handler(event: Event) -> None:
        if event.name in names:
            seen.append(event)

    return seen, handler


async def test_storage_crash_restarts_and_completed_steps_do_not_rerun(autojump_clock: Any):
    storage = FlakyStorage()
    storage.crash("chain::a", when=completed("second"), times=2)
    restarts, handler = recorder(["instance.restart"])
    policy = RestartPolicy(max_restarts=3, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy, handlers=[handler]) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::a")
        final = await engine.wait(iid)
        assert trio.current_time() == 3.0  # Second (1 s each) ran three times

    assert final.status is Status.COMPLETED
    assert final.error is None
    assert storage.crashes == 2
    # The step whose completion was lost runs again (at-least-once); the
    # others ran once: the restart continued from the last persisted state.
    assert CALLS == {("chain::a", "first"): 1, ("chain::a", "second"): 3, ("chain::a", "third"): 1}
    assert [e.step for e in final.execution_history] == ["first", "second", "third", "done"]
    assert [e.measurements["restarts"] for e in restarts] == [1.0, 2.0]
    assert {e.metadata["instance_id"] for e in restarts} == {"chain::a"}
    assert all("disk on fire" in e.metadata["error"] for e in restarts)


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
async def test_always_crashing_instance_runs_max_restarts_plus_one_times(
    autojump_clock: Any, max_restarts: int
):
    storage = FlakyStorage()
    storage.crash("chain::poison", when=completed("first"))  # every time
    restarts, handler = recorder(["instance.restart", "workflow.exception", "workflow.stop"])
    policy = RestartPolicy(max_restarts=max_restarts, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy, handlers=[handler]) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::poison")
        final = await engine.wait(iid)
        assert engine.live_tasks == 0

    assert CALLS[iid, "first"] == max_restarts + 1
    assert CALLS[iid, "second"] == 0
    assert storage.crashes == max_restarts + 1
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert "disk on fire" in str(final.error)
    assert final.error.exception_type == "StorageCrash"
    names = [e.name for e in restarts]
    assert names == ["instance.restart"] * max_restarts + ["workflow.exception", "workflow.stop"]
    # The failure is persisted: the last stored state is the failed one.
    stored = await storage.inner.get(final.run_id)
    assert stored == final


async def test_restart_intensity_is_a_sliding_window(autojump_clock: Any):
    """Crashes spaced wider than ``within`` never exhaust the budget."""
    storage = FlakyStorage()
    # Each incarnation runs Sluggish for 3 s and then fails to persist it:
    # restarts at t = 3, 6, 9, 12, 15 -- never more than two within 5 s.
    storage.crash("slow::spaced", when=completed("sluggish"), times=5)
    policy = RestartPolicy(max_restarts=3, within=5.0)
    async with open_engine(storage, [Slow], restart_policy=policy) as engine:
        iid = await engine.start_instance(Slow, {"sleep": 3}, id="slow::spaced")
        final = await engine.wait(iid)
        assert trio.current_time() == 18.0
    assert final.status is Status.COMPLETED
    assert CALLS[iid, "sluggish"] == 6


async def test_restart_intensity_counts_restarts_inside_the_window(autojump_clock: Any):
    storage = FlakyStorage()
    storage.crash("slow::dense", when=completed("sluggish"), times=5)
    policy = RestartPolicy(max_restarts=3, within=100.0)
    async with open_engine(storage, [Slow], restart_policy=policy) as engine:
        iid = await engine.start_instance(Slow, {"sleep": 3}, id="slow::dense")
        final = await engine.wait(iid)
        # Gave up at the fourth crash (t = 12), not after all five.
        assert trio.current_time() == 12.0
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert CALLS[iid, "sluggish"] == 4


async def test_poison_instance_does_not_affect_healthy_ones(autojump_clock: Any):
    storage = FlakyStorage()
    storage.crash("slow::poison", when=completed("sluggish"))
    restarts, handler = recorder(["instance.restart"])
    policy = RestartPolicy(max_restarts=3, within=5.0)
    healthy = [f"slow::h{n}" for n in range(100)]
    async with open_engine(storage, [Slow], restart_policy=policy, handlers=[handler]) as engine:
        async with trio.open_nursery() as nursery:
            # The poison crashes every second (t = 1, 2, 3, 4) while the
            # healthy runs are all in flight (they finish at t = 5).
            nursery.start_soon(lambda: engine.start_instance(Slow, {"sleep": 1}, id="slow::poison"))
            for iid in healthy:
                nursery.start_soon(lambda i=iid: engine.start_instance(Slow, {"sleep": 5}, id=i))
        poison = await engine.wait("slow::poison")
        assert trio.current_time() == 4.0
        finals = [await engine.wait(iid) for iid in healthy]
        assert trio.current_time() == 5.0

    assert poison.status is Status.FAILED
    assert poison.error is not None
    assert poison.error.kind == "restart_limit"
    assert CALLS["slow::poison", "sluggish"] == 4
    assert [f.status for f in finals] == [Status.COMPLETED] * 100
    assert all(CALLS[iid, "sluggish"] == 1 for iid in healthy)
    assert [e.metadata["instance_id"] for e in restarts] == ["slow::poison"] * 3


@pytest.mark.parametrize(
    ("workflow", "iid", "kind", "executions"),
    [
        (Refusing, "refusing::a", "failure", 1),
        (Exploding, "exploding::a", "crash", 3),
        (Hanging, "hanging::a", "timeout", 2),
    ],
)
async def test_step_failures_never_restart_the_instance(
    autojump_clock: Any, workflow: type[Workflow], iid: str, kind: str, executions: int
):
    restarts, handler = recorder(["instance.restart"])
    async with open_engine(workflows=[workflow], handlers=[handler]) as engine:
        await engine.start_instance(workflow, {}, id=iid)
        final = await engine.wait(iid)
        await trio.sleep(60)  # nothing comes back to life
        assert await engine.get(iid) == final
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == kind
    assert sum(CALLS.values()) == executions
    assert restarts == []


async def test_the_final_failure_is_written_once_the_storage_recovers(autojump_clock: Any):
    """When the storage refuses even the write that fails the run, that write is
    retried with backoff instead of leaving a live run with no task."""
    storage = FlakyStorage()
    broken = True
    # Every write of this run after the one that creates it.
    storage.crash("chain::stuck", when=lambda inst: broken and inst.status is not Status.PENDING)
    policy = RestartPolicy(max_restarts=1, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::stuck")
        await trio.sleep(60)
        (stuck,) = await storage.inner.query(id=iid)
        assert stuck.status is Status.PENDING  # nothing after the start could be written
        assert engine.live_tasks == 1  # still trying, not abandoned
        broken = False
        final = await engine.wait(iid)
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert CALLS[iid, "first"] == 0  # never got past advancing the pending run
