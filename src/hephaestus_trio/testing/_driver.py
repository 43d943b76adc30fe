"""Drive the pure engine functions through a whole run from an outcome script.

An ``OutcomeScript`` says, for every step of a workflow, what the step does
when it runs: complete with an event, park and later be resumed with one, or
fail. ``run_script`` plays it through the decision functions the running
engine uses (``apply_result``, ``apply_resume``), and returns every instance
it reached. It needs no
Hypothesis: ``outcome_scripts()`` (in ``_strategies``) only generates scripts.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs

from ..core._decisions import apply_result, apply_resume
from ..core._engine import advance
from ..core._instance import Instance
from ..core._step import Complete, Fail, Suspend
from ..core._workflow import Workflow

__all__ = ["EPOCH", "Outcome", "OutcomeScript", "run_script", "scripted_result"]

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
"""Start time of scripted runs; each move happens one second after the previous one."""


@attrs.frozen(kw_only=True)
class Outcome:
    """What one step does when it runs."""

    event: str
    """The event the step completes with (for a parked step: the event delivered)."""
    suspend: bool = False
    """Park first, then be resumed with ``resume_with`` (or ``event``)."""
    resume_with: str | None = None
    """Event offered to ``resume_step`` when it differs from the one delivered
    (a ``WaitForEvent``'s ``event_name`` is delivered as ``"received"``)."""
    fail: bool = False
    """Return ``Fail`` instead: the run fails in this step."""

    def as_json(self) -> dict[str, Any]:
        """The JSON-safe form stored in a run's context by ``OutcomeScript.as_context``."""
        return {
            "event": self.event,
            "suspend": self.suspend,
            "resume_with": self.resume_with,
            "fail": self.fail,
        }


@attrs.frozen(kw_only=True)
class OutcomeScript:
    """Outcomes for every step of one workflow, plus the scheduling choices."""

    outcomes: Mapping[str, Outcome]
    """step key -> what that step does."""
    choices: tuple[int, ...] = ()
    """Which active step moves next. The candidates are the running steps, sorted,
    then the parked ones, sorted; move *n* picks candidate ``choices[n] % count``
    and, once the choices run out, the first candidate."""

    def as_context(self) -> dict[str, Any]:
        """Context for a run on the running engine: generated steps read their outcome here."""
        return {"outcomes": {key: o.as_json() for key, o in self.outcomes.items()}}


def scripted_result(step_key: str, events: tuple[str, ...], context: Any) -> Any:
    """What a generated task step returns when executed by the running engine.

    It reads ``context.initial["outcomes"][step_key]`` (see ``OutcomeScript.as_context``)
    and falls back to completing with its first event.
    """
    outcomes = context.initial.get("outcomes", {}) if context is not None else {}
    outcome = outcomes.get(step_key)
    if not outcome:
        return Complete(events[0])
    if outcome.get("fail"):
        return Fail(f"step {step_key} fails by script")
    if outcome.get("suspend"):
        return Suspend()
    return Complete(outcome["event"], updates={"event": outcome["event"]})


def run_script(
    workflow: type[Workflow],
    script: OutcomeScript,
    *,
    instance: Instance | None = None,
    max_moves: int | None = None,
) -> tuple[Instance, ...]:
    """Play ``script`` on ``workflow`` with the pure decision functions.

    Starts from ``instance`` (default: a fresh pending run), applies one move at
    a time (start, complete, park, resume or fail a step, through ``advance``,
    ``apply_result`` and ``apply_resume``, as the running engine does) and returns the
    instance after every move, the first one included. It stops when the run is
    terminal or after ``max_moves`` moves (default: twice the number of steps
    plus one, which a valid workflow never needs).
    """
    definition = workflow.definition()
    limit = max_moves if max_moves is not None else 2 * len(definition.steps) + 1
    inst = instance or Instance.new(
        workflow, {}, id="generated::run", run_id="generated-run", now=EPOCH
    )
    trace = [inst]
    moves = 0

    def at() -> datetime:
        return EPOCH + timedelta(seconds=moves)

    while not inst.is_terminal and moves < limit:
        moves += 1
        if not inst.active_steps:
            inst = advance(inst, workflow=workflow, at=at())
            trace.append(inst)
            continue
        # Running steps first, parked ones after: by default every running
        # step moves (and maybe parks) before anything parked is resumed.
        movable = sorted(inst.running_steps) + sorted(inst.waiting_steps)
        choice = script.choices[moves - 1] if moves - 1 < len(script.choices) else 0
        key = movable[choice % len(movable)]
        outcome = script.outcomes[key]
        if key in inst.waiting_steps:
            offered = outcome.resume_with or outcome.event
            decision = apply_resume(inst, key, offered, at=at(), workflow=workflow)
        else:
            result: Complete | Suspend | Fail
            if outcome.fail:
                result = Fail(f"step {key} fails by script")
            elif outcome.suspend:
                result = Suspend()
            else:
                # Generated steps record their event; the real Done records nothing.
                terminal = definition.steps[key].terminal
                updates = None if terminal else {"event": outcome.event}
                result = Complete(outcome.event, updates)
            decision = apply_result(inst, key, result, attempt=1, at=at(), workflow=workflow)
        inst = decision.instance
        trace.append(inst)
    return tuple(trace)
