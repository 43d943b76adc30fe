"""What flows into an instance's mailbox. The instance loop is the only reader,
so it is the only code that changes the instance: no locks around state."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs

from ..core._instance import TimerRecord
from ..core._step import StepResult
from ..storage._protocol import ResumeRecord

if TYPE_CHECKING:
    from ._timers import TimerHandle

__all__ = [
    "ArmTimer",
    "Message",
    "Poke",
    "Resume",
    "StepCrashed",
    "StepFinished",
    "TimerCancelled",
    "TimerFired",
]


@attrs.frozen
class StepFinished:
    step: str
    result: StepResult
    attempt: int
    duration: float


@attrs.frozen
class StepCrashed:
    step: str
    error: Exception
    attempt: int
    timed_out: bool


@attrs.frozen
class Resume:
    record: ResumeRecord


@attrs.frozen
class TimerFired:
    record: TimerRecord


@attrs.frozen
class TimerCancelled:
    record: TimerRecord


@attrs.define(eq=False)
class ArmTimer:
    """A ``schedule_resume`` call waiting for its timer to be persisted and armed."""

    record: TimerRecord
    handle: TimerHandle
    error: Exception | None = None


@attrs.frozen
class Poke:
    """Wakes the loop so it re-checks whether it may hibernate."""


Message = StepFinished | StepCrashed | Resume | TimerFired | TimerCancelled | ArmTimer | Poke
