"""A resume that claims a hibernated run is applied in that claim, on durable storage.

``Engine.resume`` passes a ``ResumeInClaim`` advancer: the storage writes the
resumed state with the claim, so the run's next step starts without a second
commit. What the run's first loop announces, and where the run ends, must be
exactly what it was when the driver applied the resume itself (memory still
does: there is no commit to save).
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest
import trio

from hephaestus_trio import (
    Context,
    Done,
    Event,
    Instance,
    SQLiteStorage,
    Status,
    Step,
    Storage,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
    route,
)
from hephaestus_trio.runtime._calls import ResumeInClaim
from hephaestus_trio.storage import ClaimedRun, Lease, Wakeup, WakeupKind

ROUTED_IN: list[threading.Thread] = []
"""The thread each call of ``Routed.pick`` ran in."""
GATE: dict[str, trio.Event] = {}
"""Business id -> the event its ``Hold`` step waits for (absent: it does not wait)."""


class Hold(Step):
    """The step after the resume; waits at its gate, when one is set."""

    events = ("held",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        gate = GATE.get(instance.id)
        if gate is not None:
            await gate.wait()
        await trio.lowlevel.checkpoint()
        return "held"


class Resumable(Workflow, unique=Unique(key="resumable"), name="tests.resume_in_claim.Resumable"):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Hold, (Hold, "held"): Done}


class Routed(Workflow, unique=Unique(key="routed"), name="tests.resume_in_claim.Routed"):
    start_at = WaitForEvent
    transitions = {(Hold, "held"): Done}

    @route(WaitForEvent, "received", targets=[Hold, Done])
    def pick(context: Context) -> Any:
        ROUTED_IN.append(threading.current_thread())
        return Hold


class Other(Workflow, unique=Unique(key="other"), name="tests.resume_in_claim.Other"):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


async def _hibernated(engine: Any, id: str, workflow: type[Workflow] = Resumable) -> str:
    """Start a run and return once it is parked with no task (the resume will claim it)."""
    iid: str = await engine.start_instance(workflow, {}, id=id)
    while (await engine.get(iid)).status is not Status.WAITING or engine.live_tasks:
        await trio.sleep(0.01)
    return iid


def _announced(events: list[Event]) -> list[tuple[Any, ...]]:
    """What an event says about the run, without times and ids."""
    keys = ("from_status", "to_status", "active_steps", "step", "event", "timer")
    return [(e.name, *(e.metadata.get(k) for k in keys), sorted(e.measurements)) for e in events]


async def _resume_and_finish(storage: Storage) -> tuple[list[Event], Instance, Instance]:
    events: list[Event] = []
    names = ["workflow.transition", "step.resume", "step.start", "workflow.stop"]
    async with open_engine(storage, workflows=[Resumable]) as engine:
        iid = await _hibernated(engine, "resumable::a")
        engine.subscribe(events.append, events=names)
        GATE[iid] = trio.Event()
        try:
            await engine.resume(iid, "received", payload={"paid": 1})
            while (await engine.get(iid)).running_steps != {"hold"}:
                await trio.sleep(0.01)
            between = await engine.get(iid)
            GATE[iid].set()
            final = await engine.wait(iid)
        finally:
            GATE.pop(iid, None)
    return events, between, final


async def test_the_run_is_resumed_and_announced_as_the_driver_would(
    storage: Storage, mock_clock: Any
) -> None:
    events, between, final = await _resume_and_finish(storage)
    assert final.status is Status.COMPLETED
    assert [(e.step, e.event) for e in final.completions] == [
        ("wait_for_event", "received"),
        ("hold", "held"),
        ("done", "done"),
    ]
    assert final.context.steps["wait_for_event"] == {"paid": 1}
    assert between.waiting_steps == frozenset()
    # Exactly what the driver announces when it applies the resume itself.
    assert _announced(events) == [
        ("workflow.transition", "waiting", "running", ["hold"], None, None, None, []),
        ("step.resume", None, None, None, "wait_for_event", "received", None, ["latency"]),
        ("step.start", None, None, None, "hold", None, None, ["attempt"]),
        ("workflow.transition", "running", "running", ["done"], None, None, None, []),
        ("step.start", None, None, None, "done", None, None, ["attempt"]),
        ("workflow.transition", "running", "completed", [], None, None, None, []),
        ("workflow.stop", None, None, None, None, None, None, ["duration"]),
    ]


async def test_on_sqlite_one_commit_takes_the_resume_to_the_next_step(
    tmp_path: Any, mock_clock: Any
) -> None:
    mock_clock.autojump_threshold = 0.05
    storage = SQLiteStorage(tmp_path / "claim.db")
    async with open_engine(storage, workflows=[Resumable]) as engine:
        iid = await _hibernated(engine, "resumable::b")
        GATE[iid] = trio.Event()
        try:
            commits = storage._commit_count
            await engine.resume(iid, "received")
            after_resume = storage._commit_count
            stored = await storage.get((await engine.get(iid)).run_id)
            assert stored is not None
            # Written with the claim: the step is complete, the resume consumed.
            assert [(e.step, e.event) for e in stored.completions] == [
                ("wait_for_event", "received")
            ]
            assert await storage.wakeups(stored.run_id) == []
            while (await engine.get(iid)).running_steps != {"hold"}:
                await trio.sleep(0.01)
            assert storage._commit_count == after_resume == commits + 1
            GATE[iid].set()
            assert (await engine.wait(iid)).status is Status.COMPLETED
        finally:
            GATE.pop(iid, None)


# -- the advancer on its own ---------------------------------------------------------------

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _parked_on(workflow: type[Workflow], id: str) -> Instance:
    """A run of ``workflow`` parked on its first step, as the engine writes it."""
    new = Instance.new(workflow, {}, id=id, run_id="run-z", now=T0)
    return attrs.evolve(
        new,
        status=Status.WAITING,
        active_steps=frozenset({"wait_for_event"}),
        waiting_steps=frozenset({"wait_for_event"}),
    )


def _parked_run() -> Instance:
    return _parked_on(Resumable, "resumable::z")


def _wakeup(seq: int, kind: WakeupKind, step: str | None, due: datetime) -> Wakeup:
    event = {WakeupKind.RESUME: "received", WakeupKind.TIMER: "timeout"}.get(kind)
    return Wakeup(
        seq=seq,
        run_id="run-z",
        kind=kind,
        step=step,
        event=event,
        payload=None,
        dedup_key=None,
        due_at=due,
        created_at=T0,
    )


def _claimed(inst: Instance, *wakeups: Wakeup) -> ClaimedRun:
    lease = Lease(run_id="run-z", owner="e", epoch=2, expires_at=T0 + timedelta(seconds=30))
    return ClaimedRun(lease=lease, instance=inst, wakeups=wakeups)


def test_the_advancer_applies_a_lone_resume_of_a_parked_step() -> None:
    resume = _wakeup(5, WakeupKind.RESUME, "wait_for_event", T0)
    later = _wakeup(3, WakeupKind.TIMER, "wait_for_event", T0 + timedelta(hours=1))
    advance = ResumeInClaim(T0, Resumable)
    moved = advance(_claimed(_parked_run(), later, resume), resume)
    assert moved is not None, "a timer not yet due does not stand in the way"
    assert moved.instance.active_steps == {"hold"}
    assert [(e.step, e.event, e.wakeup) for e in moved.instance.completions] == [
        ("wait_for_event", "received", 5)
    ]
    assert advance.before == _parked_run()
    assert advance.event == "received"


@pytest.mark.parametrize(
    "case",
    ["no workflow", "due timer", "cancel pending", "not parked", "running", "other definition"],
)
def test_the_advancer_declines_whenever_the_driver_could_do_otherwise(case: str) -> None:
    inst = _parked_run()
    resume = _wakeup(5, WakeupKind.RESUME, "wait_for_event", T0)
    others: list[Wakeup] = []
    workflow: Any = Resumable
    if case == "no workflow":
        workflow = None
    elif case == "due timer":
        others.append(_wakeup(3, WakeupKind.TIMER, "wait_for_event", T0))
    elif case == "cancel pending":
        others.append(_wakeup(4, WakeupKind.CANCEL, None, T0))
    elif case == "not parked":
        inst = attrs.evolve(inst, waiting_steps=frozenset(), status=Status.RUNNING)
    elif case == "running":
        inst = attrs.evolve(inst, status=Status.RUNNING)
    elif case == "other definition":
        inst = attrs.evolve(inst, definition_fingerprint="0" * 16)
    advance = ResumeInClaim(T0, workflow)
    assert advance(_claimed(inst, *others, resume), resume) is None
    assert advance.before is None


def test_the_advancer_declines_a_resume_that_would_end_the_run() -> None:
    inst = _parked_on(Other, "other::z")
    resume = _wakeup(5, WakeupKind.RESUME, "wait_for_event", T0)
    # The resume activates Done only: not terminal yet, so it is applied ...
    assert ResumeInClaim(T0, Other)(_claimed(inst, resume), resume) is not None
    # ... but an undeclared event fails the run: the driver writes that.
    wrong = attrs.evolve(resume, event="nope")
    assert ResumeInClaim(T0, Other)(_claimed(inst, wrong), wrong) is None


def test_the_advancer_leaves_a_route_to_the_driver() -> None:
    """A route is the application's code: it never runs inside the storage's transaction."""
    inst = _parked_on(Routed, "routed::z")
    resume = _wakeup(5, WakeupKind.RESUME, "wait_for_event", T0)
    assert ResumeInClaim(T0, Routed)(_claimed(inst, resume), resume) is None


async def test_a_routed_resume_is_applied_by_the_driver_on_sqlite(
    tmp_path: Any, mock_clock: Any
) -> None:
    mock_clock.autojump_threshold = 0.05
    storage = SQLiteStorage(tmp_path / "routed.db")
    ROUTED_IN.clear()
    async with open_engine(storage, workflows=[Routed]) as engine:
        iid = await _hibernated(engine, "routed::a", Routed)
        await engine.resume(iid, "received")
        final = await engine.wait(iid)
    assert [(e.step, e.event) for e in final.completions] == [
        ("wait_for_event", "received"),
        ("hold", "held"),
        ("done", "done"),
    ]
    # The route ran in the engine's own thread, never in the storage's worker.
    assert ROUTED_IN == [threading.main_thread()]


class GatedClaims(SQLiteStorage):
    """``add_wakeup_and_claim`` waits at a gate before it starts."""

    def __init__(self, path: Any) -> None:
        super().__init__(path)
        self.gate: trio.Event | None = None
        self.waiting = trio.Event()

    async def add_wakeup_and_claim(self, wakeup: Any, **kwargs: Any) -> Any:
        if self.gate is not None:
            self.waiting.set()
            await self.gate.wait()
        return await super().add_wakeup_and_claim(wakeup, **kwargs)


async def test_a_resume_applied_as_its_engine_closes_is_handed_back_due(
    tmp_path: Any, mock_clock: Any
) -> None:
    """The engine closed while its resume claimed the run: the run it hands back has
    its next step to run, so another engine claims it at once."""
    mock_clock.autojump_threshold = 0.05
    storage = GatedClaims(tmp_path / "closing.db")
    close_first = trio.Event()

    async def first_engine(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        async with open_engine(storage, workflows=[Resumable]) as engine:
            task_status.started(engine)
            await close_first.wait()

    async with open_engine(storage, workflows=[Resumable]) as other:
        iid = await _hibernated(other, "resumable::closing")
        async with trio.open_nursery() as nursery:
            first = await nursery.start(first_engine)
            storage.gate = trio.Event()
            nursery.start_soon(first.resume, iid, "received")
            await storage.waiting.wait()
            close_first.set()
            while not first._closed:
                await trio.sleep(0.01)
            storage.gate.set()
        with trio.fail_after(60):
            final = await other.wait(iid)
    assert final.status is Status.COMPLETED
    assert [(e.step, e.event) for e in final.completions][0] == ("wait_for_event", "received")
