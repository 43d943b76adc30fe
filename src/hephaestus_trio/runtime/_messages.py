"""What flows into a run's mailbox. The run's loop is the only reader and the
only writer of the run's state, so nothing here needs a lock."""

from __future__ import annotations

import attrs

from ..core._step import StepResult

__all__ = ["AttemptFailed", "Message", "Poke", "StepCrashed", "StepFinished"]


@attrs.frozen
class StepFinished:
    """A step's ``execute`` returned (after any retries)."""

    step: str
    result: StepResult
    attempt: int
    duration: float


@attrs.frozen
class StepCrashed:
    """A step raised past its retry budget (or timed out past it)."""

    step: str
    error: Exception
    attempt: int
    timed_out: bool


@attrs.frozen
class AttemptFailed:
    """A step's attempt raised (or timed out) and the step will be retried.

    The loop records it in the run's history (one fenced write), so that the
    attempt count survives a restart. The step's task goes on with its backoff
    meanwhile; the next message about the step comes after this one.
    """

    step: str
    error: Exception
    attempt: int
    timed_out: bool


@attrs.frozen
class Poke:
    """A doorbell: the run's wakeups may have changed in the storage; re-read them.

    Pokes are hints. The wakeup rows are the truth, so a lost or duplicated
    poke delays or repeats a read, never an application.
    """


Message = StepFinished | StepCrashed | AttemptFailed | Poke
