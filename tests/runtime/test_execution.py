"""Running workflows end to end: shapes, concurrency, parking, resumes and their errors.

Everything here runs under virtual time (``autojump_clock``) except the
test of a plain ``def execute``, which needs a real worker thread.
``trio.testing.wait_all_tasks_blocked`` takes priority over the autojump
clock, so ``settle()`` lets every run reach its next resting point without
moving virtual time.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Backpressure,
    Complete,
    Done,
    Instance,
    InstanceNotFound,
    InvalidResume,
    MemoryStorage,
    Status,
    Step,
    Suspend,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
    route,
)

# Per-run observations made by the steps, keyed by instance id.
SEEN: dict[str, list[Any]] = defaultdict(list)


async def settle() -> None:
    """Let every task run until all are blocked, without advancing virtual time."""
    await trio.testing.wait_all_tasks_blocked()


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.execution_history]


# -- linear ---------------------------------------------------------------------


class First(Step):
    events = ("next",)

    async def execute(self, instance, config, context):
        return Complete("next", updates={"first": 1}, metadata={"origin": "first", "shared": "a"})


class Second(Step):
    events = ("next",)

    async def execute(self, instance, config, context):
        return Complete(
            "next", updates={"seen": dict(context.steps["first"])}, metadata={"shared": "b"}
        )


class Third(Step):
    events = ("next",)

    async def execute(self, instance, config, context):
        return "next"


class Linear(Workflow, unique=Unique(key="linear")):
    start_at = First
    transitions = {
        (First, "next"): Second,
        (Second, "next"): Third,
        (Third, "next"): Done,
    }


async def test_linear_runs_to_completion(autojump_clock):
    async with open_engine(workflows=[Linear]) as engine:
        iid = await engine.start_instance(Linear, {"n": 1}, id="linear::one")
        assert iid == "linear::one"
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert final.error is None
    assert final.completed_steps == {"first", "second", "third", "done"}
    assert final.active_steps == frozenset()
    assert final.waiting_steps == frozenset()
    assert history(final) == [
        ("first", "next"),
        ("second", "next"),
        ("third", "next"),
        ("done", "done"),
    ]
    assert [e.attempt for e in final.execution_history] == [1, 1, 1, 1]
    stamps = [e.timestamp for e in final.execution_history]
    assert stamps == sorted(stamps)
    # Each step sees the updates of the steps before it; steps without
    # updates leave no entry.
    assert final.context.initial == {"n": 1}
    assert final.context.steps == {"first": {"first": 1}, "second": {"seen": {"first": 1}}}
    assert [e.context_updates for e in final.execution_history] == [
        {"first": 1},
        {"seen": {"first": 1}},
        None,
        None,
    ]
    # Complete(metadata=) merges into runtime_metadata, later keys winning.
    assert final.runtime_metadata == {"origin": "first", "shared": "b"}


# -- exclusive branches -----------------------------------------------------------


class Check(Step):
    events = ("yes", "no")

    async def execute(self, instance, config, context):
        return "yes" if context.initial["ok"] else "no"


class OnYes(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"branch": "yes"})


class OnNo(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"branch": "no"})


class Branching(Workflow, unique=Unique(key="branching")):
    start_at = Check
    transitions = {
        (Check, "yes"): OnYes,
        (Check, "no"): OnNo,
        (OnYes, "done"): Done,
        (OnNo, "done"): Done,
    }


@pytest.mark.parametrize(
    ("ok", "taken", "skipped", "event"),
    [(True, "on_yes", "on_no", "yes"), (False, "on_no", "on_yes", "no")],
)
async def test_branch_takes_one_side(autojump_clock, ok, taken, skipped, event):
    async with open_engine(workflows=[Branching]) as engine:
        iid = await engine.start_instance(Branching, {"ok": ok}, id=f"branching::{event}")
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert final.completed_steps == {"check", taken, "done"}
    assert skipped not in final.completed_steps
    assert history(final) == [("check", event), (taken, "done"), ("done", "done")]
    assert final.context.steps == {taken: {"branch": event}}


class Merge(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"after": sorted(context.steps)})


class JoinAfterBranch(Workflow, unique=Unique(key="joinafter")):
    start_at = Check
    transitions = {
        (Check, "yes"): OnYes,
        (Check, "no"): OnNo,
        (OnYes, "done"): Merge,
        (OnNo, "done"): Merge,
        (Merge, "done"): Done,
    }


@pytest.mark.parametrize(("ok", "taken"), [(True, "on_yes"), (False, "on_no")])
async def test_join_after_exclusive_branches(autojump_clock, ok, taken):
    """The branch not taken does not block the join (dead-path elimination)."""
    async with open_engine(workflows=[JoinAfterBranch]) as engine:
        iid = await engine.start_instance(JoinAfterBranch, {"ok": ok}, id=f"joinafter::{taken}")
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert final.completed_steps == {"check", taken, "merge", "done"}
    assert [step for step, _ in history(final)] == ["check", taken, "merge", "done"]
    assert final.context.steps["merge"] == {"after": [taken]}


# -- fan-out / fan-in ---------------------------------------------------------------


class Split(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        return "go"


class Left(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        started = trio.current_time()
        await trio.sleep(10)
        return Complete("done", updates={"started": started, "ended": trio.current_time()})


class Right(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        started = trio.current_time()
        await trio.sleep(10)
        return Complete("done", updates={"started": started, "ended": trio.current_time()})


class Join(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"saw": sorted(context.steps)})


class FanOut(Workflow, unique=Unique(key="fanout")):
    start_at = Split
    transitions = {
        (Split, "go"): [Left, Right],
        (Left, "done"): Join,
        (Right, "done"): Join,
        (Join, "done"): Done,
    }


async def test_fan_out_runs_branches_concurrently_and_joins(autojump_clock):
    async with open_engine(workflows=[FanOut]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(FanOut, {}, id="fanout::one")
        await trio.sleep(5)
        mid = await engine.get(iid)
        assert mid.status is Status.RUNNING
        assert mid.active_steps == {"left", "right"}
        assert mid.waiting_steps == frozenset()
        final = await engine.wait(iid)
        # Two 10 s steps side by side: done at t0 + 10, not t0 + 20.
        assert trio.current_time() - t0 == 10

    assert final.status is Status.COMPLETED
    assert final.completed_steps == {"split", "left", "right", "join", "done"}
    steps = [step for step, _ in history(final)]
    assert steps[0] == "split"
    assert sorted(steps[1:3]) == ["left", "right"]
    assert steps[3:] == ["join", "done"]
    for branch in ("left", "right"):
        assert final.context.steps[branch] == {"started": t0, "ended": t0 + 10}
    # The join ran once, after both branches.
    assert final.context.steps["join"] == {"saw": ["left", "right"]}
    assert [e.step for e in final.execution_history].count("join") == 1


class Pick(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        return "go"


class Quick(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return "done"


class Slowpoke(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        await trio.sleep(5)
        return "done"


class DynamicFanOut(Workflow, unique=Unique(key="dynfan")):
    start_at = Pick
    transitions = {(Quick, "done"): Done, (Slowpoke, "done"): Done}

    @route(Pick, "go", targets=[Quick, Slowpoke])
    def both(context):
        return [Quick, Slowpoke]


async def test_done_only_after_every_branch(autojump_clock):
    """Done joins every live branch: the run completes only when nothing is active."""
    async with open_engine(workflows=[DynamicFanOut]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(DynamicFanOut, {}, id="dynfan::one")
        await trio.sleep(1)
        mid = await engine.get(iid)
        assert mid.status is Status.RUNNING
        assert "quick" in mid.completed_steps
        assert mid.active_steps == {"slowpoke"}
        assert "done" not in mid.completed_steps
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 5

    assert final.status is Status.COMPLETED
    assert final.active_steps == frozenset()
    assert [s for s, _ in history(final)][-2:] == ["slowpoke", "done"]
    assert [s for s, _ in history(final)].count("done") == 1


# -- parking and resuming -------------------------------------------------------------


class Begin(Step):
    events = ("next",)

    async def execute(self, instance, config, context):
        return "next"


class AwaitSignal(Workflow, unique=Unique(key="signal")):
    start_at = Begin
    transitions = {
        (Begin, "next"): WaitForEvent,
        (WaitForEvent, "received"): Done,
    }


async def test_park_hibernates_and_resume_wakes(autojump_clock):
    async with open_engine(workflows=[AwaitSignal]) as engine:
        iid = await engine.start_instance(AwaitSignal, {}, id="signal::one")
        await settle()
        parked = await engine.get(iid)
        assert parked.status is Status.WAITING
        assert parked.active_steps == parked.waiting_steps == {"wait_for_event"}
        assert parked.timers == ()
        assert engine.live_tasks == 0

        # A long quiet period changes nothing.
        await trio.sleep(3600)
        assert (await engine.get(iid)) == parked
        assert engine.live_tasks == 0

        # The resume is a recorded row, not a call into a task: the claim loop
        # hears of it and gives the run a task again, at once (no virtual time).
        resumed_at = trio.current_time()
        await engine.resume(iid, "received")
        final = await engine.wait(iid)
        assert trio.current_time() == resumed_at
        assert engine.live_tasks == 0

    assert final.status is Status.COMPLETED
    assert history(final) == [("begin", "next"), ("wait_for_event", "received"), ("done", "done")]


async def test_resume_with_step_keyword(autojump_clock):
    async with open_engine(workflows=[AwaitSignal]) as engine:
        iid = await engine.start_instance(AwaitSignal, {}, id="signal::stepkw")
        await settle()
        with pytest.raises(InvalidResume, match="has no step"):
            await engine.resume(iid, "received", step="nope")
        # Steps are judged by whether they can still run, not only by being parked.
        with pytest.raises(InvalidResume, match="cannot still run"):
            await engine.resume(iid, "received", step="begin")
        await engine.resume(iid, "received", step="wait_for_event")
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED


class Sleeper(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        await trio.sleep(100)
        return "done"


class Sleepy(Workflow, unique=Unique(key="sleepy")):
    start_at = Sleeper
    transitions = {(Sleeper, "done"): Done}


async def test_resume_unknown_instance(autojump_clock):
    async with open_engine(workflows=[AwaitSignal]) as engine:
        with pytest.raises(InstanceNotFound):
            await engine.resume("signal::missing", "received")


async def test_resume_terminal_instance(autojump_clock):
    async with open_engine(workflows=[Linear]) as engine:
        iid = await engine.start_instance(Linear, {}, id="linear::terminal")
        final = await engine.wait(iid)
        assert final.status is Status.COMPLETED
        with pytest.raises(InvalidResume, match="completed") as info:
            await engine.resume(iid, "next")
        assert info.value.instance_id == iid
        assert info.value.event == "next"
        assert (await engine.get(iid)) == final


async def test_resume_running_instance_with_nothing_parked(autojump_clock):
    """Rewritten for the stored-resume design: a resume for a step that can still
    run but has not parked is *recorded* (an early resume), not refused. It applies
    only if the step parks; this one completes on its own, so the early resume is
    dropped and never completes the step early. Refusals remain for an ambiguous
    event and for an event no step that can still run declares."""
    async with open_engine(workflows=[Sleepy]) as engine:
        iid = await engine.start_instance(Sleepy, {}, id="sleepy::one")
        await trio.sleep(1)
        # Both the running sleeper and the not-yet-active done step accept "done".
        with pytest.raises(InvalidResume, match="ambiguous"):
            await engine.resume(iid, "done")
        with pytest.raises(InvalidResume, match="no step that can still run declares"):
            await engine.resume(iid, "bogus")
        await engine.resume(iid, "done", step="sleeper")  # accepted early
        wakeups = await engine.storage.wakeups((await engine.get(iid)).run_id)
        assert [(w.kind.value, w.step) for w in wakeups] == [("resume", "sleeper")]
        final = await engine.wait(iid)
        # The step finished by itself; its early resume could no longer apply.
        assert await engine.storage.wakeups(final.run_id) == []
    assert final.status is Status.COMPLETED
    assert history(final) == [("sleeper", "done"), ("done", "done")]
    assert all(e.wakeup is None for e in final.execution_history)
    assert trio.current_time() >= 100


async def test_resume_with_event_no_parked_step_declares(autojump_clock):
    async with open_engine(workflows=[AwaitSignal]) as engine:
        iid = await engine.start_instance(AwaitSignal, {}, id="signal::undeclared")
        await settle()
        before = await engine.get(iid)
        with pytest.raises(InvalidResume, match="no step that can still run declares 'bogus'"):
            await engine.resume(iid, "bogus")
        await settle()
        after = await engine.get(iid)
        assert after == before
        assert after.status is Status.WAITING
        await engine.resume(iid, "received")
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED


# -- several parked steps at once ------------------------------------------------------


class ParkA(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        SEEN[instance.id].append(("park_a", trio.current_time()))
        return Suspend()


class ParkB(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        SEEN[instance.id].append(("park_b", trio.current_time()))
        return Suspend()


class Meet(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return "done"


class TwoParks(Workflow, unique=Unique(key="twoparks")):
    start_at = Split
    transitions = {
        (Split, "go"): [ParkA, ParkB],
        (ParkA, "go"): Meet,
        (ParkB, "go"): Meet,
        (Meet, "done"): Done,
    }


@pytest.mark.parametrize("order", [("park_a", "park_b"), ("park_b", "park_a")])
async def test_two_parked_steps_resumed_in_either_order(autojump_clock, order):
    iid_value = "".join(s[-1] for s in order)
    async with open_engine(workflows=[TwoParks]) as engine:
        iid = await engine.start_instance(TwoParks, {}, id=f"twoparks::{iid_value}")
        await settle()
        parked = await engine.get(iid)
        assert parked.status is Status.WAITING
        assert parked.waiting_steps == parked.active_steps == {"park_a", "park_b"}
        assert engine.live_tasks == 0

        await engine.resume(iid, "go", step=order[0])
        await settle()
        half = await engine.get(iid)
        # One branch resumed; the join still waits for the other.
        assert half.status is Status.WAITING
        assert half.waiting_steps == half.active_steps == {order[1]}
        assert order[0] in half.completed_steps
        assert "meet" not in half.completed_steps

        await engine.resume(iid, "go", step=order[1])
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert history(final) == [
        ("split", "go"),
        (order[0], "go"),
        (order[1], "go"),
        ("meet", "done"),
        ("done", "done"),
    ]


async def test_ambiguous_resume_needs_step(autojump_clock):
    async with open_engine(workflows=[TwoParks]) as engine:
        iid = await engine.start_instance(TwoParks, {}, id="twoparks::ambiguous")
        await settle()
        before = await engine.get(iid)
        with pytest.raises(InvalidResume, match="ambiguous") as info:
            await engine.resume(iid, "go")
        assert "step=" in info.value.reason
        await settle()
        assert (await engine.get(iid)) == before

        await engine.resume(iid, "go", step="park_b")
        await settle()
        after = await engine.get(iid)
        assert after.waiting_steps == {"park_a"}
        assert "park_b" in after.completed_steps
        # With a single parked step left, the event is no longer ambiguous.
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED


class Worker(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        SEEN[instance.id].append(("worker", trio.current_time()))
        await trio.sleep(5)
        return "done"


class Worker2(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        SEEN[instance.id].append(("worker2", trio.current_time()))
        await trio.sleep(5)
        return "done"


class ParkedBranch(Workflow, unique=Unique(key="parkedbranch")):
    start_at = Split
    transitions = {
        (Split, "go"): [ParkA, Worker],
        (Worker, "done"): Worker2,
        (Worker2, "done"): ParkB,
        (ParkA, "go"): Meet,
        (ParkB, "go"): Meet,
        (Meet, "done"): Done,
    }


async def test_parked_branch_does_not_stall_its_sibling(autojump_clock):
    async with open_engine(workflows=[ParkedBranch]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(ParkedBranch, {}, id="parkedbranch::one")

        await trio.sleep(1)
        early = await engine.get(iid)
        # park_a is parked, but the run is not WAITING: worker still runs.
        assert early.status is Status.RUNNING
        assert early.waiting_steps == {"park_a"}
        assert early.active_steps == {"park_a", "worker"}

        await trio.sleep(5)
        middle = await engine.get(iid)
        assert middle.status is Status.RUNNING
        assert middle.waiting_steps == {"park_a"}
        assert middle.active_steps == {"park_a", "worker2"}
        assert "worker" in middle.completed_steps

        await trio.sleep(5)
        both = await engine.get(iid)
        # Every active step parked: now (and only now) the run is WAITING.
        assert both.status is Status.WAITING
        assert both.waiting_steps == both.active_steps == {"park_a", "park_b"}
        assert engine.live_tasks == 0

        await engine.resume(iid, "go", step="park_b")
        await engine.resume(iid, "go", step="park_a")
        final = await engine.wait(iid)

    # Steps started at the same moment run in no particular order.
    assert sorted(SEEN[iid], key=lambda seen: (seen[1], seen[0])) == [
        ("park_a", t0),
        ("worker", t0),
        ("worker2", t0 + 5),
        ("park_b", t0 + 10),
    ]
    assert final.status is Status.COMPLETED
    assert [s for s, _ in history(final)] == [
        "split",
        "worker",
        "worker2",
        "park_b",
        "park_a",
        "meet",
        "done",
    ]


# -- resumes racing a busy run: pending resumes and backpressure -----------------------


class GatedStorage(MemoryStorage):
    """A MemoryStorage whose ``write`` can be held at a gate the test controls.

    While the gate is closed, the run's loop is stuck in the middle of a
    transition (its write has not returned), so accepted resumes stay pending.
    """

    def __init__(self) -> None:
        super().__init__()
        self.gate: trio.Event | None = None
        self.blocked = trio.Event()

    def close_gate(self) -> None:
        self.gate = trio.Event()
        self.blocked = trio.Event()

    def open_gate(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def write(self, lease, instance, **kwargs):
        gate = self.gate
        if gate is not None:
            self.blocked.set()
            await gate.wait()
        return await super().write(lease, instance, **kwargs)

    async def pending_resumes(self, id: str) -> list[str]:
        """Steps with an unapplied resume row for the live run of ``id``, in order."""
        [run] = [i for i in await self.query(id=id) if i.status.is_live] or [None]
        if run is None:
            return []
        return [w.step for w in await self.wakeups(run.run_id) if w.kind.value == "resume"]


async def test_second_resume_for_a_pending_step_is_refused(autojump_clock):
    storage = GatedStorage()
    async with open_engine(storage=storage, workflows=[TwoParks]) as engine:
        iid = await engine.start_instance(TwoParks, {}, id="twoparks::twice")
        await settle()
        assert (await engine.get(iid)).status is Status.WAITING

        storage.close_gate()
        await engine.resume(iid, "go", step="park_a")
        await storage.blocked.wait()  # the run is now mid-transition
        with pytest.raises(InvalidResume, match="already has a pending resume"):
            await engine.resume(iid, "go", step="park_a")
        # A different step is still fine.
        await engine.resume(iid, "go", step="park_b")
        assert await storage.pending_resumes(iid) == ["park_a", "park_b"]

        storage.open_gate()
        final = await engine.wait(iid)
        assert await storage.wakeups(final.run_id) == []

    assert final.status is Status.COMPLETED
    assert [s for s, _ in history(final)].count("park_a") == 1


async def test_backpressure_when_inbox_is_full(autojump_clock):
    storage = GatedStorage()
    async with open_engine(storage=storage, workflows=[TwoParks], inbox_size=1) as engine:
        iid = await engine.start_instance(TwoParks, {}, id="twoparks::full")
        await settle()
        assert (await engine.get(iid)).status is Status.WAITING
        assert engine.live_tasks == 0

        storage.close_gate()
        await engine.resume(iid, "go", step="park_a")
        await storage.blocked.wait()  # the run is stuck writing park_a's completion
        with pytest.raises(Backpressure) as info:
            await engine.resume(iid, "go", step="park_b")
        assert info.value.instance_id == iid
        assert info.value.capacity == 1
        # Nothing was recorded for the refused resume.
        assert await storage.pending_resumes(iid) == ["park_a"]

        storage.open_gate()
        await settle()
        after = await engine.get(iid)
        assert after.status is Status.WAITING
        assert after.waiting_steps == after.active_steps == {"park_b"}
        assert "park_b" not in after.completed_steps

        # The refused resume is not applied later either.
        await trio.sleep(3600)
        assert (await engine.get(iid)) == after
        assert await storage.pending_resumes(iid) == []
        assert engine.live_tasks == 0

        # Once the inbox has room, the same resume is accepted.
        await engine.resume(iid, "go", step="park_b")
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert history(final) == [
        ("split", "go"),
        ("park_a", "go"),
        ("park_b", "go"),
        ("meet", "done"),
        ("done", "done"),
    ]


# -- events a step or a route did not declare ------------------------------------------


class Liar(Step):
    events = ("ok",)

    async def execute(self, instance, config, context):
        return "surprise"


class Lying(Workflow, unique=Unique(key="lying")):
    start_at = Liar
    transitions = {(Liar, "ok"): Done}


async def test_undeclared_event_fails_the_run(autojump_clock):
    async with open_engine(workflows=[Lying]) as engine:
        iid = await engine.start_instance(Lying, {}, id="lying::one")
        final = await engine.wait(iid)

    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "undeclared_event"
    assert final.error.step == "liar"
    assert "surprise" in str(final.error)
    assert final.completed_steps == frozenset()
    assert final.execution_history == ()
    assert final.active_steps == frozenset()


class Triage(Step):
    events = ("routed",)

    async def execute(self, instance, config, context):
        return "routed"


class FastTrack(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"lane": "fast"})


class Standard(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return Complete("done", updates={"lane": "standard"})


class Routing(Workflow, unique=Unique(key="routing")):
    start_at = Triage
    transitions = {(FastTrack, "done"): Done, (Standard, "done"): Done}

    @route(Triage, "routed", targets=[FastTrack, Standard])
    def triage(context):
        return FastTrack if context.initial["priority"] == "high" else Standard


@pytest.mark.parametrize(
    ("priority", "lane", "skipped"),
    [("high", "fast_track", "standard"), ("low", "standard", "fast_track")],
)
async def test_dynamic_route_picks_target_at_run_time(autojump_clock, priority, lane, skipped):
    async with open_engine(workflows=[Routing]) as engine:
        iid = await engine.start_instance(Routing, {"priority": priority}, id=f"routing::{lane}")
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert history(final) == [("triage", "routed"), (lane, "done"), ("done", "done")]
    assert skipped not in final.completed_steps


class BadRouting(Workflow, unique=Unique(key="badrouting")):
    start_at = Triage
    transitions = {(FastTrack, "done"): Done}

    @route(Triage, "routed", targets=[FastTrack])
    def misroute(context):
        return Standard


async def test_route_returning_undeclared_target_fails_the_run(autojump_clock):
    async with open_engine(workflows=[BadRouting]) as engine:
        iid = await engine.start_instance(BadRouting, {}, id="badrouting::one")
        final = await engine.wait(iid)

    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.step == "triage"
    message = str(final.error)
    assert "misroute" in message
    assert "Standard" in message
    assert "not one of its declared targets" in message
    assert "FastTrack" in message
    assert "standard" not in final.completed_steps
    assert "fast_track" not in final.completed_steps
    assert final.active_steps == frozenset()


# -- a plain ``def execute`` runs in a worker thread (real time) -----------------------


class Blocking(Step):
    events = ("done",)

    def execute(self, instance, config, context):
        SEEN[instance.id].append(threading.current_thread())
        return Complete("done", updates={"sync": True})


class SyncFlow(Workflow, unique=Unique(key="syncflow")):
    start_at = Blocking
    transitions = {(Blocking, "done"): Done}


async def test_sync_execute_runs_in_a_worker_thread():
    async with open_engine(workflows=[SyncFlow]) as engine:
        iid = await engine.start_instance(SyncFlow, {}, id="syncflow::one")
        final = await engine.wait(iid, timeout=10)

    assert final.status is Status.COMPLETED
    assert final.context.steps == {"blocking": {"sync": True}}
    [thread] = SEEN[iid]
    assert thread is not threading.main_thread()
    assert thread is not threading.current_thread()
