"""``Runner``: the in-memory side of one live run, shared by its tasks and the engine.

A runner exists while its run has a task, or while an engine call is about
to give it one. Two things keep a runner awake:

- ``reserving``: engine calls between claiming the runner and handing their
  work to it (a pending resume, a timer to arm);
- ``pending``: accepted resumes not yet applied.

A run hibernates only when both are empty and nothing executes or sleeps;
the check and the unregistering happen with no ``await`` in between, which
closes the race between "the loop decides to sleep" and "a resume arrives".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import trio
from trio_util import AsyncValue

from ..core._instance import Instance, TimerRecord
from ..storage._protocol import ResumeRecord

if TYPE_CHECKING:
    from ._messages import Message
    from ._timers import TimerHandle

__all__ = ["Runner", "RunnerState"]

RunnerState = Literal["starting", "ready", "stopped"]


class Runner:
    """State of one live run that outlives any single incarnation."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.state: AsyncValue[RunnerState] = AsyncValue("starting")
        self.instance: Instance | None = None
        self.scope: trio.CancelScope | None = None
        self.mailbox: trio.MemorySendChannel[Message] | None = None
        self.reserving = 0
        self.cancel_requested = False
        self.pending: dict[int, ResumeRecord] = {}
        self.applied: set[int] = set()
        self.executing: dict[str, trio.CancelScope] = {}
        self.timers: dict[TimerRecord, TimerHandle] = {}
        self.metadata: dict[str, Any] = {}
        self.stopped = trio.Event()

    @property
    def claimed_steps(self) -> set[str]:
        """Parked steps that already have an accepted resume on its way."""
        return {r.step for r in self.pending.values()}

    def mailbox_full(self) -> bool:
        if self.mailbox is None:
            return False
        stats = self.mailbox.statistics()
        return stats.current_buffer_used >= stats.max_buffer_size

    def post(self, message: Message) -> bool:
        """Send without blocking; False when the mailbox is full or gone."""
        if self.mailbox is None:
            return False
        try:
            self.mailbox.send_nowait(message)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        return True

    def release(self) -> None:
        """An engine call that reserved this runner is done with it."""
        from ._messages import Poke

        self.reserving -= 1
        self.post(Poke())
