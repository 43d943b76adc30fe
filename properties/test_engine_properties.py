"""Properties of the pure engine functions over random valid workflows.

Workflows come from ``hephaestus_trio.testing.workflows()`` and are driven by
random outcome scripts (``outcome_scripts`` + ``run_script``): every step
emits one of its declared events, maybe parks first and is resumed later,
or fails.
"""

from __future__ import annotations

import attrs
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from hephaestus_trio import (
    Complete,
    Fail,
    Instance,
    Status,
    Suspend,
    Wait,
    WaitForEvent,
    Workflow,
    WorkflowDefinitionError,
)
from hephaestus_trio.engine import can_still_run, choose_resume_step
from hephaestus_trio.serialization import dumps, loads
from hephaestus_trio.steps._wait import wait_seconds
from hephaestus_trio.testing import (
    DONE,
    EPOCH,
    OutcomeScript,
    TransitionSpec,
    WorkflowSpec,
    build_workflow,
    outcome_scripts,
    run_script,
    workflow_specs,
    workflows,
)


def play(wf: type[Workflow], data: st.DataObject, *, failures: bool = True) -> tuple[Instance, ...]:
    note(wf.to_ascii())
    script: OutcomeScript = data.draw(outcome_scripts(wf, failures=failures), label="script")
    return run_script(wf, script)


@given(wf=workflows(), data=st.data())
def test_every_run_reaches_a_terminal_status_within_a_bound(
    wf: type[Workflow], data: st.DataObject
) -> None:
    """(a) At most two moves per step (park + resume, or complete), plus the start."""
    trace = play(wf, data)
    final = trace[-1]
    assert final.is_terminal
    moves = len(trace) - 1
    assert moves <= 2 * len(wf.definition().steps) + 1
    # A valid workflow never stalls: the run fails only when a step fails.
    if final.status is Status.FAILED:
        assert final.error is not None
        assert final.error.kind == "failure"


@given(wf=workflows(), data=st.data())
def test_without_failures_every_run_completes(wf: type[Workflow], data: st.DataObject) -> None:
    trace = play(wf, data, failures=False)
    assert trace[-1].status is Status.COMPLETED
    assert trace[-1].completions[-1].step == DONE


@given(wf=workflows(), data=st.data())
def test_no_step_completes_twice(wf: type[Workflow], data: st.DataObject) -> None:
    """(b) Each completion is recorded once and the completed set matches the history."""
    for inst in play(wf, data):
        steps = [entry.step for entry in inst.completions]
        assert len(steps) == len(set(steps))
        assert set(steps) == inst.completed_steps
        assert not (inst.completed_steps & inst.active_steps)


@given(wf=workflows(), data=st.data())
def test_completed_iff_done_completed_and_nothing_active(
    wf: type[Workflow], data: st.DataObject
) -> None:
    """(c) For every instance reached."""
    for inst in play(wf, data):
        done = DONE in inst.completed_steps and not inst.active_steps
        assert (inst.status is Status.COMPLETED) == done


@given(wf=workflows(), data=st.data())
def test_status_tracks_the_active_and_parked_steps(wf: type[Workflow], data: st.DataObject) -> None:
    """WAITING exactly when every active step is parked; terminal runs hold nothing."""
    for inst in play(wf, data)[1:]:
        assert inst.waiting_steps <= inst.active_steps
        if inst.is_terminal:
            assert not inst.active_steps
            assert not inst.timers
        else:
            parked = bool(inst.active_steps) and inst.active_steps <= inst.waiting_steps
            assert (inst.status is Status.WAITING) == parked


@given(wf=workflows(), data=st.data())
def test_every_instance_reached_round_trips(wf: type[Workflow], data: st.DataObject) -> None:
    """(d) Serialization is lossless for every state a run passes through."""
    for inst in play(wf, data):
        text = dumps(inst)
        assert loads(text) == inst
        assert dumps(loads(text)) == text


@given(wf=workflows(), data=st.data())
def test_can_still_run_never_misses_a_step_that_runs_later(
    wf: type[Workflow], data: st.DataObject
) -> None:
    """``can_still_run`` over-approximates the future, and only ever shrinks.

    Every step that is active in, or completes after, a state reached was in
    that state's ``can_still_run``: an early resume it accepts is never for a
    step that was already impossible.
    """
    definition = wf.definition()
    trace = play(wf, data)
    possible = [can_still_run(inst, definition) for inst in trace]
    for i, inst in enumerate(trace):
        assert inst.active_steps <= possible[i]
        assert not (possible[i] & inst.completed_steps)
        for later in trace[i + 1 :]:
            ran_later = later.active_steps | (later.completed_steps - inst.completed_steps)
            assert ran_later <= possible[i]
        if i:
            assert possible[i] <= possible[i - 1]
    assert possible[-1] == frozenset()


@given(wf=workflows(), data=st.data())
def test_a_parked_step_can_be_chosen_for_every_event_it_accepts(
    wf: type[Workflow], data: st.DataObject
) -> None:
    """``choose_resume_step(step=k)`` accepts each declared event of parked ``k``."""
    definition = wf.definition()
    for inst in play(wf, data, failures=False):
        for key in inst.waiting_steps:
            for event in definition.steps[key].declared_events(inst.step_configs.get(key)):
                assert choose_resume_step(inst, wf, event, step=key) == key


# -- (e) validation ---------------------------------------------------------------------------


@given(spec=workflow_specs())
def test_generated_workflows_pass_validation(spec: WorkflowSpec) -> None:
    wf = build_workflow(spec)
    graph = wf.graph()
    assert set(graph.nodes) == {n.key for n in spec.nodes} | {DONE}
    assert graph.nodes[0] == spec.nodes[0].key
    assert len(graph.edges) == sum(len(t.targets) for t in spec.transitions)


Mutation = tuple[WorkflowSpec, tuple[str, ...]]
"""A broken spec and the culprits its error may name (any one of them)."""


def with_cycle(spec: WorkflowSpec, data: st.DataObject) -> Mutation:
    """A task gets a new declared event leading back to the start: a cycle."""
    tasks = [n for n in spec.nodes if n.kind == "task"]
    node = data.draw(st.sampled_from(tasks), label="cycle from")
    nodes = tuple(
        attrs.evolve(n, events=(*n.events, "back")) if n.key == node.key else n for n in spec.nodes
    )
    back = TransitionSpec(source=node.key, event="back", targets=(spec.nodes[0].key,))
    return attrs.evolve(spec, nodes=nodes, transitions=(*spec.transitions, back)), ("cycle",)


def without_transition(spec: WorkflowSpec, data: st.DataObject) -> Mutation:
    """One transition is dropped: its event is declared but goes nowhere.

    (When the dropped transition was the only one giving a ``Wait`` its
    config, the error is about that ``Wait`` instead.)
    """
    dropped = data.draw(st.sampled_from(spec.transitions), label="dropped")
    kept = tuple(t for t in spec.transitions if t != dropped)
    culprits = (f"_{dropped.source} declares event(s) [{dropped.event!r}]",)
    culprits += tuple(f"{t} has a bad config" for t in _class_names(dropped.targets))
    return attrs.evolve(spec, transitions=kept), culprits


def _class_names(keys: tuple[str, ...]) -> list[str]:
    # build_workflow names step classes "GeneratedN_<key>"; match on the suffix.
    return [f"_{key}" for key in keys if key != DONE]


def with_undeclared_event(spec: WorkflowSpec, data: st.DataObject) -> Mutation:
    """A transition on an event its step does not declare."""
    node = data.draw(st.sampled_from(spec.nodes), label="undeclared on")
    extra = TransitionSpec(source=node.key, event="undeclared", targets=(DONE,))
    culprit = f"_{node.key} does not declare 'undeclared'"
    return attrs.evolve(spec, transitions=(*spec.transitions, extra)), (culprit,)


@pytest.mark.parametrize("mutate", [with_cycle, without_transition, with_undeclared_event])
@given(spec=workflow_specs(), data=st.data())
def test_mutated_workflows_are_rejected(spec: WorkflowSpec, data: st.DataObject, mutate) -> None:  # type: ignore[no-untyped-def]
    broken, culprits = mutate(spec, data)
    with pytest.raises(WorkflowDefinitionError) as exc:
        build_workflow(broken)
    message = str(exc.value)
    assert any(c in message for c in culprits), (culprits, message)


@given(wf=workflows(), data=st.data())
async def test_generated_steps_return_their_scripted_result(
    wf: type[Workflow], data: st.DataObject
) -> None:
    """On the running engine, generated steps act out the script stored in the context."""
    script: OutcomeScript = data.draw(outcome_scripts(wf), label="script")
    inst = Instance.new(wf, script.as_context(), id="generated::x", run_id="x", now=EPOCH)
    definition = wf.definition()
    for key, cls in definition.steps.items():
        config = definition.configs.get(key)
        outcome = script.outcomes[key]
        result = await cls().execute(inst, config, inst.context)  # type: ignore[misc]
        if cls.terminal:
            assert result == "done"
        elif issubclass(cls, Wait):
            assert result == Suspend(after=wait_seconds(config), event="timeout")
        elif issubclass(cls, WaitForEvent):
            assert isinstance(result, Suspend)
            assert (result.after is None) == ("timeout" not in definition.declared_events(key))
        elif outcome.fail:
            assert isinstance(result, Fail)
        elif outcome.suspend:
            assert result == Suspend()
        else:
            assert result == Complete(outcome.event, updates={"event": outcome.event})
