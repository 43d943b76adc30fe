"""The pure engine functions on small hand-written workflows.

``finish`` plays one step completion the way the running engine does:
``complete_step``, then ``activate_transitions``, then ``check_completion``.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hephaestus_trio import (
    Context,
    Done,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    InvalidResume,
    NotCancellable,
    Status,
    Step,
    TimerRecord,
    UndeclaredEvent,
    Unique,
    WaitForEvent,
    Workflow,
    route,
)
from hephaestus_trio.engine import (
    StepNotActive,
    activate_transitions,
    add_timer,
    advance,
    cancel,
    check_completion,
    complete_step,
    fail,
    park,
    ready_steps,
    remove_timer,
    resume_step,
)
from hephaestus_trio.serialization import dumps

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
U = Unique(key="test")


def make_step(name: str, *events: str, **namespace: Any) -> type[Step]:
    return type(name, (Step,), {"events": events, **namespace})


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def start(workflow: type[Workflow], context: dict[str, Any] | None = None) -> Instance:
    inst = Instance.new(workflow, context or {}, id="test::1", run_id="run-1", now=T0)
    return advance(inst)


def finish(
    inst: Instance, step: str, event: str, updates: dict[str, Any] | None = None, **kw: Any
) -> Instance:
    done = complete_step(inst, step, event, updates, **kw)
    moved = activate_transitions(done, step, event, at=kw.get("at"))
    return check_completion(moved)


A = make_step("A", "go")
B = make_step("B", "next")
C = make_step("C", "next")
J = make_step("J", "next")
X = make_step("X", "next")
Choose = make_step("Choose", "left", "right")
Branchy = make_step("Branchy", "long", "short")


class Linear(Workflow, unique=U):
    start_at = A
    transitions = {(A, "go"): B, (B, "next"): Done}


class Exclusive(Workflow, unique=U):
    start_at = Choose
    transitions = {
        (Choose, "left"): B,
        (Choose, "right"): C,
        (B, "next"): J,
        (C, "next"): J,
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


# -- starting -----------------------------------------------------------------------------


def test_new_builds_a_pending_run() -> None:
    inst = Instance.new(Linear, {"n": 1}, id="test::1", run_id="run-1", now=T0)
    assert inst.status is Status.PENDING
    assert inst.workflow == Linear.name
    assert inst.workflow_version == 1
    assert inst.context == Context(initial={"n": 1}, steps={})
    assert inst.active_steps == inst.completed_steps == frozenset()
    assert inst.created_at == inst.updated_at == T0
    assert inst.execution_history == ()


def test_advance_activates_the_start_step() -> None:
    inst = Instance.new(Linear, {}, id="test::1", run_id="run-1", now=T0)
    started = advance(inst, at=at(1))
    assert started.status is Status.RUNNING
    assert started.active_steps == {"a"}
    assert started.running_steps == {"a"}
    assert started.updated_at == at(1)
    # pure: the argument is untouched
    assert inst.status is Status.PENDING


def test_advance_leaves_terminal_runs_alone() -> None:
    inst = cancel(start(Linear))
    assert advance(inst) is inst


# -- shapes ---------------------------------------------------------------------------------


def test_linear_workflow_runs_to_completion() -> None:
    inst = start(Linear)
    inst = finish(inst, "a", "go")
    assert inst.active_steps == {"b"}
    assert inst.completed_steps == {"a"}
    assert inst.status is Status.RUNNING
    inst = finish(inst, "b", "next")
    assert inst.active_steps == {"done"}
    inst = finish(inst, "done", "done")
    assert inst.status is Status.COMPLETED
    assert inst.active_steps == frozenset()
    assert [e.step for e in inst.execution_history] == ["a", "b", "done"]


def test_branching_takes_only_the_chosen_branch() -> None:
    inst = finish(start(Exclusive), "choose", "right")
    assert inst.active_steps == {"c"}
    inst = finish(inst, "c", "next")
    assert inst.active_steps == {"j"}
    inst = finish(finish(inst, "j", "next"), "done", "done")
    assert inst.status is Status.COMPLETED
    assert "b" not in inst.completed_steps


def test_join_after_exclusive_branches_is_not_blocked_by_the_dead_branch() -> None:
    # Dead-path elimination: B was never taken, so J does not wait for it.
    inst = finish(start(Exclusive), "choose", "left")
    assert inst.active_steps == {"b"}
    inst = finish(inst, "b", "next")
    assert inst.active_steps == {"j"}
    definition = Exclusive.definition()
    assert ready_steps(inst, definition) == frozenset()


def test_fan_out_activates_every_branch_and_the_join_waits_for_all() -> None:
    inst = finish(start(FanOut), "a", "go")
    assert inst.active_steps == {"b", "c"}
    inst = finish(inst, "b", "next")
    assert inst.active_steps == {"c"}
    assert "j" not in inst.active_steps
    inst = finish(inst, "c", "next")
    assert inst.active_steps == {"j"}
    inst = finish(finish(inst, "j", "next"), "done", "done")
    assert inst.status is Status.COMPLETED


def test_join_waits_for_live_branches_but_not_for_dead_ones() -> None:
    inst = finish(start(FanOutWithShortcut), "a", "go")
    inst = finish(inst, "branchy", "short")
    # C can still run: the join waits for it.
    assert inst.active_steps == {"c"}
    inst = finish(inst, "c", "next")
    # X is dead (Branchy chose "short"), so the join is ready.
    assert inst.active_steps == {"j"}
    inst = finish(finish(inst, "j", "next"), "done", "done")
    assert inst.status is Status.COMPLETED
    assert "x" not in inst.completed_steps


def test_join_waits_for_a_live_detour() -> None:
    inst = finish(start(FanOutWithShortcut), "a", "go")
    inst = finish(inst, "c", "next")
    inst = finish(inst, "branchy", "long")
    assert inst.active_steps == {"x"}
    inst = finish(inst, "x", "next")
    assert inst.active_steps == {"j"}


def test_done_only_workflow_completes() -> None:
    class JustDone(Workflow, unique=U):
        start_at = Done

    inst = start(JustDone)
    assert inst.active_steps == {"done"}
    assert finish(inst, "done", "done").status is Status.COMPLETED


# -- parking ---------------------------------------------------------------------------------


def test_waiting_exactly_when_every_active_step_is_parked() -> None:
    inst = finish(start(FanOut), "a", "go")
    inst = park(inst, "b")
    assert inst.waiting_steps == {"b"}
    assert inst.status is Status.RUNNING  # c is still running
    assert inst.running_steps == {"c"}
    inst = park(inst, "c")
    assert inst.waiting_steps == {"b", "c"}
    assert inst.status is Status.WAITING
    assert inst.running_steps == frozenset()


def test_several_parked_steps_resume_independently() -> None:
    inst = park(park(finish(start(FanOut), "a", "go"), "b"), "c")
    inst = resume_step(inst, "c", "next", at=at(5))
    assert inst.waiting_steps == {"b"}
    assert inst.active_steps == {"b"}
    assert inst.status is Status.WAITING
    inst = resume_step(inst, "b", "next", at=at(6))
    assert inst.active_steps == {"j"}
    assert inst.waiting_steps == frozenset()
    assert inst.status is Status.RUNNING


def test_a_parked_branch_does_not_stall_the_other_branch() -> None:
    inst = park(finish(start(FanOut), "a", "go"), "b")
    inst = finish(inst, "c", "next")
    assert inst.completed_steps == {"a", "c"}
    assert inst.status is Status.WAITING
    inst = resume_step(inst, "b", "next")
    assert inst.active_steps == {"j"}


def test_park_needs_an_active_step() -> None:
    inst = start(Linear)
    with pytest.raises(StepNotActive, match="'b'"):
        park(inst, "b")


def test_park_can_arm_a_timer_and_completion_drops_it() -> None:
    timer = TimerRecord(step="a", event="go", fire_at=at(30))
    inst = park(start(Linear), "a", timer=timer)
    assert inst.timers == (timer,)
    inst = resume_step(inst, "a", "go")
    assert inst.timers == ()


def test_add_and_remove_timer() -> None:
    inst = park(start(Linear), "a")
    timer = TimerRecord(step="a", event="go", fire_at=at(10))
    armed = add_timer(inst, timer)
    assert armed.timers == (timer,)
    assert remove_timer(armed, timer).timers == ()
    assert remove_timer(inst, timer).timers == ()
    with pytest.raises(InvalidResume, match="not parked"):
        add_timer(start(Linear), timer)


# -- resume -----------------------------------------------------------------------------------


def test_resume_of_a_step_that_is_not_parked_is_invalid() -> None:
    inst = start(Linear)
    with pytest.raises(InvalidResume, match=r"step 'a' is not parked") as exc:
        resume_step(inst, "a", "go")
    assert exc.value.instance_id == "test::1"
    assert exc.value.event == "go"
    with pytest.raises(InvalidResume, match="'b' is not parked"):
        resume_step(inst, "b", "next")


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_resume_of_a_terminal_run_is_invalid(end: str) -> None:
    inst = park(start(Linear), "a")
    if end == "completed":
        inst = finish(finish(resume_step(inst, "a", "go"), "b", "next"), "done", "done")
    elif end == "failed":
        inst = fail(inst, "boom")
    else:
        inst = cancel(inst)
    assert inst.status.value == end
    with pytest.raises(InvalidResume, match=end):
        resume_step(inst, "a", "go")


def test_resume_with_an_undeclared_event_is_rejected_and_changes_nothing() -> None:
    inst = park(start(Linear), "a")
    before = dumps(inst)
    with pytest.raises(UndeclaredEvent) as exc:
        resume_step(inst, "a", "nope")
    assert (exc.value.step, exc.value.event, exc.value.declared) == ("a", "nope", ("go",))
    assert dumps(inst) == before
    assert inst.waiting_steps == {"a"}


class WaitForPayment(Workflow, unique=U):
    start_at = A
    transitions = {
        (A, "go"): (WaitForEvent, {"event_name": "payment_confirmed"}),
        (WaitForEvent, "received"): Done,
    }


class WaitWithTimeout(Workflow, unique=U):
    start_at = (WaitForEvent, {"timeout": 30})
    transitions = {
        (WaitForEvent, "received"): B,
        (WaitForEvent, "timeout"): Done,
        (B, "next"): Done,
    }


def test_wait_for_event_accepts_its_event_name_as_received() -> None:
    inst = park(finish(start(WaitForPayment), "a", "go"), "wait_for_event")
    assert inst.step_configs == {"wait_for_event": {"event_name": "payment_confirmed"}}
    resumed = resume_step(inst, "wait_for_event", "payment_confirmed", at=at(9))
    assert resumed.execution_history[-1].step == "wait_for_event"
    assert resumed.execution_history[-1].event == "received"
    assert resumed.active_steps == {"done"}
    # "received" itself is accepted too; other names are not
    assert resume_step(inst, "wait_for_event", "received").active_steps == {"done"}
    with pytest.raises(UndeclaredEvent, match="payment_failed"):
        resume_step(inst, "wait_for_event", "payment_failed")


def test_wait_for_event_timeout_is_an_event_only_with_a_timeout() -> None:
    inst = park(start(WaitWithTimeout), "wait_for_event")
    assert resume_step(inst, "wait_for_event", "timeout").active_steps == {"done"}
    assert resume_step(inst, "wait_for_event", "received").active_steps == {"b"}
    parked = park(finish(start(WaitForPayment), "a", "go"), "wait_for_event")
    with pytest.raises(UndeclaredEvent, match="timeout"):
        resume_step(parked, "wait_for_event", "timeout")


# -- completion errors ----------------------------------------------------------------------------


def test_undeclared_event_is_rejected_and_the_instance_is_unchanged() -> None:
    inst = start(Linear)
    before = dumps(inst)
    with pytest.raises(UndeclaredEvent, match=r"'a'.*'went'.*\['go'\]") as exc:
        complete_step(inst, "a", "went")
    assert exc.value.declared == ("go",)
    assert dumps(inst) == before


def test_completing_a_step_that_is_not_active_fails() -> None:
    inst = start(Linear)
    with pytest.raises(StepNotActive, match="'b' is not active"):
        complete_step(inst, "b", "next")
    with pytest.raises(StepNotActive, match="'a' has not completed"):
        activate_transitions(inst, "a", "go")
    done = finish(inst, "a", "go")
    with pytest.raises(StepNotActive, match="'a' is not active"):
        complete_step(done, "a", "go")


def test_json_unsafe_updates_are_rejected() -> None:
    inst = start(Linear)
    with pytest.raises(TypeError, match=r"updates of step 'a'\['when'\]"):
        complete_step(inst, "a", "go", {"when": T0})
    with pytest.raises(TypeError, match=r"metadata of step 'a'\['ids'\]"):
        complete_step(inst, "a", "go", metadata={"ids": (1, 2)})


# -- history, updates, metadata --------------------------------------------------------------------


def test_every_completion_is_recorded_in_the_history() -> None:
    inst = start(Linear)
    inst = finish(inst, "a", "go", {"checked": True}, at=at(1), attempt=3)
    inst = park(inst, "b", at=at(2))
    inst = resume_step(inst, "b", "next", at=at(3))
    inst = finish(inst, "done", "done", at=at(4))
    assert inst.execution_history == (
        ExecutionEntry(
            step="a", event="go", timestamp=at(1), context_updates={"checked": True}, attempt=3
        ),
        ExecutionEntry(step="b", event="next", timestamp=at(3)),
        ExecutionEntry(step="done", event="done", timestamp=at(4)),
    )
    assert inst.updated_at == at(4)


def test_updates_land_under_the_step_key_and_metadata_is_merged() -> None:
    inst = start(Linear, {"order": 7})
    inst = finish(inst, "a", "go", {"valid": True}, metadata={"trace": "t1"})
    inst = finish(inst, "b", "next", {"shipped": 2}, metadata={"carrier": "ups"})
    assert inst.context.initial == {"order": 7}
    assert inst.context.steps == {"a": {"valid": True}, "b": {"shipped": 2}}
    assert inst.runtime_metadata == {"trace": "t1", "carrier": "ups"}


# -- routes and configs -------------------------------------------------------------------------


Triage = make_step("Triage", "routed")
FastTrack = make_step("FastTrack", "next")
Standard = make_step("Standard", "next")
Configured = make_step("Configured", "next")


class Routed(Workflow, unique=U):
    start_at = Triage
    transitions = {(FastTrack, "next"): Done, (Standard, "next"): Done}

    @route(Triage, "routed", targets=[FastTrack, (Standard, {"tier": 2})])
    def triage(context: Context) -> Any:
        priority = context.initial["priority"]
        if priority == "both":
            return [FastTrack, Standard]
        return FastTrack if priority == "high" else Standard


@pytest.mark.parametrize(("priority", "chosen"), [("high", "fast_track"), ("low", "standard")])
def test_route_picks_one_of_its_targets(priority: str, chosen: str) -> None:
    inst = finish(start(Routed, {"priority": priority}), "triage", "routed")
    assert inst.active_steps == {chosen}
    inst = finish(inst, chosen, "next")
    # the other target is dead, so Done does not wait for it
    assert inst.active_steps == {"done"}
    assert finish(inst, "done", "done").status is Status.COMPLETED


def test_route_target_config_is_given_to_the_step() -> None:
    inst = finish(start(Routed, {"priority": "low"}), "triage", "routed")
    assert inst.step_configs == {"standard": {"tier": 2}}
    inst = finish(inst, "standard", "next")
    assert inst.step_configs == {}


def test_route_may_fan_out_to_several_declared_targets() -> None:
    inst = finish(start(Routed, {"priority": "both"}), "triage", "routed")
    assert inst.active_steps == {"fast_track", "standard"}
    inst = finish(inst, "fast_track", "next")
    assert inst.active_steps == {"standard"}
    inst = finish(inst, "standard", "next")
    assert inst.active_steps == {"done"}


class ConfiguredFlow(Workflow, unique=U):
    start_at = (A, {"strict": True})
    transitions = {(A, "go"): (Configured, {"limit": 3}), (Configured, "next"): Done}


def test_configs_live_in_step_configs_while_the_step_is_active() -> None:
    inst = start(ConfiguredFlow)
    assert inst.step_configs == {"a": {"strict": True}}
    inst = finish(inst, "a", "go")
    assert inst.step_configs == {"configured": {"limit": 3}}
    inst = park(inst, "configured")
    assert inst.step_configs == {"configured": {"limit": 3}}
    inst = resume_step(inst, "configured", "next")
    assert inst.step_configs == {}


# -- terminal transitions ------------------------------------------------------------------------


def test_cancel_stops_everything() -> None:
    timer = TimerRecord(step="b", event="next", fire_at=at(60))
    inst = park(finish(start(FanOut), "a", "go"), "b", timer=timer)
    cancelled = cancel(inst, at=at(2))
    assert cancelled.status is Status.CANCELLED
    assert cancelled.active_steps == cancelled.waiting_steps == frozenset()
    assert cancelled.timers == ()
    assert cancelled.step_configs == {}
    assert cancelled.completed_steps == {"a"}
    assert cancelled.updated_at == at(2)


@pytest.mark.parametrize("end", ["completed", "failed", "cancelled"])
def test_cancel_of_a_terminal_run_raises_not_cancellable(end: str) -> None:
    inst = start(Linear)
    if end == "completed":
        inst = finish(finish(finish(inst, "a", "go"), "b", "next"), "done", "done")
    elif end == "failed":
        inst = fail(inst, "boom")
    else:
        inst = cancel(inst)
    before = dumps(inst)
    with pytest.raises(NotCancellable, match=end) as exc:
        cancel(inst)
    assert exc.value.status == end
    assert exc.value.instance_id == "test::1"
    assert dumps(inst) == before


def test_fail_records_the_reason() -> None:
    inst = park(finish(start(FanOut), "a", "go"), "b")
    failed = fail(inst, "card declined", step="c", at=at(3))
    assert failed.status is Status.FAILED
    assert failed.error == ErrorRecord(kind="failure", message="card declined", step="c")
    assert "card declined" in str(failed.error)
    assert failed.active_steps == failed.waiting_steps == frozenset()
    assert failed.timers == ()
    # the first terminal status wins
    assert fail(failed, "again") is failed
    assert fail(cancel(inst), "late").status is Status.CANCELLED


def test_fail_accepts_an_error_record() -> None:
    record = ErrorRecord(kind="crash", message="boom", step="a", exception_type="builtins.KeyError")
    failed = fail(start(Linear), record)
    assert failed.error == record
    assert str(failed.error) == "crash in step 'a': boom (builtins.KeyError)"


def test_check_completion() -> None:
    pending = Instance.new(Linear, {}, id="test::1", run_id="run-1", now=T0)
    assert check_completion(pending) is pending
    running = start(Linear)
    assert check_completion(running) is running
    # nothing active and Done completed: completed
    done = complete_step(finish(finish(running, "a", "go"), "b", "next"), "done", "done")
    assert done.status is Status.RUNNING
    assert check_completion(done).status is Status.COMPLETED
    # nothing active and Done never ran: the run cannot move; it fails as stalled
    stalled = complete_step(running, "a", "go")
    assert stalled.active_steps == frozenset()
    result = check_completion(stalled)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert result.error.kind == "stalled"


def test_pure_engine_functions_refuse_terminal_runs() -> None:
    inst = cancel(start(Linear))
    with pytest.raises(StepNotActive, match="cancelled"):
        complete_step(inst, "a", "go")
    with pytest.raises(StepNotActive, match="cancelled"):
        park(inst, "a")


# -- context safety ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({"when": T0}, "context['when']"),
        ({"order": {"items": (1, 2)}}, "context['order']['items']"),
        ({"tags": {"a", "b"}}, "context['tags']"),
        ({"lines": [1, {"qty": math.inf}]}, "context['lines'][1]['qty']"),
        ({"ids": {3: "x"}}, "context['ids'] has key 3"),
        ({"blob": b"raw"}, "context['blob']"),
    ],
)
def test_json_unsafe_context_is_rejected_naming_the_key_path(
    context: dict[str, Any], path: str
) -> None:
    with pytest.raises(TypeError) as exc:
        Instance.new(Linear, context, id="test::1")
    assert path in str(exc.value)


def test_json_safe_context_is_accepted() -> None:
    context = {"a": [1, 2.5, "x", None, True, {"b": []}], "c": {}}
    assert Instance.new(Linear, context, id="test::1").context.initial == context
