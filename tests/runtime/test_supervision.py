"""Supervision: transient restarts after a crash of the run's loop, within a budget.

Changed on purpose with the storage-owned design: a *storage* failure is no
longer a crash. The run backs off (capped exponential, on Trio's clock) and
retries from its last persisted state for as long as the outage lasts,
without spending its restart budget and without writing a failure. The tests
of the old "storage crash" now check exactly that.

The restart policy remains for bugs in the engine's own loop. Here such a bug
is made by patching ``Incarnation._on_step_finished`` (or ``_reconcile``) to
raise ``LoopBug`` for one run: the intent of each supervision test (at most
``max_restarts + 1`` incarnations, a sliding window, a poison run that does
not affect the others, a final failure written exactly once) is unchanged.
Steps are counted per run so the tests can tell which steps ran again after
a restart.
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
    SQLiteStorage,
    Status,
    Step,
    Unique,
    Workflow,
    open_engine,
)
from hephaestus_trio.runtime._incarnation import Incarnation

CALLS: collections.Counter[tuple[str, str]] = collections.Counter()
"""(instance id, step key) -> executions started."""


@pytest.fixture(autouse=True)
def _reset_calls() -> Iterator[None]:
    CALLS.clear()
    yield
    CALLS.clear()


class StorageCrash(OSError):
    """What the flaky storage raises: the disk refused a write."""


class FlakyStorage(MemoryStorage):
    """A ``MemoryStorage`` whose ``write`` raises for chosen runs.

    ``crash(id, when=..., times=n)`` makes the next ``n`` writes of a state of
    run ``id`` that satisfies ``when`` raise ``StorageCrash`` (``times=None``:
    every one). ``written`` counts the writes that reached the storage, per
    (run id, status written).
    """

    def __init__(self) -> None:
        super().__init__()
        self._rules: list[list[Any]] = []
        self.crashes = 0
        self.written: collections.Counter[tuple[str, Status]] = collections.Counter()

    def crash(self, id: str, *, when: Callable[[Instance], bool], times: int | None = None) -> None:
        self._rules.append([id, when, times])

    async def write(self, lease: Any, instance: Instance, **kwargs: Any) -> Any:
        for rule in self._rules:
            id, when, times = rule
            if instance.id == id and (times is None or times > 0) and when(instance):
                if times is not None:
                    rule[2] = times - 1
                self.crashes += 1
                await trio.lowlevel.checkpoint()
                raise StorageCrash(f"disk on fire while writing {instance.id}")
        added = await super().write(lease, instance, **kwargs)
        self.written[instance.id, instance.status] += 1
        return added


class LoopBug(RuntimeError):
    """A bug in the engine's own loop (not in a step, not in the storage)."""


def loop_bug(
    monkeypatch: pytest.MonkeyPatch, id: str, *, after_step: str, times: int | None = None
) -> list[int]:
    """Make the loop of run ``id`` raise ``LoopBug`` when ``after_step`` finishes.

    ``times`` crashes (``None``: every time). Returns a one-item list counting them.
    """
    count = [0]
    original = Incarnation._on_step_finished

    async def buggy(self: Incarnation, message: Any) -> None:
        if (
            self.state.id == id
            and message.step == after_step
            and (times is None or count[0] < times)
        ):
            count[0] += 1
            await trio.lowlevel.checkpoint()
            raise LoopBug(f"loop bug while handling {message.step} of {id}")
        await original(self, message)

    monkeypatch.setattr(Incarnation, "_on_step_finished", buggy)
    return count


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


async def test_storage_fault_retries_without_spending_the_budget(autojump_clock: Any):
    """Rewritten: this used to be a storage *crash* that spent two restarts. A
    storage failure is now a fault: the run backs off (0.05 s, then 0.1 s) and
    continues from the last persisted state; even a zero restart budget is
    untouched, and the completed steps do not run again."""
    storage = FlakyStorage()
    storage.crash("chain::a", when=completed("second"), times=2)
    restarts, handler = recorder(["instance.restart", "workflow.exception"])
    policy = RestartPolicy(max_restarts=0, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy, handlers=[handler]) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::a")
        final = await engine.wait(iid)
        # Second (1 s each) ran three times, with the two backoffs between.
        assert trio.current_time() == pytest.approx(3.0 + 0.05 + 0.1)

    assert final.status is Status.COMPLETED
    assert final.error is None
    assert storage.crashes == 2
    # The step whose completion was lost runs again (at-least-once); the
    # others ran once: the retry continued from the last persisted state.
    assert CALLS == {("chain::a", "first"): 1, ("chain::a", "second"): 3, ("chain::a", "third"): 1}
    assert [e.step for e in final.execution_history] == ["first", "second", "third", "done"]
    assert restarts == []


class _Outage:
    """Every storage call the engine makes while a run writes fails inside ``[start, end)``
    (Trio time): writes, reads, claims, renewals, releases."""

    window = (0.0, 0.0)
    failures = 0

    def _down(self) -> bool:
        start, end = self.window
        return start <= trio.current_time() < end

    async def _maybe_fail(self) -> None:
        if self._down():
            self.failures += 1
            await trio.lowlevel.checkpoint()
            raise StorageCrash("the database is unreachable")


class MemoryOutage(_Outage, MemoryStorage):
    pass


class SQLiteOutage(_Outage, SQLiteStorage):
    pass


for _name in ("write", "get", "wakeups", "release", "renew", "claim", "owned_wakeups", "next_wake"):

    def _wrap(name: str) -> Any:
        async def failing(self: Any, *args: Any, **kwargs: Any) -> Any:
            await self._maybe_fail()
            return await getattr(super(_Outage, self), name)(*args, **kwargs)

        failing.__name__ = name
        return failing

    setattr(_Outage, _name, _wrap(_name))


@pytest.fixture(params=["memory", "sqlite"])
def outage_storage(request: Any, tmp_path: Any, mock_clock: Any) -> Any:
    """Each backend, with virtual time (SQLite's clock jumps after 50 ms of real idleness)."""
    if request.param == "memory":
        mock_clock.autojump_threshold = 0
        return MemoryOutage()
    mock_clock.autojump_threshold = 0.05
    return SQLiteOutage(tmp_path / "outage.db")


async def test_a_storage_outage_of_about_a_second_fails_no_run(
    outage_storage: Any, mock_clock: Any
) -> None:
    """24 healthy runs, the storage down for about a virtual second while they run
    and finish: every run completes, none failed, the restart budget (zero here)
    untouched. A storage outage of any length fails no run."""
    storage = outage_storage
    events, handler = recorder(["instance.restart", "workflow.exception"])
    policy = RestartPolicy(max_restarts=0, within=60.0)
    ids = [f"slow::outage{n}" for n in range(24)]
    async with open_engine(storage, [Slow], restart_policy=policy, handlers=[handler]) as engine:
        t0 = trio.current_time()
        storage.window = (t0 + 0.5, t0 + 1.5)
        for n, iid in enumerate(ids):
            await engine.start_instance(Slow, {"sleep": 0.25 * (n % 8)}, id=iid)
        await trio.sleep_until(t0 + 1.5)  # the outage is over
        finals = [await engine.wait(iid) for iid in ids]
        # Well within the lease TTL (30 s): the runs were retried, never given up.
        assert trio.current_time() - t0 < 30
    assert storage.failures > 0
    assert [f.status for f in finals] == [Status.COMPLETED] * 24
    assert all(f.error is None for f in finals)
    assert all([e.step for e in f.execution_history] == ["sluggish", "done"] for f in finals)
    assert events == []


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
async def test_always_crashing_instance_runs_max_restarts_plus_one_times(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch, max_restarts: int
):
    crashes = loop_bug(monkeypatch, "chain::poison", after_step="first")  # every time
    storage = FlakyStorage()
    restarts, handler = recorder(["instance.restart", "workflow.exception", "workflow.stop"])
    policy = RestartPolicy(max_restarts=max_restarts, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy, handlers=[handler]) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::poison")
        final = await engine.wait(iid)
        assert engine.live_tasks == 0
        # The failure is persisted: the last stored state is the failed one.
        assert await storage.get(final.run_id) == final

    assert CALLS[iid, "first"] == max_restarts + 1
    assert CALLS[iid, "second"] == 0
    assert crashes == [max_restarts + 1]
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert "loop bug" in str(final.error)
    assert final.error.exception_type == "LoopBug"
    names = [e.name for e in restarts]
    assert names == ["instance.restart"] * max_restarts + ["workflow.exception", "workflow.stop"]
    assert all("loop bug" in e.metadata["error"] for e in restarts[:max_restarts])
    assert storage.written[iid, Status.FAILED] == 1


async def test_restart_intensity_is_a_sliding_window(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
):
    """Crashes spaced wider than ``within`` never exhaust the budget."""
    # Each incarnation runs Sluggish for 3 s and then its loop crashes on the
    # result: restarts at t = 3, 6, 9, 12, 15 -- never more than two within 5 s.
    loop_bug(monkeypatch, "slow::spaced", after_step="sluggish", times=5)
    policy = RestartPolicy(max_restarts=3, within=5.0)
    async with open_engine(workflows=[Slow], restart_policy=policy) as engine:
        iid = await engine.start_instance(Slow, {"sleep": 3}, id="slow::spaced")
        final = await engine.wait(iid)
        assert trio.current_time() == 18.0
    assert final.status is Status.COMPLETED
    assert CALLS[iid, "sluggish"] == 6


async def test_restart_intensity_counts_restarts_inside_the_window(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
):
    loop_bug(monkeypatch, "slow::dense", after_step="sluggish", times=5)
    policy = RestartPolicy(max_restarts=3, within=100.0)
    async with open_engine(workflows=[Slow], restart_policy=policy) as engine:
        iid = await engine.start_instance(Slow, {"sleep": 3}, id="slow::dense")
        final = await engine.wait(iid)
        # Gave up at the fourth crash (t = 12), not after all five.
        assert trio.current_time() == 12.0
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert CALLS[iid, "sluggish"] == 4


async def test_poison_instance_does_not_affect_healthy_ones(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
):
    loop_bug(monkeypatch, "slow::poison", after_step="sluggish")
    restarts, handler = recorder(["instance.restart"])
    policy = RestartPolicy(max_restarts=3, within=5.0)
    healthy = [f"slow::h{n}" for n in range(100)]
    async with open_engine(workflows=[Slow], restart_policy=policy, handlers=[handler]) as engine:
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


async def test_the_final_failure_is_written_once_the_storage_recovers(
    autojump_clock: Any, monkeypatch: pytest.MonkeyPatch
):
    """When the storage refuses even the write that fails the run (past its restart
    budget), that write is retried with backoff instead of leaving a live run with
    no task, and lands exactly once when the storage is back."""
    original = Incarnation._reconcile

    def buggy(self: Incarnation) -> None:
        if self.state.id == "chain::stuck":
            raise LoopBug("loop bug before any step of chain::stuck")
        original(self)

    monkeypatch.setattr(Incarnation, "_reconcile", buggy)
    storage = FlakyStorage()
    broken = True
    storage.crash("chain::stuck", when=lambda inst: broken and inst.status is Status.FAILED)
    stops, handler = recorder(["workflow.stop"])
    policy = RestartPolicy(max_restarts=1, within=5.0)
    async with open_engine(storage, [Chain], restart_policy=policy, handlers=[handler]) as engine:
        iid = await engine.start_instance(Chain, {}, id="chain::stuck")
        await trio.sleep(60)
        (stuck,) = await storage.query(id=iid)
        # Advanced (the first write), then its loop crashed twice before any step ran.
        assert stuck.status is Status.RUNNING
        assert storage.crashes > 1  # the failure write was refused, and retried
        assert engine.live_tasks == 1  # still trying, not abandoned
        broken = False
        final = await engine.wait(iid)
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "restart_limit"
    assert CALLS[iid, "first"] == 0  # never got past advancing the pending run
    assert storage.written[iid, Status.FAILED] == 1
    assert [e.metadata["status"] for e in stops] == ["failed"]
