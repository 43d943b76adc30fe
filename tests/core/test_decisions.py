"""The decision functions (``core/_decisions.py``) on small hand-written workflows.

Each ``apply_*`` function is checked for every outcome it can return, every
``ErrorRecord`` kind it can write and the ``ignored`` cases; then
``can_still_run`` (dead-path elimination) and ``choose_resume_step``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hephaestus_trio import (
    Complete,
    Context,
    Done,
    ErrorRecord,
    ExecutionEntry,
    Fail,
    Instance,
    InvalidResume,
    RestartPolicy,
    Status,
    Step,
    Suspend,
    TimerRecord,
    Unique,
    WaitForEvent,
    Workflow,
    route,
)
from hephaestus_trio.engine import (
    Decision,
    activate_transitions,
    advance,
    apply_cancel,
    apply_crash,
    apply_result,
    apply_resume,
    apply_timer,
    can_still_run,
    cancel,
    check_completion,
    choose_resume_step,
    complete_step,
    give_up,
    park,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
U = Unique(key="test")


def make_step(name: str, *events: str) -> type[Step]:
    return type(name, (Step,), {"events": events})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


A = make_step("A", "go")
B = make_step("B", "next")
C = make_step("C", "next")
J = make_step("J", "next")
Choose = make_step("Choose", "left", "right")
Approve = make_step("Approve", "approved")
Hold = make_step("Hold", "next", "timeout")
Branchy = make_step("Branchy", "long", "short")
X = make_step("X", "next")


class Linear(Workflow, unique=U):
    start_at = A
    transitions = {(A, "go"): B, (B, "next"): Done}


class Exclusive(Workflow, unique=U):
    # The right branch has an event nothing else declares.
    start_at = Choose
    transitions = {
        (Choose, "left"): B,
        (Choose, "right"): Approve,
        (B, "next"): J,
        (Approve, "approved"): J,
        (J, "next"): Done,
    }


class FanOut(Workflow, unique=U):
    start_at = A
    transitions = {(A, "go"): [B, C], (B, "next"): J, (C, "next"): J, (J, "next"): Done}


class FanOutWithShortcut(Workflow, unique=U):
    # Branchy either goes through X or straight to the join.
    start_at = A
    transitions = {
        (A, "go"): [Branchy, C],
        (Branchy, "long"): X,
        (Branchy, "short"): J,
        (X, "next"): J,
        (C, "next"): J,
        (J, "next"): Done,
    }


class Timed(Workflow, unique=U):
    start_at = Hold
    transitions = {(Hold, "next"): Done, (Hold, "timeout"): Done}


class WaitForPayment(Workflow, unique=U):
    start_at = A
    transitions = {
        (A, "go"): (WaitForEvent, {"event_name": "paid", "timeout": 60}),
        (WaitForEvent, "received"): Done,
        (WaitForEvent, "timeout"): Done,
    }


class WaitNoTimeout(Workflow, unique=U):
    start_at = WaitForEvent
    transitions = {(WaitForEvent, "received"): Done}


Triage = make_step("Triage", "routed")
FastTrack = make_step("FastTrack", "next")
Standard = make_step("Standard", "next")


class Routed(Workflow, unique=U):
    start_at = Triage
    transitions = {(FastTrack, "next"): Done, (Standard, "next"): Done}

    @route(Triage, "routed", targets=[FastTrack, Standard])
    def triage(context: Context) -> Any:
        priority = context.initial["priority"]  # a KeyError without one
        if priority == "rogue":
            return B  # not a declared target
        return FastTrack if priority == "high" else Standard


class StorageCrash(Exception):
    pass


def start(workflow: type[Workflow], context: dict[str, Any] | None = None) -> Instance:
    inst = Instance.new(workflow, context or {}, id="test::1", run_id="run-1", now=T0)
    return advance(inst, workflow=workflow, at=T0)


def result(
    inst: Instance, workflow: type[Workflow], step: str, res: Any, attempt: int = 1, t: float = 1
) -> Decision:
    return apply_result(inst, step, res, attempt=attempt, at=at(t), workflow=workflow)


def done(inst: Instance, workflow: type[Workflow], step: str, event: str) -> Instance:
    decision = result(inst, workflow, step, Complete(event))
    assert decision.outcome == "completed", decision
    return decision.instance


def parked(inst: Instance, workflow: type[Workflow], step: str) -> Instance:
    decision = result(inst, workflow, step, Suspend())
    assert decision.outcome == "parked", decision
    return decision.instance


# -- ErrorRecord.from_exception -------------------------------------------------------------------


def test_error_record_from_exception_names_the_class_like_the_runtime_does() -> None:
    builtin = ErrorRecord.from_exception("crash", "a", KeyError("sku"), 3)
    assert builtin == ErrorRecord(
        kind="crash", message="'sku'", step="a", exception_type="KeyError", attempt=3
    )
    custom = ErrorRecord.from_exception("definition", None, StorageCrash("disk on fire"))
    assert custom.exception_type == f"{__name__}.StorageCrash"
    assert custom.message == "disk on fire"
    assert custom.attempt is None
    assert custom.step is None
    # An exception with no message is described by its repr.
    assert ErrorRecord.from_exception("crash", "a", RuntimeError()).message == "RuntimeError()"


# -- apply_result ---------------------------------------------------------------------------------


def test_complete_completes_the_step_and_takes_its_transitions() -> None:
    inst = start(Linear)
    decision = result(inst, Linear, "a", Complete("go", {"n": 1}, metadata={"m": 2}), attempt=3)
    assert decision.outcome == "completed"
    assert (decision.step, decision.event, decision.timers) == ("a", "go", ())
    new = decision.instance
    assert new.active_steps == {"b"}
    assert new.context.steps == {"a": {"n": 1}}
    assert new.runtime_metadata == {"m": 2}
    assert new.execution_history == (
        ExecutionEntry(step="a", event="go", timestamp=at(1), context_updates={"n": 1}, attempt=3),
    )
    # Exactly the composition of the step-level functions.
    composed = complete_step(
        inst, "a", "go", {"n": 1}, {"m": 2}, at=at(1), attempt=3, workflow=Linear
    )
    composed = activate_transitions(composed, "a", "go", at=at(1), workflow=Linear)
    assert new == check_completion(composed, workflow=Linear, at=at(1))


def test_a_bare_event_string_is_a_complete() -> None:
    decision = result(start(Linear), Linear, "a", "go")
    assert decision.outcome == "completed"
    assert decision.event == "go"
    assert decision.instance.active_steps == {"b"}


def test_completing_done_completes_the_run_and_the_outcome_stays_completed() -> None:
    inst = done(done(start(Linear), Linear, "a", "go"), Linear, "b", "next")
    decision = result(inst, Linear, "done", "done", t=5)
    assert decision.outcome == "completed"
    assert decision.event == "done"
    assert decision.instance.status is Status.COMPLETED
    assert decision.instance.updated_at == at(5)


def test_results_for_a_terminal_run_or_a_step_not_running_are_ignored() -> None:
    inst = start(Linear)
    cancelled = cancel(inst)
    waiting = parked(inst, Linear, "a")
    for state, step in [(cancelled, "a"), (waiting, "a"), (inst, "b"), (inst, "nope")]:
        decision = result(state, Linear, step, Complete("go"))
        assert decision == Decision(instance=state, outcome="ignored", step=step)
        assert decision.instance is state
    after = done(inst, Linear, "a", "go")
    assert result(after, Linear, "a", Fail("late")).outcome == "ignored"


def test_an_undeclared_event_fails_the_run() -> None:
    inst = start(Linear)
    decision = result(inst, Linear, "a", Complete("went"), attempt=2)
    assert decision.outcome == "failed"
    assert decision.event is None
    assert decision.step == "a"
    error = decision.instance.error
    assert error is not None
    assert error.kind == "undeclared_event"
    assert (error.step, error.attempt) == ("a", None)
    assert error.exception_type == "hephaestus_trio._errors.UndeclaredEvent"
    assert "'went'" in error.message
    assert "['go']" in error.message
    assert decision.instance.status is Status.FAILED
    assert decision.instance.active_steps == frozenset()
    assert decision.instance.updated_at == at(1)


def test_json_unsafe_updates_fail_the_run_as_a_crash_with_the_attempt() -> None:
    decision = result(start(Linear), Linear, "a", Complete("go", {"when": T0}), attempt=4)
    assert decision.outcome == "failed"
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step, error.attempt) == ("crash", "a", 4)
    assert error.exception_type == "TypeError"
    assert "updates of step 'a'['when']" in error.message


def test_a_route_returning_an_undeclared_target_fails_the_run_as_a_definition_error() -> None:
    decision = result(start(Routed, {"priority": "rogue"}), Routed, "triage", "routed")
    assert decision.outcome == "failed"
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step) == ("definition", "triage")
    assert error.exception_type == "hephaestus_trio._errors.WorkflowDefinitionError"
    assert "route triage" in error.message


def test_a_route_that_raises_fails_the_run_as_a_crash() -> None:
    decision = result(start(Routed), Routed, "triage", "routed", attempt=2)
    assert decision.outcome == "failed"
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step, error.attempt) == ("crash", "triage", 2)
    assert error.exception_type == "KeyError"


def test_suspend_parks_the_step_without_a_timer() -> None:
    decision = result(start(Linear), Linear, "a", Suspend(), t=2)
    assert decision.outcome == "parked"
    assert (decision.step, decision.timers, decision.event) == ("a", (), None)
    assert decision.instance.waiting_steps == {"a"}
    assert decision.instance.status is Status.WAITING
    assert decision.instance.timers == ()
    assert decision.instance.updated_at == at(2)


def test_suspend_after_parks_and_arms_a_timer_in_the_same_state() -> None:
    decision = result(start(Timed), Timed, "hold", Suspend(after=30, event="timeout"), t=2)
    timer = TimerRecord(step="hold", event="timeout", fire_at=at(32))
    assert decision.outcome == "parked"
    assert decision.timers == (timer,)
    assert decision.instance.timers == (timer,)
    assert decision.instance.waiting_steps == {"hold"}


def test_suspend_after_with_an_undeclared_timer_event_fails_the_run() -> None:
    decision = result(start(Linear), Linear, "a", Suspend(after=5, event="timeout"))
    assert decision.outcome == "failed"
    assert decision.timers == ()
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step) == ("undeclared_event", "a")
    assert "'timeout'" in error.message


def test_the_timer_event_is_checked_against_the_steps_config() -> None:
    # WaitForEvent declares "timeout" only when its config has a timeout.
    inst = done(start(WaitForPayment), WaitForPayment, "a", "go")
    armed = result(inst, WaitForPayment, "wait_for_event", Suspend(after=60, event="timeout"))
    assert armed.outcome == "parked"
    assert armed.timers[0].fire_at == at(61)
    bare = result(start(WaitNoTimeout), WaitNoTimeout, "wait_for_event", Suspend(after=60))
    assert bare.outcome == "failed"
    assert bare.instance.error is not None
    assert bare.instance.error.kind == "undeclared_event"


def test_fail_fails_the_run_with_the_reason() -> None:
    decision = result(start(Linear), Linear, "a", Fail("card declined"), attempt=2)
    assert decision.outcome == "failed"
    assert decision.step == "a"
    assert decision.instance.error == ErrorRecord(kind="failure", message="card declined", step="a")
    assert decision.instance.status is Status.FAILED


# -- apply_crash ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("timed_out", "kind"), [(False, "crash"), (True, "timeout")])
def test_a_crash_past_the_retry_budget_fails_the_run(timed_out: bool, kind: str) -> None:
    inst = start(Linear)
    exc = StorageCrash("disk on fire")
    decision = apply_crash(inst, "a", exc, attempt=3, timed_out=timed_out, at=at(4))
    assert decision.outcome == "failed"
    assert decision.step == "a"
    assert decision.instance.error == ErrorRecord(
        kind=kind,
        message="disk on fire",
        step="a",
        exception_type=f"{__name__}.StorageCrash",
        attempt=3,
    )
    assert decision.instance.updated_at == at(4)


def test_a_crash_of_a_terminal_run_is_ignored() -> None:
    inst = cancel(start(Linear))
    decision = apply_crash(inst, "a", KeyError("x"), attempt=1, timed_out=False, at=at(1))
    assert decision.outcome == "ignored"
    assert decision.instance is inst


# -- apply_resume and apply_timer -----------------------------------------------------------------


def test_a_resume_completes_the_parked_step_with_its_payload_and_wakeup() -> None:
    inst = parked(start(Linear), Linear, "a")
    decision = apply_resume(inst, "a", "go", {"by": "ops"}, at=at(3), workflow=Linear, wakeup=7)
    assert decision.outcome == "completed"
    assert (decision.step, decision.event) == ("a", "go")
    new = decision.instance
    assert new.context.steps == {"a": {"by": "ops"}}
    assert new.execution_history[-1] == ExecutionEntry(
        step="a", event="go", timestamp=at(3), context_updates={"by": "ops"}, wakeup=7
    )
    assert new.active_steps == {"b"}
    assert new.status is Status.RUNNING


def test_a_resume_without_payload_stores_no_updates() -> None:
    inst = parked(start(Linear), Linear, "a")
    decision = apply_resume(inst, "a", "go", at=at(3), workflow=Linear)
    assert decision.instance.context.steps == {}
    assert decision.instance.execution_history[-1].context_updates is None
    assert decision.instance.execution_history[-1].wakeup is None


def test_a_resume_maps_the_event_name_of_wait_for_event() -> None:
    inst = done(start(WaitForPayment), WaitForPayment, "a", "go")
    inst = parked(inst, WaitForPayment, "wait_for_event")
    decision = apply_resume(inst, "wait_for_event", "paid", at=at(3), workflow=WaitForPayment)
    assert decision.outcome == "completed"
    assert decision.event == "received"
    assert decision.instance.execution_history[-1].event == "received"
    assert decision.instance.active_steps == {"done"}


def test_a_resume_with_an_event_the_step_does_not_accept_fails_the_run() -> None:
    inst = parked(start(Linear), Linear, "a")
    decision = apply_resume(inst, "a", "nope", at=at(3), workflow=Linear, wakeup=2)
    assert decision.outcome == "failed"
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step) == ("undeclared_event", "a")
    assert "'nope'" in error.message


def test_a_resume_for_a_step_that_is_not_parked_is_ignored_not_failed() -> None:
    inst = start(Linear)
    pending = Instance.new(Linear, {}, id="test::1", run_id="run-1", now=T0)
    finished = cancel(parked(inst, Linear, "a"))
    for state, step in [(inst, "a"), (inst, "b"), (pending, "a"), (finished, "a")]:
        decision = apply_resume(state, step, "go", at=at(3), workflow=Linear)
        assert decision == Decision(instance=state, outcome="ignored", step=step)


def test_a_resume_after_its_route_crashes_fails_the_run() -> None:
    Wait1 = make_step("Wait1", "routed")

    class Routed2(Workflow, unique=U):
        start_at = Wait1
        transitions = {(FastTrack, "next"): Done}

        @route(Wait1, "routed", targets=[FastTrack])
        def pick(context: Context) -> Any:
            raise RuntimeError("route blew up")

    inst = parked(start(Routed2), Routed2, "wait1")
    decision = apply_resume(inst, "wait1", "routed", at=at(3), workflow=Routed2)
    assert decision.outcome == "failed"
    error = decision.instance.error
    assert error is not None
    assert (error.kind, error.step, error.attempt) == ("crash", "wait1", None)
    assert error.message == "route blew up"


def test_a_json_unsafe_payload_is_refused_with_its_path() -> None:
    inst = parked(start(Linear), Linear, "a")
    with pytest.raises(TypeError, match=r"payload of resume 'go'\['when'\]"):
        apply_resume(inst, "a", "go", {"when": T0}, at=at(3), workflow=Linear)


def test_a_timer_completes_its_parked_step_and_drops_its_timers() -> None:
    armed = result(start(Timed), Timed, "hold", Suspend(after=30, event="timeout"))
    (timer,) = armed.timers
    decision = apply_timer(armed.instance, timer, at=at(31), workflow=Timed, wakeup=11)
    assert decision.outcome == "completed"
    assert (decision.step, decision.event) == ("hold", "timeout")
    assert decision.instance.timers == ()
    assert decision.instance.execution_history[-1] == ExecutionEntry(
        step="hold", event="timeout", timestamp=at(31), wakeup=11
    )
    assert decision.instance.active_steps == {"done"}


def test_a_timer_maps_the_event_name_like_a_resume() -> None:
    inst = done(start(WaitForPayment), WaitForPayment, "a", "go")
    inst = parked(inst, WaitForPayment, "wait_for_event")
    record = TimerRecord(step="wait_for_event", event="paid", fire_at=at(9))
    decision = apply_timer(inst, record, at=at(9), workflow=WaitForPayment)
    assert decision.outcome == "completed"
    assert decision.event == "received"


def test_a_timer_for_a_step_no_longer_parked_is_ignored() -> None:
    armed = result(start(Timed), Timed, "hold", Suspend(after=30, event="timeout"))
    (timer,) = armed.timers
    resumed = apply_resume(armed.instance, "hold", "next", at=at(5), workflow=Timed).instance
    decision = apply_timer(resumed, timer, at=at(31), workflow=Timed)
    assert decision.outcome == "ignored"
    assert decision.instance is resumed


# -- apply_cancel and give_up ---------------------------------------------------------------------


def test_cancel_cancels_a_live_run_and_ignores_a_terminal_one() -> None:
    inst = parked(start(Linear), Linear, "a")
    decision = apply_cancel(inst, at=at(8))
    assert decision.outcome == "cancelled"
    assert decision.instance.status is Status.CANCELLED
    assert decision.instance.updated_at == at(8)
    again = apply_cancel(decision.instance, at=at(9))
    assert again.outcome == "ignored"
    assert again.instance is decision.instance


def test_give_up_fails_the_run_with_the_supervisors_message() -> None:
    inst = start(Linear)
    policy = RestartPolicy(max_restarts=3, within=5.0)
    crash = StorageCrash("disk on fire")
    decision = give_up(inst, crash, restarts=3, policy=policy, at=at(6))
    assert decision.outcome == "failed"
    assert decision.instance.error == ErrorRecord(
        kind="restart_limit",
        message=(
            "instance task crashed 4 times; restart intensity max_restarts=3 within=5.0s "
            "exceeded; last error: StorageCrash('disk on fire')"
        ),
        exception_type="StorageCrash",
    )
    assert decision.instance.updated_at == at(6)
    terminal = decision.instance
    assert give_up(terminal, crash, restarts=0, policy=policy, at=at(7)).instance is terminal


# -- can_still_run --------------------------------------------------------------------------------


def test_every_step_can_still_run_in_a_pending_run_and_none_in_a_terminal_one() -> None:
    pending = Instance.new(Exclusive, {}, id="test::1", run_id="run-1", now=T0)
    definition = Exclusive.definition()
    assert can_still_run(pending, definition) == set(definition.steps)
    assert can_still_run(start(Exclusive), definition) == set(definition.steps)
    assert can_still_run(cancel(start(Exclusive)), definition) == frozenset()


def test_completed_steps_can_no_longer_run() -> None:
    inst = done(start(Linear), Linear, "a", "go")
    assert can_still_run(inst, Linear.definition()) == {"b", "done"}


def test_the_branch_not_taken_is_dead() -> None:
    definition = Exclusive.definition()
    left = done(start(Exclusive), Exclusive, "choose", "left")
    assert can_still_run(left, definition) == {"b", "j", "done"}
    right = done(start(Exclusive), Exclusive, "choose", "right")
    assert can_still_run(right, definition) == {"approve", "j", "done"}
    assert can_still_run(done(left, Exclusive, "b", "next"), definition) == {"j", "done"}


def test_a_join_can_still_run_while_a_branch_of_its_fan_out_runs() -> None:
    definition = FanOut.definition()
    inst = done(start(FanOut), FanOut, "a", "go")
    assert can_still_run(inst, definition) == {"b", "c", "j", "done"}
    inst = done(parked(inst, FanOut, "c"), FanOut, "b", "next")
    # j is not active yet (c is parked) but can still run.
    assert inst.active_steps == {"c"}
    assert can_still_run(inst, definition) == {"c", "j", "done"}


def test_a_detour_not_taken_is_dead_and_the_join_is_not() -> None:
    definition = FanOutWithShortcut.definition()
    inst = done(start(FanOutWithShortcut), FanOutWithShortcut, "a", "go")
    assert can_still_run(inst, definition) == {"branchy", "c", "x", "j", "done"}
    short = done(inst, FanOutWithShortcut, "branchy", "short")
    assert can_still_run(short, definition) == {"c", "j", "done"}


def test_a_route_target_not_chosen_is_dead() -> None:
    inst = done(start(Routed, {"priority": "high"}), Routed, "triage", "routed")
    assert can_still_run(inst, Routed.definition()) == {"fast_track", "done"}


# -- choose_resume_step ---------------------------------------------------------------------------


def refused(inst: Instance, workflow: type[Workflow], event: str, **kw: Any) -> str:
    with pytest.raises(InvalidResume) as exc:
        choose_resume_step(inst, workflow, event, **kw)
    assert exc.value.instance_id == inst.id
    assert exc.value.event == event
    return exc.value.reason


def test_the_one_parked_step_that_accepts_the_event_is_chosen() -> None:
    inst = parked(start(Linear), Linear, "a")
    assert choose_resume_step(inst, Linear, "go") == "a"
    assert choose_resume_step(inst, Linear, "go", step="a") == "a"


def test_several_parked_steps_accepting_the_event_are_ambiguous() -> None:
    inst = done(start(FanOut), FanOut, "a", "go")
    inst = parked(parked(inst, FanOut, "b"), FanOut, "c")
    reason = refused(inst, FanOut, "next")
    assert reason == "ambiguous: parked steps ['b', 'c'] all accept it; pass step="
    assert choose_resume_step(inst, FanOut, "next", step="c") == "c"


def test_a_parked_step_wins_over_steps_that_could_accept_it_early() -> None:
    inst = parked(done(start(FanOut), FanOut, "a", "go"), FanOut, "b")
    # c (running) and j (not active yet) also declare "next".
    assert choose_resume_step(inst, FanOut, "next") == "b"


def test_a_running_step_takes_an_early_resume() -> None:
    inst = start(Linear)
    assert choose_resume_step(inst, Linear, "go") == "a"
    assert choose_resume_step(inst, Linear, "go", step="a") == "a"


def test_a_step_not_activated_yet_takes_an_early_resume_with_its_static_config() -> None:
    inst = start(WaitForPayment)
    # "paid" is the event_name of the WaitForEvent's static config.
    assert choose_resume_step(inst, WaitForPayment, "paid") == "wait_for_event"
    assert choose_resume_step(inst, WaitForPayment, "paid", step="wait_for_event") == (
        "wait_for_event"
    )
    assert choose_resume_step(inst, WaitForPayment, "timeout") == "wait_for_event"


def test_several_steps_that_could_take_it_early_are_ambiguous() -> None:
    inst = done(start(FanOut), FanOut, "a", "go")
    reason = refused(inst, FanOut, "next")
    assert reason == "ambiguous: steps ['b', 'c', 'j'] can still run and all accept it; pass step="


def test_a_step_on_a_dead_branch_is_refused() -> None:
    inst = done(start(Exclusive), Exclusive, "choose", "left")
    reason = refused(inst, Exclusive, "approved", step="approve")
    assert reason == "step 'approve' cannot still run (it is on a branch not taken)"
    reason = refused(inst, Exclusive, "approved")
    assert reason == "no step that can still run declares 'approved' (parked: {})"


def test_a_completed_step_is_refused() -> None:
    inst = done(start(Linear), Linear, "a", "go")
    reason = refused(inst, Linear, "go", step="a")
    assert reason == "step 'a' cannot still run (it is completed)"


def test_an_event_no_step_accepts_is_refused_naming_the_parked_steps() -> None:
    inst = parked(start(Linear), Linear, "a")
    reason = refused(inst, Linear, "nope")
    assert reason == "no step that can still run declares 'nope' (parked: {'a': ['go']})"
    reason = refused(inst, Linear, "nope", step="a")
    assert reason == "step 'a' does not declare 'nope' (it declares ['go'])"


def test_an_unknown_step_is_refused_naming_the_known_ones() -> None:
    reason = refused(start(Linear), Linear, "go", step="zzz")
    assert reason.startswith("Linear has no step 'zzz'")
    assert "['a', 'b', 'done']" in reason


def test_a_step_with_a_pending_resume_is_refused() -> None:
    inst = parked(start(Linear), Linear, "a")
    reason = refused(inst, Linear, "go", pending_steps={"a"})
    assert reason == "step 'a' already has a pending resume"
    reason = refused(inst, Linear, "go", step="a", pending_steps=["a"])
    assert reason == "step 'a' already has a pending resume"
    # Another step's pending resume does not matter.
    assert choose_resume_step(inst, Linear, "go", pending_steps={"b"}) == "a"


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_a_terminal_run_is_refused(end: str) -> None:
    inst = start(Linear)
    if end == "completed":
        inst = done(
            done(done(inst, Linear, "a", "go"), Linear, "b", "next"), Linear, "done", "done"
        )
    elif end == "failed":
        inst = result(inst, Linear, "a", Fail("boom")).instance
    else:
        inst = cancel(inst)
    assert refused(inst, Linear, "go") == f"the instance is {end}"
    assert refused(inst, Linear, "go", step="a") == f"the instance is {end}"


def test_a_plain_suspend_is_exactly_park() -> None:
    inst = start(Linear)
    assert parked(inst, Linear, "a") == park(inst, "a", at=at(1))
