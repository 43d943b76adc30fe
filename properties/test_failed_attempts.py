"""Failed attempts in the history never change what a run does, only what it records.

Over random valid workflows, a run whose steps each fail a random number of
attempts before completing reaches the same state as one whose steps never
fail: same status, same completed steps, same completions (step, event) in
the same order, and the same context. Each step's failed attempts are
numbered 1..n and its completion is attempt n + 1 (``next_attempt``).
"""

from __future__ import annotations

from datetime import timedelta

from hypothesis import given, note
from hypothesis import strategies as st

from hephaestus_trio import Complete, Instance, Workflow
from hephaestus_trio.engine import advance, apply_attempt_failure, apply_result, next_attempt
from hephaestus_trio.testing import EPOCH, workflows


def drive(wf: type[Workflow], failures: dict[str, int]) -> Instance:
    """Run each running step in key order: ``failures[step]`` failed attempts, then an event."""
    at = EPOCH
    inst = advance(Instance.new(wf, {}, id="prop::a", run_id="r", now=at), workflow=wf, at=at)
    definition = wf.definition()
    while not inst.is_terminal and inst.running_steps:
        step = min(inst.running_steps)
        for k in range(1, failures.get(step, 0) + 1):
            assert next_attempt(inst, step) == k
            at += timedelta(seconds=1)
            decision = apply_attempt_failure(
                inst, step, RuntimeError(f"{step} {k}"), attempt=k, timed_out=k % 2 == 0, at=at
            )
            assert decision.outcome == "retrying"
            assert decision.instance.running_steps == inst.running_steps
            inst = decision.instance
        event = definition.declared_events(step)[0]
        at += timedelta(seconds=1)
        attempt = next_attempt(inst, step)
        inst = apply_result(
            inst, step, Complete(event), attempt=attempt, at=at, workflow=wf
        ).instance
    return inst


@given(wf=workflows(), data=st.data())
def test_failed_attempts_only_add_to_the_history(wf: type[Workflow], data: st.DataObject) -> None:
    note(wf.to_ascii())
    steps = sorted(wf.definition().steps)
    failures = data.draw(
        st.fixed_dictionaries({key: st.integers(0, 3) for key in steps}), label="failures"
    )
    clean = drive(wf, {})
    flaky = drive(wf, failures)

    assert flaky.status is clean.status
    assert flaky.completed_steps == clean.completed_steps
    assert flaky.context == clean.context
    assert [(e.step, e.event) for e in flaky.completions] == [
        (e.step, e.event) for e in clean.completions
    ]
    for entry in flaky.completions:
        assert entry.attempt == failures[entry.step] + 1
        failed = flaky.failed_attempts(entry.step)
        assert [f.attempt for f in failed] == list(range(1, failures[entry.step] + 1))
        assert all(f.event == "" and f.error is not None for f in failed)
    # Every entry is either a completion or a failed attempt, in the order they happened.
    stamps = [e.timestamp for e in flaky.execution_history]
    assert stamps == sorted(stamps)
    assert len(flaky.execution_history) == len(flaky.completions) + sum(
        len(flaky.failed_attempts(s)) for s in flaky.completed_steps
    )
