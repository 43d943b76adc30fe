"""The compiled tables agree with the graph, and the fused transition with the three steps.

The runtime applies a step result through ``_transition`` (one ``Instance``)
and finds ready steps incrementally from the workflow's compiled tables. These
tests walk every run of the test workflows, choosing every declared event in
turn, and check at each transition that the fused result equals
``complete_step`` + ``activate_transitions`` + ``check_completion`` and that
the incremental readiness leaves no step ready that the full scan
(``ready_steps``) would still activate.
"""

from __future__ import annotations

from typing import Any

import pytest

from hephaestus_trio import Workflow
from hephaestus_trio.core._engine import _transition
from hephaestus_trio.engine import (
    activate_transitions,
    check_completion,
    complete_step,
    ready_steps,
)

from .test_engine import T0, Exclusive, FanOut, FanOutWithShortcut, Linear, Routed, at, start

WORKFLOWS = [Linear, Exclusive, FanOut, FanOutWithShortcut, Routed]


def _walk(workflow: type[Workflow], context: dict[str, Any]) -> int:
    """Drive every branch of ``workflow`` (depth first); returns how many transitions ran."""
    checked = 0
    todo = [start(workflow, context)]
    while todo:
        inst = todo.pop()
        for step in sorted(inst.active_steps):
            for event in workflow.definition().declared_events(step):
                when = at(checked + 1)
                updates = {"n": checked}
                fused = _transition(inst, step, event, updates, at=when, workflow=workflow)
                done = complete_step(inst, step, event, updates, at=when, workflow=workflow)
                moved = activate_transitions(done, step, event, at=when, workflow=workflow)
                slow = check_completion(moved, workflow=workflow, at=when)
                assert fused == slow
                if not fused.is_terminal:
                    leftover = ready_steps(fused, workflow.definition()) - fused.active_steps
                    assert leftover == frozenset()
                    todo.append(fused)
                checked += 1
    return checked


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.__name__)
def test_fused_transition_matches_the_three_functions(workflow: type[Workflow]) -> None:
    contexts = [{"priority": p} for p in ("high", "low", "both")] if workflow is Routed else [{}]
    assert sum(_walk(workflow, c) for c in contexts) >= 2


def test_compiled_tables_mirror_the_definition() -> None:
    compiled = FanOutWithShortcut.compiled()
    definition = FanOutWithShortcut.definition()
    assert compiled.start == definition.start
    for key in definition.steps:
        assert compiled.successors[key] == definition.successors(key)
        assert compiled.join_counts[key] == len(definition.predecessors[key])
    assert compiled.join_counts["j"] == 3  # branchy, x and c
    assert compiled.terminal == frozenset({"done"})
    for (step, event), targets in definition.transitions.items():
        assert compiled.transitions[(step, event)].targets == targets
    route = Routed.compiled().transitions[("triage", "routed")]
    assert route.route is not None
    assert set(route.declared) == {"fast_track", "standard"}
    assert route.configs["standard"] == {"tier": 2}


def test_compiled_tables_are_read_only() -> None:
    compiled = Linear.compiled()
    with pytest.raises(TypeError):
        compiled.transitions[("a", "go")] = compiled.transitions[("a", "go")]  # type: ignore[index]
    with pytest.raises(AttributeError):
        compiled.start = "b"  # type: ignore[misc]


def test_fused_transition_raises_what_complete_step_raises() -> None:
    from hephaestus_trio import UndeclaredEvent
    from hephaestus_trio.engine import StepNotActive

    inst = start(Linear)
    with pytest.raises(UndeclaredEvent):
        _transition(inst, "a", "nope", workflow=Linear)
    with pytest.raises(StepNotActive):
        _transition(inst, "b", "next", workflow=Linear)
    with pytest.raises(TypeError):
        _transition(inst, "a", "go", {"x": object()}, workflow=Linear)
    assert inst.updated_at == T0  # the argument is untouched
    assert inst.active_steps == frozenset({"a"})


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda w: w.__name__)
def test_transitions_leave_no_cyclic_garbage(workflow: type[Workflow]) -> None:
    """Every branch (joins and dead paths included) is freed by reference counting.

    Cyclic garbage is what makes the collector run in a long-lived engine: a
    transition that leaves any (mutually recursive closures did, at every
    join) costs a collection's walk over every live run, not just itself.
    """
    import gc

    contexts = [{"priority": p} for p in ("high", "low", "both")] if workflow is Routed else [{}]
    _walk(workflow, contexts[0])  # warm up: first-use caches are not garbage
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for context in contexts:
            _walk(workflow, context)
        assert gc.collect() == 0
    finally:
        if enabled:
            gc.enable()
