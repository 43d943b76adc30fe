"""Crash and resume semantics of the running engine, as a Hypothesis state machine.

Random valid workflows (``hephaestus_trio.testing``) run on a real engine in
a Trio thread (``_crash_machine.EngineHost``). Rules start runs, resume
parked steps (racing their timers), advance virtual time, arm
``schedule_resume`` timers, crash the whole process (at once, or just before
or after its *k*-th next write: create, fenced write, wakeup, release...)
and reopen an engine on the same storage, make one run's next writes fail
(transient storage faults: the runtime backs off and retries, without
spending the restart budget), cancel runs (also while they run), and open a
second engine on the same storage, optionally killing the first without
releasing its leases (the second takes its runs over once they expire).
Every rule ends settled, and the invariants read the persisted state back
from the storage, and check ownership: every accepted write was made under
the newest lease of its run (epochs never go back, one owner per epoch).

Steps are deterministic: each generated step does what the run's outcome
script (stored in its initial context) says, so at the end, once every run
has been driven to its end, a crash-free reference run on the pure engine
functions must end exactly where each run ended. The machine runs against
``MemoryStorage`` (one object reused across engine reopens: it keeps its
state) and ``SQLiteStorage`` (a new object on the same file for every engine
incarnation, as a new process would do).

The ``test_found_*`` tests at the end replay, step by step, the shortest
examples the machine found for runtime bugs that are now fixed.
"""

from __future__ import annotations

import collections
import functools
import shutil
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from _crash_machine import (
    AuditedStorage,
    CommandResult,
    CrashPoint,
    EngineHost,
    Snapshot,
    check_against_reference,
    check_history_follows_script,
    crash_workflow_specs,
    instrument,
    outcomes_of,
    replay,
    scripted_resume,
    timer_events,
)
from hephaestus_trio import (
    AlreadyRunning,
    Event,
    Instance,
    InstanceRestarted,
    InvalidResume,
    MemoryStorage,
    NotCancellable,
    RestartPolicy,
    SQLiteStorage,
    Status,
    Storage,
    Wait,
    WaitForEvent,
    Workflow,
)
from hephaestus_trio.storage import WakeupKind
from hephaestus_trio.testing import (
    EPOCH,
    NodeSpec,
    Outcome,
    OutcomeScript,
    TransitionSpec,
    WorkflowSpec,
    build_workflow,
    outcome_scripts,
)

RESTART_POLICY = RestartPolicy(max_restarts=2, within=5.0)
# A timer is "due" once virtual time is past its fire_at by more than this:
# fire_at is wall-clock UTC at microsecond resolution, Trio's clock a float.
SLACK = timedelta(milliseconds=1)
VALUES = ("a", "b", "c", "d")
# Checkpoints between the two halves of a racing rule (Trio's scheduler is seeded
# by Hypothesis, so each count is one reproducible interleaving).
YIELDS = st.integers(0, 6)
# Every start moves virtual time a little first: runs then differ in created_at,
# which orders recovery (run ids are random UUIDs and would order it randomly).
NUDGE = 0.01

_F = TypeVar("_F", bound=Callable[..., Any])


def _tracked(fn: _F) -> _F:
    """Mark the machine unhealthy while a rule or invariant runs (teardown reads it)."""

    @functools.wraps(fn)
    def wrapper(self: CrashResumeMachine, *args: Any, **kwargs: Any) -> Any:
        self.healthy = False
        result = fn(self, *args, **kwargs)
        self.healthy = True
        return result

    return wrapper  # type: ignore[return-value]


class CrashResumeMachine(RuleBasedStateMachine):
    """Runs on a real engine that keeps crashing; see the module docstring.

    Each rule draws its choices, then calls a ``do_*`` method with plain
    arguments (the ``test_found_*`` replays call those directly).
    """

    backend = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.healthy = True
        self.tmpdir: str | None = None
        self.host: EngineHost | None = None
        self.storage: AuditedStorage | None = None
        self.workflows: list[type[Workflow]] = []
        self.snap = Snapshot(runs=(), pending=(), trio_now=0.0, wall_now=EPOCH)
        # Runs a cancel was tried on (an engine crash may have cut it short),
        # and run_id -> the cancelled run as first persisted.
        self.cancel_attempted: set[str] = set()
        self.cancelled: dict[str, Instance] = {}
        # (run_id, step) of every resume the engine accepted, and of every timer
        # schedule_resume was asked to arm.
        self.accepted: set[tuple[str, str]] = set()
        self.scheduled: set[tuple[str, str]] = set()
        # (run_id, step) -> deliveries announced by step.resume events with timer=True.
        self.timer_deliveries: collections.Counter[tuple[str, str]] = collections.Counter()
        # Runs the runtime restarted after a crash (instance.restart events).
        self.restarts: collections.Counter[str] = collections.Counter()

    # -- plumbing -----------------------------------------------------------------------

    def _make_inner(self) -> Callable[[], Storage]:
        if self.backend == "memory":
            shared = MemoryStorage()
            return lambda: shared
        self.tmpdir = tempfile.mkdtemp(prefix="crash-machine-")
        path = Path(self.tmpdir) / "runs.db"
        return lambda: SQLiteStorage(path)

    def _on_event(self, event: Event) -> None:
        if event.name == "step.resume" and event.metadata.get("timer"):
            self.timer_deliveries[(event.metadata["run_id"], event.metadata["step"])] += 1
        if event.name == "instance.restart":
            self.restarts[event.metadata["run_id"]] += 1

    def _workflow(self, run: Instance) -> type[Workflow]:
        for wf in self.workflows:
            if wf.name == run.workflow:
                return wf
        raise AssertionError(f"unknown workflow {run.workflow}")

    def _label(self, run: Instance) -> tuple[int, str]:
        """How rules name a run: (workflow index, business id)."""
        return self.workflows.index(self._workflow(run)), run.id

    def _call(self, fn: Callable[[Any], Any]) -> CommandResult:
        """Run ``fn(engine)`` inside the engine, settle, and refresh the snapshot."""
        assert self.host is not None
        host = self.host

        async def op() -> tuple[CommandResult, Snapshot]:
            result = await host.command(fn)
            return result, await host.snapshot()

        result, snap = host.run(op)
        self._observe(snap)
        assert not result.hung, "an engine call never returned although the engine settled"
        return result

    def _refresh(self) -> None:
        assert self.host is not None
        self._observe(self.host.run(self.host.snapshot))

    def _observe(self, snap: Snapshot) -> None:
        self.snap = snap
        for run in snap.runs:
            if run.status is Status.CANCELLED:
                self.cancelled.setdefault(run.run_id, run)

    def _live(self) -> list[Instance]:
        return [r for r in self.snap.runs if r.status.is_live]

    def _live_labels(self) -> list[tuple[int, str]]:
        return sorted(self._label(r) for r in self._live())

    def _finished_labels(self) -> list[tuple[int, str]]:
        labels = {self._label(r) for r in self.snap.runs}
        return sorted(labels - set(self._live_labels()))

    def _parked(self) -> list[tuple[int, str, str]]:
        return sorted((*self._label(r), s) for r in self._live() for s in r.waiting_steps)

    def _schedulable(self) -> list[tuple[int, str, str]]:
        """Parked steps that only an outside resume can move (no timer armed yet)."""
        return sorted(
            (*self._label(run), step)
            for run in self._live()
            for step in run.waiting_steps
            if not timer_events(self._workflow(run), step)
            and not any(t.step == step for t in run.timers)
        )

    def _find_live(self, index: int, id: str) -> Instance | None:
        for run in self._live():
            if self._label(run) == (index, id):
                return run
        return None

    def _live_run(self, index: int, id: str) -> Instance:
        run = self._find_live(index, id)
        assert run is not None, (index, id)
        return run

    # -- rules --------------------------------------------------------------------------

    @initialize(specs=st.lists(crash_workflow_specs(), min_size=1, max_size=2))
    @_tracked
    def open_engine(self, specs: list[WorkflowSpec]) -> None:
        self.storage = AuditedStorage(self._make_inner())
        self.workflows = [build_workflow(spec) for spec in specs]
        for wf in self.workflows:
            instrument(wf, self.storage)
        self.host = EngineHost(
            self.storage, self.workflows, restart_policy=RESTART_POLICY, handler=self._on_event
        )
        self.host.start()
        self._refresh()

    def _draw_script(self, data: st.DataObject) -> tuple[int, OutcomeScript]:
        index = data.draw(st.integers(0, len(self.workflows) - 1), label="workflow")
        return index, data.draw(outcome_scripts(self.workflows[index]), label="script")

    @rule(data=st.data(), value=st.sampled_from(VALUES))
    @_tracked
    def start(self, data: st.DataObject, value: str) -> None:
        """Start a run; a live run with the same id refuses it (AlreadyRunning)."""
        self.do_start(*self._draw_script(data), value)

    def do_start(self, index: int, script: OutcomeScript, value: str) -> None:
        assert self.host is not None
        wf, clock, id = self.workflows[index], self.host.clock, f"generated::{value}"
        holder = self._find_live(index, id)

        async def start(engine: Any) -> str:
            clock.jump(NUDGE)
            started: str = await engine.start_instance(wf, script.as_context(), id=id)
            return started

        result = self._call(start)
        if result.crashed:
            return
        if holder is not None:
            assert isinstance(result.error, AlreadyRunning), result
        else:
            assert result.error is None, result
            assert result.value == id, result

    @precondition(lambda self: self._parked())
    @rule(data=st.data(), seconds=st.sampled_from([0.0, 0.5, 1.0, 5.0]), yields=YIELDS)
    @_tracked
    def resume(self, data: st.DataObject, seconds: float, yields: int) -> None:
        """Resume a parked step with its scripted event, ``seconds`` of virtual time later
        and ``yields`` checkpoints after the clock moved (due timers race the resume)."""
        index, id, step = data.draw(st.sampled_from(self._parked()), label="parked step")
        self.do_resume(index, id, step, seconds, yields)

    def do_resume(self, index: int, id: str, step: str, seconds: float, yields: int) -> None:
        assert self.host is not None
        run = self._live_run(index, id)
        wf, event, clock = self.workflows[index], scripted_resume(run, step), self.host.clock
        due = self.snap.wall_now + timedelta(seconds=seconds) + SLACK
        timer_due = any(t.step == step and t.fire_at <= due for t in run.timers)

        async def resume(engine: Any) -> None:
            clock.jump(seconds)
            for _ in range(yields):
                await trio.sleep(0)
            await engine.resume(id, event, step=step, workflow=wf.name)

        result = self._call(resume)
        if result.crashed:
            return
        if timer_due and isinstance(result.error, InvalidResume):
            return  # the timer won the race
        assert result.error is None, result
        if not timer_due:
            # A due timer is an older wakeup: applied first, it completes the step and
            # the resume, recorded meanwhile, is dropped. Otherwise it must apply.
            self.accepted.add((run.run_id, step))

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0]))
    @_tracked
    def advance_time(self, seconds: float) -> None:
        """Move virtual time on; due timers fire."""
        assert self.host is not None
        self.host.run(self.host.jump, seconds)
        self._refresh()

    @rule(after_writes=st.integers(0, 6), point=st.sampled_from(CrashPoint))
    @_tracked
    def crash_engine(self, after_writes: int, point: CrashPoint) -> None:
        """Crash now (0), or arm a crash just before/after the ``after_writes``-th next
        write; the engine reopens on the same storage and recovers."""
        assert self.host is not None
        assert self.storage is not None
        if after_writes == 0:
            self.host.run(self.host.crash_now)
        else:
            self.storage.crash_after, self.storage.crash_point = after_writes, point
        self._refresh()

    @precondition(lambda self: self._live())
    @rule(data=st.data(), times=st.integers(1, RESTART_POLICY.max_restarts + 2))
    @_tracked
    def crash_instance(self, data: st.DataObject, times: int) -> None:
        """The run's next ``times`` writes fail (a transient storage fault, more often in
        a row than the restart budget allows crashes): the run backs off and retries,
        and no such fault ever fails it."""
        index, id = data.draw(st.sampled_from(self._live_labels()), label="run")
        self.do_crash_instance(index, id, times)

    def do_crash_instance(self, index: int, id: str, times: int) -> None:
        assert self.storage is not None
        run_id = self._live_run(index, id).run_id
        armed = self.storage.failing_writes[run_id] + times
        self.storage.failing_writes[run_id] = min(armed, RESTART_POLICY.max_restarts + 2)

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    @_tracked
    def cancel(self, data: st.DataObject) -> None:
        """Cancel a live run: it ends ``cancelled`` with the history it had."""
        index, id = data.draw(st.sampled_from(self._live_labels()), label="run")
        self.do_cancel(index, id)

    def do_cancel(self, index: int, id: str) -> None:
        assert self.storage is not None
        live, wf = self._live_run(index, id), self.workflows[index]
        self.cancel_attempted.add(live.run_id)

        async def cancel(engine: Any) -> Instance:
            cancelled: Instance = await engine.cancel(id, workflow=wf.name)
            return cancelled

        result = self._call(cancel)
        if not result.crashed and result.error is None:
            assert result.value.execution_history == live.execution_history
        self._cancel_checked(result, live)

    def _cancel_checked(self, result: CommandResult, live: Instance) -> None:
        """The run ended cancelled, or was over already (a failing write only delays it)."""
        if result.crashed:
            return
        if isinstance(result.error, NotCancellable):
            return
        assert result.error is None, result
        cancelled = result.value
        assert cancelled.status is Status.CANCELLED
        assert cancelled.run_id == live.run_id
        self.cancelled.setdefault(cancelled.run_id, cancelled)

    @precondition(lambda self: self._finished_labels())
    @rule(data=st.data())
    @_tracked
    def cancel_finished(self, data: st.DataObject) -> None:
        """Cancelling an id whose runs all ended is refused and changes nothing."""
        index, id = data.draw(st.sampled_from(self._finished_labels()), label="run")
        wf, before = self.workflows[index], self.snap.runs

        async def cancel(engine: Any) -> Instance:
            cancelled: Instance = await engine.cancel(id, workflow=wf.name)
            return cancelled

        result = self._call(cancel)
        assert result.crashed or isinstance(result.error, NotCancellable), result
        assert result.crashed or self.snap.runs == before

    @precondition(lambda self: self._schedulable())
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.5, 3.0]))
    @_tracked
    def schedule_resume(self, data: st.DataObject, delay: float) -> None:
        """Arm a durable timer (``schedule_resume``) that delivers a step's scripted event."""
        index, id, step = data.draw(st.sampled_from(self._schedulable()), label="step")
        self.do_schedule_resume(index, id, step, delay)

    def do_schedule_resume(self, index: int, id: str, step: str, delay: float) -> None:
        run = self._live_run(index, id)
        wf, event = self.workflows[index], scripted_resume(run, step)

        async def schedule(engine: Any) -> None:
            await engine.schedule_resume(id, step, delay, event=event, workflow=wf.name)

        self.scheduled.add((run.run_id, step))  # an engine crash may cut the call short
        result = self._call(schedule)
        if result.crashed or isinstance(result.error, InstanceRestarted):
            return  # the engine, or the run's task, crashed before the timer was armed
        assert result.error is None, result

    @rule(data=st.data(), value=st.sampled_from(VALUES), yields=YIELDS)
    @_tracked
    def start_then_cancel(self, data: st.DataObject, value: str, yields: int) -> None:
        """Start a run and cancel it ``yields`` checkpoints later, while its steps run."""
        index, script = self._draw_script(data)
        self.do_start_then_cancel(index, script, value, yields)

    def do_start_then_cancel(
        self, index: int, script: OutcomeScript, value: str, yields: int
    ) -> None:
        assert self.host is not None
        wf, clock, id = self.workflows[index], self.host.clock, f"generated::{value}"
        if self._find_live(index, id) is not None:
            return
        started: list[str] = []

        async def start_then_cancel(engine: Any) -> Instance:
            clock.jump(NUDGE)
            await engine.start_instance(wf, script.as_context(), id=id)
            live = await engine.get(id, workflow=wf.name)
            started.append(live.run_id)
            self.cancel_attempted.add(live.run_id)
            for _ in range(yields):
                await trio.sleep(0)
            cancelled: Instance = await engine.cancel(id, workflow=wf.name)
            return cancelled

        result = self._call(start_then_cancel)
        if started:
            live = next(r for r in self.snap.runs if r.run_id == started[0])
            self._cancel_checked(result, live)
        else:
            assert result.crashed, result

    @rule(kill_first=st.booleans())
    @_tracked
    def second_engine_claims(self, kill_first: bool) -> None:
        """Open a second engine on the same storage object (sharing the wall clock); with
        ``kill_first``, the older engine then dies without releasing its leases, and time
        moves on (in steps shorter than a renewal) until the survivor took its runs."""
        self.do_second_engine(kill_first)

    def do_second_engine(self, kill_first: bool) -> None:
        assert self.host is not None
        if self.host.engines < 2:
            self.host.run(self.host.open_second)
        if kill_first:
            self.host.run(self.host.kill_oldest)
        self._refresh()

    # -- invariants --------------------------------------------------------------------

    @invariant()
    @_tracked
    def one_owner_writes_a_run_at_a_time(self) -> None:
        """Every accepted write of a run was made under its newest lease: per run the
        epochs of accepted writes never go back, and each epoch has one owner. So two
        engines never both write a run, and its history never interleaves."""
        assert self.storage is not None
        top: dict[str, int] = {}
        owners: dict[tuple[str, int], str] = {}
        for run_id, owner, epoch in self.storage.writes:
            assert epoch >= top.get(run_id, 0), ("older epoch wrote after a newer", run_id)
            top[run_id] = epoch
            assert owners.setdefault((run_id, epoch), owner) == owner, (run_id, epoch)
        for run in self.snap.runs:
            steps = [e.step for e in run.completions]
            assert len(steps) == len(set(steps)), ("a step completed twice", run)

    @invariant()
    @_tracked
    def storage_faults_fail_no_run(self) -> None:
        """A transient storage failure is retried: it restarts no run (no crash is
        counted) and fails none (every failed run failed in a step its script fails)."""
        assert not self.restarts, self.restarts
        for run in self.snap.runs:
            if run.status is Status.FAILED:
                assert run.error is not None, run
                assert run.error.kind == "failure", run

    @invariant()
    @_tracked
    def persisted_runs_are_reachable(self) -> None:
        """Every persisted run is a state the pure engine reaches from ``Instance.new``.

        Replaying its ``execution_history`` through the pure engine functions
        gives the same completed steps and context; a live run has the same
        active steps, all parked by steps that can park; a terminal run ended
        for a reason the rules can cause. Each completion is what the step's
        script says.
        """
        assert self.storage is not None
        for run in self.snap.runs:
            wf = self._workflow(run)
            again = replay(run, wf)
            check_history_follows_script(run, wf)
            assert run.completed_steps == again.completed_steps, (run, again)
            assert run.context.steps == again.context.steps, (run, again)
            assert len({e.step for e in run.completions}) == len(run.completions)
            if run.status is Status.COMPLETED:
                assert again.status is Status.COMPLETED, (run, again)
                continue
            assert again.status.is_live, (run, again)
            if run.status is Status.CANCELLED:
                assert run.run_id in self.cancel_attempted, run
            elif run.status is Status.FAILED:
                assert run.error is not None, run
                if run.error.kind == "failure":
                    assert run.error.step in again.active_steps, (run, again)
                    assert outcomes_of(run)[run.error.step].fail, run
                else:
                    raise AssertionError(("a run failed for no step's failure", run.error, run))
            else:
                assert run.active_steps == again.active_steps, (run, again)
                assert run.taken_edges == again.taken_edges, (run, again)
                assert run.step_configs == again.step_configs, (run, again)
                outcomes = outcomes_of(run)
                for step in run.waiting_steps:
                    cls = wf.definition().steps[step]
                    can_park = issubclass(cls, Wait | WaitForEvent) or outcomes[step].suspend
                    assert can_park, (step, run)
            if run.is_terminal:
                assert not run.active_steps, run
                assert not run.waiting_steps, run
                assert not run.timers, run

    @invariant()
    @_tracked
    def completed_steps_never_run_again(self) -> None:
        """No step's ``execute`` starts once its completion (or the run's end) is persisted,
        and persisted state only moves forward: history grows, terminal runs never change.

        Steps that had not completed may run more than once (at-least-once), and
        every completed step did run.
        """
        assert self.storage is not None
        assert not self.storage.violations, self.storage.violations
        executed = set(self.storage.executions)
        for run in self.snap.runs:
            wf = self._workflow(run)
            for step in run.completed_steps:
                if not wf.definition().steps[step].terminal:
                    assert (run.run_id, step) in executed, ("completed, never executed", step, run)

    @invariant()
    @_tracked
    def settled_runs_are_parked(self) -> None:
        """Once settled, every live run waits (all its active steps parked), every accepted
        resume has been applied and no resume record is left behind."""
        by_run = {r.run_id: r for r in self.snap.runs}
        for wakeup in self.snap.pending:
            if wakeup.kind is not WakeupKind.TIMER:
                raise AssertionError(("wakeup left pending", wakeup, by_run.get(wakeup.run_id)))
        for run in self._live():
            assert run.status is Status.WAITING, run
            assert run.active_steps, run
            assert run.active_steps == run.waiting_steps, run
        for run_id, step in self.accepted:
            run = by_run[run_id]
            assert run.is_terminal or step in run.completed_steps, (step, run)

    @invariant()
    @_tracked
    def timers_fire_once_and_none_is_lost(self) -> None:
        """A parked Wait (or WaitForEvent with a timeout) has exactly one durable timer, a
        parked task step only the one ``schedule_resume`` armed; no timer is left past its
        ``fire_at`` once settled, and each timer delivers at most once."""
        for run in self._live():
            wf, outcomes = self._workflow(run), outcomes_of(run)
            for timer in run.timers:
                assert timer.step in run.waiting_steps, (timer, run)
                allowed = set(timer_events(wf, timer.step))
                if (run.run_id, timer.step) in self.scheduled:
                    allowed.add(outcomes[timer.step].resume_with or outcomes[timer.step].event)
                assert timer.event in allowed, (timer, run)
                assert timer.fire_at > self.snap.wall_now - SLACK, ("overdue", timer, run)
            for step in run.waiting_steps:
                armed = [t for t in run.timers if t.step == step]
                if timer_events(wf, step):
                    assert len(armed) == 1, (step, run)
                else:
                    assert len(armed) <= 1, (step, run)
                    assert not armed or (run.run_id, step) in self.scheduled, (step, run)
        for key, count in self.timer_deliveries.items():
            assert count == 1, ("timer delivered twice", key)

    @invariant()
    @_tracked
    def cancelled_runs_never_advance(self) -> None:
        """A cancelled run stays exactly as first persisted: its history never grows."""
        by_run = {r.run_id: r for r in self.snap.runs}
        for run_id, cancelled in self.cancelled.items():
            run = by_run[run_id]
            assert run.status is Status.CANCELLED, run
            assert run.execution_history == cancelled.execution_history, (run, cancelled)

    # -- the end ------------------------------------------------------------------------

    def _check_all(self) -> None:
        self.one_owner_writes_a_run_at_a_time()
        self.storage_faults_fail_no_run()
        self.persisted_runs_are_reachable()
        self.completed_steps_never_run_again()
        self.settled_runs_are_parked()
        self.timers_fire_once_and_none_is_lost()
        self.cancelled_runs_never_advance()

    def finish(self) -> None:
        """Drive every live run to its end (fire the next due timer, else resume a parked
        step as scripted), then compare every run that ended by itself with its
        crash-free reference run."""
        assert self.host is not None
        for _ in range(200):
            live = self._live()
            if not live:
                break
            fire_at = [t.fire_at for r in live for t in r.timers]
            if fire_at:
                wait = (min(fire_at) - self.snap.wall_now).total_seconds()
                self.host.run(self.host.jump, max(wait, 0.0) + SLACK.total_seconds())
                self._refresh()
            else:
                index, id, step = self._parked()[0]
                self.do_resume(index, id, step, seconds=0.0, yields=0)
            self._check_all()
        else:
            raise AssertionError(f"runs never ended: {self._live()}")
        for run in self.snap.runs:
            if run.status is Status.CANCELLED:
                continue
            check_against_reference(run, self._workflow(run))

    def teardown(self) -> None:
        try:
            if self.healthy and self.host is not None:
                self.finish()
        finally:
            if self.host is not None:
                self.host.stop()
            if self.tmpdir is not None:
                shutil.rmtree(self.tmpdir, ignore_errors=True)


class MemoryCrashMachine(CrashResumeMachine):
    backend = "memory"


class SQLiteCrashMachine(CrashResumeMachine):
    backend = "sqlite"


# The profile's examples (dev/ci: 60, thorough: 2000), each up to 50 rules: about
# 10-15 s per backend on a laptop.
CRASH_SETTINGS = settings(
    max_examples=settings.default.max_examples, stateful_step_count=50, deadline=None
)


def test_crash_resume_memory() -> None:
    run_state_machine_as_test(MemoryCrashMachine, settings=CRASH_SETTINGS)


def test_crash_resume_sqlite() -> None:
    run_state_machine_as_test(SQLiteCrashMachine, settings=CRASH_SETTINGS)


# -- examples the machine found ------------------------------------------------------
#
# Each replays, step by step, the shortest example the machine found for a runtime
# bug that is now fixed. They run under @given so that Hypothesis seeds Trio's
# scheduler exactly as it did when the machine found them.

Step = Callable[[CrashResumeMachine], None]


def _spec(*nodes: NodeSpec, extra: tuple[TransitionSpec, ...] = ()) -> WorkflowSpec:
    """A chain ``nodes[0] -> nodes[1] -> ... -> done`` on each node's events."""
    keys = [n.key for n in nodes] + ["done"]
    transitions = tuple(
        TransitionSpec(source=node.key, event=event, targets=(keys[i + 1],))
        for i, node in enumerate(nodes)
        for event in node.events
    )
    return WorkflowSpec(nodes=nodes, transitions=transitions + extra)


def _task(key: str) -> NodeSpec:
    return NodeSpec(key=key, kind="task", events=("e0",))


def _wait(key: str, seconds: float) -> NodeSpec:
    return NodeSpec(key=key, kind="wait", events=("timeout",), config={"seconds": seconds})


def _script(spec: WorkflowSpec, **outcomes: Outcome) -> OutcomeScript:
    """Tasks complete with their first event, waits park for their timer, a WaitForEvent
    parks for ``received``; ``outcomes`` overrides some steps."""
    chosen = {"done": Outcome(event="done")}
    for node in spec.nodes:
        if node.kind == "task":
            chosen[node.key] = Outcome(event=node.events[0])
        else:
            chosen[node.key] = Outcome(event=node.events[0], suspend=True)
    return OutcomeScript(outcomes={**chosen, **outcomes})


def _replay(backend: str, spec: WorkflowSpec, steps: list[Step]) -> None:
    machine_cls = SQLiteCrashMachine if backend == "sqlite" else MemoryCrashMachine

    @settings(max_examples=1, database=None, deadline=None)
    @given(st.none())
    def replay(_: None) -> None:
        machine = machine_cls()
        try:
            machine.open_engine(specs=[spec])
            for step in steps:
                machine.healthy = False  # until the step and the invariants pass
                step(machine)
                machine._check_all()
                machine.healthy = True
        finally:
            machine.teardown()

    replay()


BACKENDS = pytest.mark.parametrize("backend", ["memory", "sqlite"])
WAIT_SIGNAL = NodeSpec(
    key="s1",
    kind="wait_for_event",
    events=("received", "timeout"),
    config={"event_name": "signal_s1", "timeout": 1},
)


@BACKENDS
def test_found_cancel_whose_write_fails_leaves_the_run_running(backend: str) -> None:
    """``cancel`` stopped the run's task, then failed to persist: the run was left live
    with no task, and its timer never fired. Now the run is restarted."""
    spec = _spec(_task("s0"), WAIT_SIGNAL)
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, _script(spec), "a"),
            lambda m: m.do_crash_instance(0, "generated::a", 1),
            lambda m: m.do_cancel(0, "generated::a"),
            lambda m: m.advance_time(5.0),
        ],
    )


@BACKENDS
def test_found_resume_racing_its_timer_leaves_no_record(backend: str) -> None:
    """A resume recorded while the parked step's timer ended the run was never applied
    nor deleted. Now the run drops it, or ``resume`` refuses it."""
    spec = _spec(_task("s0"), _task("s1"), _wait("s2", 0.5), _wait("s3", 1.0))
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, _script(spec), "a"),
            lambda m: m.advance_time(0.5),
            lambda m: m.do_resume(0, "generated::a", "s3", seconds=1.0, yields=0),
        ],
    )


@BACKENDS
def test_found_schedule_resume_answers_when_the_run_crashes(backend: str) -> None:
    """The run's task crashed persisting a ``schedule_resume`` timer and the caller
    waited forever. Now it gets ``InstanceRestarted``."""
    spec = _spec(_task("s0"), _task("s1"))
    script = _script(spec, s1=Outcome(event="e0", suspend=True))
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, script, "a"),
            lambda m: m.do_crash_instance(0, "generated::a", 1),
            lambda m: m.do_schedule_resume(0, "generated::a", "s1", 0.0),
        ],
    )


@BACKENDS
def test_found_timer_with_an_event_name_delivers_received(backend: str) -> None:
    """A ``schedule_resume`` timer carrying a WaitForEvent's ``event_name`` failed the
    run (undeclared event) instead of delivering ``received``."""
    signal_only = NodeSpec(
        key="s1", kind="wait_for_event", events=("received",), config={"event_name": "signal_s1"}
    )
    spec = _spec(_task("s0"), signal_only)
    script = _script(spec, s1=Outcome(event="received", suspend=True, resume_with="signal_s1"))
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, script, "a"),
            lambda m: m.do_schedule_resume(0, "generated::a", "s1", 0.0),
        ],
    )


@BACKENDS
def test_found_resume_recorded_as_the_engine_dies_is_dropped(backend: str) -> None:
    """The engine died right after recording a resume whose run had just ended: the
    record stayed forever. Now recovery drops records of finished runs."""
    timeout_only = attrs.evolve(WAIT_SIGNAL, key="s4", config={"timeout": 1})
    spec = _spec(_task("s0"), _task("s1"), _wait("s2", 0.5), _wait("s3", 0.5), timeout_only)
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, _script(spec), "b"),
            lambda m: m.advance_time(0.5),
            lambda m: m.advance_time(0.5),
            lambda m: m.crash_engine(5, CrashPoint.AFTER),
            lambda m: m.do_start_then_cancel(0, _script(spec), "a", 0),
            lambda m: m.do_resume(0, "generated::b", "s4", seconds=1.0, yields=0),
        ],
    )


@BACKENDS
def test_found_resume_racing_a_timer_write_waits_for_the_next_timer(backend: str) -> None:
    """A resume recorded while the run's loop wrote a new timer (here: a parked step's
    timer fired and the next step parked on its own) was skipped by the release (``seen``
    moved past it with the new timer's seq): it waited, unapplied, for that timer. Now
    the loop re-reads its wakeups before releasing."""
    signal_only = NodeSpec(key="s1", kind="wait_for_event", events=("received",))
    spec = _spec(_task("s0"), signal_only, _wait("s2", 0.5))
    script = _script(spec, s0=Outcome(event="e0", suspend=True))
    _replay(
        backend,
        spec,
        [
            lambda m: m.do_start(0, script, "a"),
            lambda m: m.do_schedule_resume(0, "generated::a", "s0", 0.0),
            lambda m: m.do_schedule_resume(0, "generated::a", "s1", 0.5),
            lambda m: m.do_resume(0, "generated::a", "s1", seconds=0.5, yields=4),
        ],
    )
