"""Decisions: what one input (a step result, a resume, a timer, a crash) does to a run.

The running engine and ``hephaestus_trio.testing.run_script`` both turn
inputs into new states. Each input needs the same few choices made around
the pure engine functions: is it still relevant, which event does it
deliver, which failure does a bad one cause, which timer does a park arm.
Those choices live here, once, as pure functions (no Trio, no I/O, no
clock: the caller passes ``at=``), so the property tests that drive
``run_script`` exercise the very code the runtime runs.

Every ``apply_*`` function returns a ``Decision``: the state to persist and a
one-word ``outcome``. ``"ignored"`` means the input no longer applies (the run
is terminal, or the step is not in the state the input needs); the instance
is then returned as is. Failures caused by the input itself (an undeclared
event, JSON-unsafe updates, a route that raises) are deterministic, so they
fail the run instead of raising: retrying could never help.

Early resumes. A resume may be accepted for a step that has not parked yet,
as long as the step can still run (``can_still_run``): it is kept until the
step parks, and ``apply_resume`` reports ``"ignored"`` until then. Once the
step can no longer run (it completed some other way, or its branch died),
the caller drops it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal, TypeAlias, final

import attrs

from .._errors import DefinitionMismatch, HephaestusError, InvalidResume, UndeclaredEvent
from ._engine import (
    _dead_checker,
    _transition,
    cancel,
    fail,
    park,
)
from ._graph import Definition
from ._instance import (
    FAILED_ATTEMPT,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    TimerRecord,
    format_traceback,
)
from ._json import check_json_safe
from ._policies import RestartPolicy
from ._step import Complete, Fail, StepResult, Suspend
from ._workflow import Workflow

__all__ = [
    "Decision",
    "Outcome",
    "apply_attempt_failure",
    "apply_cancel",
    "apply_crash",
    "apply_result",
    "apply_resume",
    "apply_timer",
    "can_still_run",
    "check_definition",
    "choose_resume_step",
    "give_up",
    "next_attempt",
]

Outcome: TypeAlias = Literal["completed", "parked", "failed", "cancelled", "retrying", "ignored"]
"""What an input did to the run (see ``Decision.outcome``)."""


@final
@attrs.frozen(kw_only=True)
class Decision:
    """The result of applying one input to a run: the state to persist, and why."""

    instance: Instance
    """The new state to persist (the argument itself when ``outcome == "ignored"``)."""
    outcome: Outcome
    """``completed`` (the step completed; the run may have completed too: read
    ``instance.status``), ``parked``, ``failed``, ``cancelled``, ``retrying``
    (a failed attempt was recorded; the step runs again) or ``ignored`` (the
    input no longer applies; nothing to write)."""
    timers: tuple[TimerRecord, ...] = ()
    """Timer records to add in the same write (a ``Suspend(after=...)`` park)."""
    event: str | None = None
    """For ``completed``: the event that completed the step, after mapping
    (a ``WaitForEvent``'s ``event_name`` is delivered as ``"received"``)."""
    step: str | None = None
    """The step the input was for, if any."""


def _ignored(inst: Instance, step: str | None = None) -> Decision:
    return Decision(instance=inst, outcome="ignored", step=step)


def _failed(inst: Instance, error: ErrorRecord, at: datetime, step: str | None) -> Decision:
    return Decision(instance=fail(inst, error, at=at), outcome="failed", step=step)


def _undeclared(
    inst: Instance, step: str, event: str, declared: tuple[str, ...], at: datetime
) -> Decision:
    exc = UndeclaredEvent(step, event, declared)
    error = ErrorRecord.from_exception("undeclared_event", step, exc, with_traceback=False)
    return _failed(inst, error, at, step)


def _complete(
    inst: Instance,
    step: str,
    event: str,
    updates: Mapping[str, Any] | None,
    metadata: Mapping[str, Any] | None,
    *,
    attempt: int,
    crash_attempt: int | None,
    wakeup: int | None,
    at: datetime,
    workflow: type[Workflow],
) -> Decision:
    """Complete ``step`` with ``event``, take its transitions and settle; a bad input fails."""
    try:
        # complete_step + activate_transitions + check_completion, one Instance.
        new = _transition(
            inst,
            step,
            event,
            updates,
            metadata,
            at=at,
            attempt=attempt,
            wakeup=wakeup,
            workflow=workflow,
        )
    except UndeclaredEvent as exc:
        error = ErrorRecord.from_exception("undeclared_event", step, exc, with_traceback=False)
        return _failed(inst, error, at, step)
    except HephaestusError as exc:
        # A route returned a target it does not declare (WorkflowDefinitionError).
        error = ErrorRecord.from_exception("definition", step, exc, with_traceback=False)
        return _failed(inst, error, at, step)
    except Exception as exc:
        # JSON-unsafe updates or a route function that raised: deterministic,
        # so the run fails rather than retrying something that cannot succeed.
        error = ErrorRecord.from_exception("crash", step, exc, crash_attempt)
        return _failed(inst, error, at, step)
    return Decision(instance=new, outcome="completed", event=event, step=step)


def apply_result(
    inst: Instance,
    step: str,
    result: StepResult,
    *,
    attempt: int,
    at: datetime,
    workflow: type[Workflow],
) -> Decision:
    """Apply what running ``step`` returned (its ``attempt``-th attempt).

    * ``Complete`` (or a bare event string): complete the step, take its
      transitions, check completion -> ``completed``. An undeclared event
      fails the run (``kind="undeclared_event"``), a route returning an
      undeclared target too (``"definition"``), and any other exception
      (JSON-unsafe updates, a route that raised) fails it with ``"crash"``
      and ``attempt`` -> ``failed``.
    * ``Suspend()``: park the step -> ``parked``. With ``after=s`` the step
      must declare ``event`` (else ``undeclared_event`` -> ``failed``); the
      timer due at ``at + s`` is armed in the new state and returned in
      ``Decision.timers``.
    * ``Fail(reason)``: fail the run (``kind="failure"``) -> ``failed``.

    A terminal run, or a step that is not running (parked, completed, never
    activated), gives ``ignored``.
    """
    if inst.is_terminal or step not in inst.running_steps:
        return _ignored(inst, step)
    if isinstance(result, str):
        result = Complete(result)
    if isinstance(result, Complete):
        return _complete(
            inst,
            step,
            result.event,
            result.updates,
            result.metadata,
            attempt=attempt,
            crash_attempt=attempt,
            wakeup=None,
            at=at,
            workflow=workflow,
        )
    if isinstance(result, Suspend):
        if result.after is None:
            return Decision(instance=park(inst, step, at=at), outcome="parked", step=step)
        step_cls = workflow.definition().steps[step]
        declared = step_cls.declared_events(inst.step_configs.get(step))
        if result.event not in declared:
            return _undeclared(inst, step, result.event, declared, at)
        timer = TimerRecord(
            step=step, event=result.event, fire_at=at + timedelta(seconds=result.after)
        )
        return Decision(
            instance=park(inst, step, timer=timer, at=at),
            outcome="parked",
            timers=(timer,),
            step=step,
        )
    if isinstance(result, Fail):
        error = ErrorRecord(kind="failure", message=result.reason, step=step)
        return _failed(inst, error, at, step)
    raise TypeError(f"step {step!r}: expected Complete, Suspend or Fail, got {result!r}")


def _failed_attempt(
    inst: Instance, step: str, error: ErrorRecord, attempt: int, at: datetime
) -> Instance:
    entry = ExecutionEntry(
        step=step, event=FAILED_ATTEMPT, timestamp=at, attempt=attempt, error=error
    )
    return attrs.evolve(inst, execution_history=(*inst.execution_history, entry), updated_at=at)


def apply_attempt_failure(
    inst: Instance,
    step: str,
    exc: BaseException,
    *,
    attempt: int,
    timed_out: bool,
    at: datetime,
) -> Decision:
    """Record that ``attempt`` of running ``step`` raised ``exc`` and will be retried.

    The failed attempt is appended to ``execution_history`` (``error`` set,
    ``event == ""``) -> ``retrying``; nothing else changes, so the step stays
    running and its next attempt is ``next_attempt(...)``. Persisting this is
    what makes the attempt count survive a restart. A terminal run, or a step
    that is not running, gives ``ignored``.
    """
    if inst.is_terminal or step not in inst.running_steps:
        return _ignored(inst, step)
    kind = "timeout" if timed_out else "crash"
    error = ErrorRecord.from_exception(kind, step, exc, attempt)
    return Decision(
        instance=_failed_attempt(inst, step, error, attempt, at), outcome="retrying", step=step
    )


def apply_crash(
    inst: Instance,
    step: str,
    exc: BaseException,
    *,
    attempt: int,
    timed_out: bool,
    at: datetime,
) -> Decision:
    """Fail the run because ``step`` raised ``exc`` on ``attempt`` and gives up.

    It gives up when the attempt was its last allowed one, or at once when
    its ``RetryPolicy`` does not retry ``exc`` (``retry_on``/``give_up_on``).
    ``kind`` is ``"timeout"`` when the attempt timed out, else ``"crash"``;
    the error keeps the attempt number and the bounded traceback, and the
    failed attempt is appended to ``execution_history`` in the same state.
    A terminal run gives ``ignored``.
    """
    if inst.is_terminal:
        return _ignored(inst, step)
    kind = "timeout" if timed_out else "crash"
    error = ErrorRecord.from_exception(kind, step, exc, attempt)
    recorded = inst
    if step in inst.running_steps:
        recorded = _failed_attempt(inst, step, error, attempt, at)
    return _failed(recorded, error, at, step)


def next_attempt(inst: Instance, step: str) -> int:
    """The number of the next attempt of ``step``: one more than its failed attempts so far.

    Failed attempts are persisted as they happen, so a run recovered after a
    crash in the middle of retries continues the count instead of starting
    again at 1 (and its ``RetryPolicy`` budget is not granted twice).
    """
    return len(inst.failed_attempts(step)) + 1


def check_definition(inst: Instance, workflow: type[Workflow]) -> None:
    """Refuse to drive ``inst`` with ``workflow`` if the run started with another definition.

    Runs stored before fingerprints existed (``definition_fingerprint is None``)
    are trusted. The comparison is of fingerprints; the error names the
    differences from the shape the run recorded.

    Raises:
        DefinitionMismatch: the registered definition under the run's name and
            version differs from the run's (the message lists what changed and
            says to register the old version beside the new one).
    """
    recorded = inst.definition_fingerprint
    if recorded is None or workflow.is_dispatcher():
        return
    if recorded == workflow.definition_fingerprint():
        return
    current = workflow.definition_shape()
    changes = (
        current.changes_from(inst.definition_shape) if inst.definition_shape is not None else ()
    )
    if not changes:
        changes = (
            f"fingerprint {recorded} recorded, {workflow.definition_fingerprint()} registered",
        )
    raise DefinitionMismatch(inst.id, inst.workflow, inst.workflow_version, changes)


def _deliver(
    inst: Instance,
    step: str,
    event: str,
    payload: Mapping[str, Any] | None,
    *,
    at: datetime,
    workflow: type[Workflow],
    wakeup: int | None,
) -> Decision:
    if inst.is_terminal or step not in inst.waiting_steps:
        return _ignored(inst, step)
    step_cls = workflow.definition().steps[step]
    config = inst.step_configs.get(step)
    delivered = step_cls.resume_event(config, event)
    if delivered is None:
        return _undeclared(inst, step, event, step_cls.declared_events(config), at)
    return _complete(
        inst,
        step,
        delivered,
        payload,
        None,
        attempt=1,
        crash_attempt=None,
        wakeup=wakeup,
        at=at,
        workflow=workflow,
    )


def apply_resume(
    inst: Instance,
    step: str,
    event: str,
    payload: Mapping[str, Any] | None = None,
    *,
    at: datetime,
    workflow: type[Workflow],
    wakeup: int | None = None,
) -> Decision:
    """Deliver a resume of parked ``step`` with ``event`` (and its ``payload``).

    The step maps ``event`` (``resume_event``: a ``WaitForEvent``'s
    ``event_name`` becomes ``"received"``), then completes with it ->
    ``completed``; ``payload`` becomes the step's updates
    (``context.steps[step]`` and the history entry's ``context_updates``) and
    ``wakeup`` (the resume's ``seq``) is stored in the history entry. An event
    the step does not accept fails the run (``undeclared_event``).

    A terminal run or a step that is not parked gives ``ignored``: the resume
    arrived early (keep it while ``step in can_still_run(...)``) or its step
    finished another way (drop it).

    Raises:
        TypeError: ``payload`` is not JSON-safe (the message names the key
            path); check it when accepting the resume.
    """
    if payload is not None:
        payload = dict(payload)
        check_json_safe(payload, f"payload of resume {event!r}")
    return _deliver(inst, step, event, payload, at=at, workflow=workflow, wakeup=wakeup)


def apply_timer(
    inst: Instance,
    record: TimerRecord,
    *,
    at: datetime,
    workflow: type[Workflow],
    wakeup: int | None = None,
) -> Decision:
    """Deliver a fired timer: ``apply_resume`` of ``record.step`` with ``record.event``.

    Completing the step drops every timer it had armed.
    """
    return _deliver(inst, record.step, record.event, None, at=at, workflow=workflow, wakeup=wakeup)


def apply_cancel(inst: Instance, *, at: datetime) -> Decision:
    """Cancel the run -> ``cancelled``; a terminal run gives ``ignored``."""
    if inst.is_terminal:
        return _ignored(inst)
    return Decision(instance=cancel(inst, at=at), outcome="cancelled")


def give_up(
    inst: Instance,
    crash: BaseException,
    *,
    restarts: int,
    policy: RestartPolicy,
    at: datetime,
) -> Decision:
    """Fail the run whose task crashed past its restart budget (``kind="restart_limit"``).

    ``restarts`` is how many restarts were made before ``crash``, the last
    crash. A terminal run gives ``ignored``.
    """
    if inst.is_terminal:
        return _ignored(inst)
    message = (
        f"instance task crashed {restarts + 1} times; restart intensity "
        f"max_restarts={policy.max_restarts} within={policy.within}s exceeded; "
        f"last error: {crash!r}"
    )
    # The bare class name, as the supervisor has always recorded it.
    error = ErrorRecord(
        kind="restart_limit",
        message=message,
        exception_type=type(crash).__qualname__,
        traceback=format_traceback(crash),
    )
    return _failed(inst, error, at, None)


def can_still_run(inst: Instance, definition: Definition) -> frozenset[str]:
    """Steps that are active or may still activate: not completed and not dead.

    Dead is the join rule's dead-path elimination (see ``core/_engine.py``):
    an edge ``P -> S`` is dead when ``P`` completed without taking it or ``P``
    is dead, and ``S`` is dead when every edge into it is dead. A pending run
    can still run every step; a terminal run none.
    """
    if inst.is_terminal:
        return frozenset()
    is_dead = _dead_checker(inst, definition)
    return frozenset(
        key for key in definition.steps if key not in inst.completed_steps and not is_dead(key)
    )


def choose_resume_step(
    inst: Instance,
    workflow: type[Workflow],
    event: str,
    *,
    step: str | None = None,
    pending_steps: Collection[str] = (),
) -> str:
    """The step a resume with ``event`` targets.

    With ``step=`` that step, if it is parked and accepts ``event``, or if it
    can still run (``can_still_run``) and would accept it: an *early* resume,
    applied once the step parks. Without ``step=``: the one parked step that
    accepts ``event``; failing that, the one not-yet-parked step that can
    still run and accepts it. An active step is judged with its config; one
    not activated yet with its static config.

    Raises:
        InvalidResume: the run is terminal; ``step`` is unknown, cannot still
            run or does not accept ``event``; several steps accept it and
            ``step=`` was not given; none does; or the chosen step is in
            ``pending_steps`` (it already has a resume waiting).
    """
    if inst.is_terminal:
        raise InvalidResume(inst.id, event, f"the instance is {inst.status.value}")
    definition = workflow.definition()

    def config_of(key: str) -> Mapping[str, Any] | None:
        if key in inst.active_steps:
            return inst.step_configs.get(key)
        return definition.configs.get(key)

    def accepts(key: str) -> bool:
        return definition.steps[key].resume_event(config_of(key), event) is not None

    def declared(key: str) -> list[str]:
        return list(definition.steps[key].declared_events(config_of(key)))

    possible = can_still_run(inst, definition)
    if step is not None:
        if step not in definition.steps:
            raise InvalidResume(
                inst.id,
                event,
                f"{workflow.__name__} has no step {step!r} (its steps: {list(definition.steps)})",
            )
        if step not in possible:  # parked steps are active, so always possible
            state = "completed" if step in inst.completed_steps else "on a branch not taken"
            raise InvalidResume(inst.id, event, f"step {step!r} cannot still run (it is {state})")
        if not accepts(step):
            raise InvalidResume(
                inst.id,
                event,
                f"step {step!r} does not declare {event!r} (it declares {declared(step)})",
            )
        chosen = step
    else:
        parked = sorted(k for k in inst.waiting_steps if accepts(k))
        early = sorted(k for k in possible - inst.waiting_steps if accepts(k))
        if len(parked) > 1:
            raise InvalidResume(
                inst.id, event, f"ambiguous: parked steps {parked} all accept it; pass step="
            )
        if len(parked) == 1:
            chosen = parked[0]
        elif len(early) > 1:
            raise InvalidResume(
                inst.id,
                event,
                f"ambiguous: steps {early} can still run and all accept it; pass step=",
            )
        elif len(early) == 1:
            chosen = early[0]
        else:
            waiting = {k: declared(k) for k in sorted(inst.waiting_steps)}
            raise InvalidResume(
                inst.id,
                event,
                f"no step that can still run declares {event!r} (parked: {waiting})",
            )
    if chosen in pending_steps:
        raise InvalidResume(inst.id, event, f"step {chosen!r} already has a pending resume")
    return chosen
