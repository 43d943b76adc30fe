"""The pure engine functions against a naive reference model (STYLE rule 10).

A ``Bundle`` holds generated workflow definitions; rules start runs of them
and complete, park, resume, fail and cancel steps. ``Model`` recomputes the
join rule from scratch by a plain fixpoint over the whole graph after every
completion; the engine's incremental answer must agree with it.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import attrs
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from hephaestus_trio import (
    ExecutionEntry,
    Instance,
    InvalidResume,
    NotCancellable,
    Status,
    UndeclaredEvent,
    WaitForEvent,
    Workflow,
)
from hephaestus_trio.core._graph import Definition
from hephaestus_trio.engine import (
    activate_transitions,
    advance,
    cancel,
    check_completion,
    complete_step,
    fail,
    park,
    resume_step,
)
from hephaestus_trio.serialization import dumps
from hephaestus_trio.testing import EPOCH, workflows


@attrs.define
class Model:
    """Naive model of one run: completed steps, chosen edges, what should be active."""

    definition: Definition
    completed: set[str] = attrs.Factory(set)
    taken: set[tuple[str, str]] = attrs.Factory(set)
    active: set[str] = attrs.Factory(set)
    parked: set[str] = attrs.Factory(set)
    history: int = 0
    status: Status = Status.RUNNING

    def dead(self) -> set[str]:
        """Steps that can no longer run: every edge into them is dead (fixpoint)."""
        d = self.definition
        dead: set[str] = set()
        changed = True
        while changed:
            changed = False
            for key in d.steps:
                if key in dead or key == d.start or key in self.completed or key in self.active:
                    continue
                if all(
                    p in dead or (p in self.completed and (p, key) not in self.taken)
                    for p in d.predecessors[key]
                ):
                    dead.add(key)
                    changed = True
        return dead

    def ready(self) -> set[str]:
        """Not yet run, some edge in taken, every edge in decided."""
        d, dead = self.definition, self.dead()
        return {
            key
            for key in d.steps
            if key not in self.completed
            and any((p, key) in self.taken for p in d.predecessors[key])
            and all(p in self.completed or p in dead for p in d.predecessors[key])
        }

    def complete(self, step: str, event: str) -> None:
        self.completed.add(step)
        self.active.discard(step)
        self.parked.discard(step)
        self.history += 1
        targets = self.definition.transitions.get((step, event), ())
        self.taken |= {(step, t) for t in targets}
        self.active |= self.ready()
        if not self.active:
            terminal = any(self.definition.steps[k].terminal for k in self.completed)
            self.status = Status.COMPLETED if terminal else Status.FAILED
        elif self.active <= self.parked:
            self.status = Status.WAITING
        else:
            self.status = Status.RUNNING

    def stop(self, status: Status) -> None:
        self.active.clear()
        self.parked.clear()
        self.status = status


@attrs.define
class Run:
    workflow: type[Workflow]
    instance: Instance
    model: Model
    seen_completed: frozenset[str] = frozenset()
    seen_history: tuple[ExecutionEntry, ...] = ()


class EngineMachine(RuleBasedStateMachine):
    definitions = Bundle("definitions")

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[Run] = []
        self.clock = 0

    def at(self) -> Any:
        self.clock += 1
        return EPOCH + timedelta(seconds=self.clock)

    # -- helpers ----------------------------------------------------------------------

    def live(self) -> list[Run]:
        return [r for r in self.runs if not r.instance.is_terminal]

    def with_running(self) -> list[Run]:
        return [r for r in self.runs if r.instance.running_steps]

    def with_parked(self) -> list[Run]:
        return [r for r in self.runs if r.instance.waiting_steps]

    def check_model(self, run: Run) -> None:
        inst, model = run.instance, run.model
        assert inst.completed_steps == model.completed
        assert inst.active_steps == model.active, (inst.active_steps, model.active)
        assert inst.waiting_steps == model.parked
        assert inst.status is model.status
        assert len(inst.execution_history) == model.history

    # -- rules --------------------------------------------------------------------------

    @initialize(target=definitions, wf=workflows(max_steps=5))
    def first_definition_and_run(self, wf: type[Workflow]) -> type[Workflow]:
        self.start(wf)
        return wf

    @rule(target=definitions, wf=workflows(max_steps=5))
    def define(self, wf: type[Workflow]) -> type[Workflow]:
        return wf

    @rule(wf=definitions)
    def start(self, wf: type[Workflow]) -> None:
        number = len(self.runs)
        pending = Instance.new(
            wf, {}, id=f"generated::r{number}", run_id=f"run-{number}", now=EPOCH
        )
        inst = advance(pending, workflow=wf, at=self.at())
        model = Model(wf.definition(), active={wf.definition().start})
        run = Run(wf, inst, model)
        self.runs.append(run)
        self.check_model(run)

    @precondition(lambda self: self.with_running())
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.with_running()), label="run")
        step = data.draw(st.sampled_from(sorted(run.instance.running_steps)), label="step")
        definition = run.model.definition
        event = data.draw(st.sampled_from(definition.declared_events(step)), label="event")
        wf, inst = run.workflow, run.instance
        at = self.at()
        inst = complete_step(inst, step, event, {"by": "machine"}, at=at, workflow=wf)
        inst = activate_transitions(inst, step, event, at=at, workflow=wf)
        run.instance = check_completion(inst, workflow=wf, at=at)
        run.model.complete(step, event)
        self.check_model(run)
        assert run.instance.execution_history[-1].step == step
        assert run.instance.execution_history[-1].event == event

    @precondition(lambda self: self.with_running())
    @rule(data=st.data())
    def suspend(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.with_running()), label="run")
        step = data.draw(st.sampled_from(sorted(run.instance.running_steps)), label="step")
        run.instance = park(run.instance, step, at=self.at())
        run.model.parked.add(step)
        if run.model.active <= run.model.parked:
            run.model.status = Status.WAITING
        self.check_model(run)

    @precondition(lambda self: self.with_parked())
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.with_parked()), label="run")
        step = data.draw(st.sampled_from(sorted(run.instance.waiting_steps)), label="step")
        definition = run.model.definition
        event = data.draw(st.sampled_from(definition.declared_events(step)), label="event")
        offered = event
        config = run.instance.step_configs.get(step) or {}
        cls = definition.steps[step]
        if issubclass(cls, WaitForEvent) and event == "received" and config.get("event_name"):
            offered = data.draw(st.sampled_from([event, config["event_name"]]), label="offered")
        run.instance = resume_step(run.instance, step, offered, at=self.at(), workflow=run.workflow)
        run.model.complete(step, event)
        self.check_model(run)
        assert run.instance.execution_history[-1].event == event

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def undeclared_event_changes_nothing(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from([r for r in self.live() if r.instance.active_steps]))
        step = data.draw(st.sampled_from(sorted(run.instance.active_steps)), label="step")
        before = dumps(run.instance)
        apply = resume_step if step in run.instance.waiting_steps else complete_step
        with pytest.raises(UndeclaredEvent) as exc:
            apply(run.instance, step, "never-declared", workflow=run.workflow)
        assert exc.value.step == step
        assert dumps(run.instance) == before

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def resume_of_a_step_not_parked_is_invalid(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.runs), label="run")
        not_parked = sorted(set(run.model.definition.steps) - run.instance.waiting_steps)
        step = data.draw(st.sampled_from(not_parked), label="step")
        before = dumps(run.instance)
        with pytest.raises(InvalidResume):
            resume_step(run.instance, step, "anything", workflow=run.workflow)
        assert dumps(run.instance) == before

    @precondition(lambda self: self.live())
    @rule(data=st.data())
    def fail_run(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.live()), label="run")
        run.instance = fail(run.instance, "failed by the machine", at=self.at())
        run.model.stop(Status.FAILED)
        self.check_model(run)
        assert run.instance.error is not None
        assert "failed by the machine" in str(run.instance.error)

    @precondition(lambda self: self.runs)
    @rule(data=st.data())
    def cancel_run(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self.runs), label="run")
        if run.instance.is_terminal:
            before = dumps(run.instance)
            with pytest.raises(NotCancellable):
                cancel(run.instance)
            assert dumps(run.instance) == before
        else:
            run.instance = cancel(run.instance, at=self.at())
            run.model.stop(Status.CANCELLED)
            self.check_model(run)

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def active_steps_are_steps_of_the_definition(self) -> None:
        """active_steps ⊆ steps of the definition."""
        for run in self.runs:
            assert run.instance.active_steps <= set(run.model.definition.steps)

    @invariant()
    def waiting_steps_are_active(self) -> None:
        """waiting_steps ⊆ active_steps."""
        for run in self.runs:
            assert run.instance.waiting_steps <= run.instance.active_steps

    @invariant()
    def terminal_runs_have_nothing_active(self) -> None:
        """A terminal status implies nothing active, parked or armed."""
        for run in self.runs:
            if run.instance.is_terminal:
                assert not run.instance.active_steps
                assert not run.instance.waiting_steps
                assert not run.instance.timers

    @invariant()
    def waiting_exactly_when_every_active_step_is_parked(self) -> None:
        """Status WAITING iff there are active steps and all of them are parked."""
        for run in self.runs:
            inst = run.instance
            if not inst.is_terminal:
                parked = bool(inst.active_steps) and inst.active_steps <= inst.waiting_steps
                assert (inst.status is Status.WAITING) == parked

    @invariant()
    def completed_steps_never_shrink_and_history_grows_by_one_per_completion(self) -> None:
        """completed_steps only grows; execution_history keeps its old entries and gains
        exactly one entry per newly completed step, for that step."""
        for run in self.runs:
            inst = run.instance
            assert run.seen_completed <= inst.completed_steps
            assert inst.execution_history[: len(run.seen_history)] == run.seen_history
            added = inst.execution_history[len(run.seen_history) :]
            assert sorted(e.step for e in added) == sorted(
                inst.completed_steps - run.seen_completed
            )
            run.seen_completed = inst.completed_steps
            run.seen_history = inst.execution_history


EngineMachine.TestCase.settings = settings(stateful_step_count=25)
TestEngineMachine = EngineMachine.TestCase
