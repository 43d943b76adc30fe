"""``RunEntry``: what the engine knows about one run it currently drives.

An entry exists exactly while the engine holds the run's lease and a driver
task runs it. It is deliberately small: the lease (renewed in place by the
heartbeat), the mailbox, the cancel scope that stops the driver when the
lease is lost, and a ``done`` event. The run's state is not here: the run's
loop holds it, and the storage holds the truth.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..core._instance import Instance
from ..storage._protocol import Lease, Wakeup
from ._messages import Message, Poke

__all__ = ["AppliedResume", "RunEntry"]


@attrs.frozen
class AppliedResume:
    """A resume applied in the claim that gave this engine the run: the run's first
    loop announces it (``workflow.transition``, ``step.resume``) as if it had
    applied it itself."""

    before: Instance
    """The state the claim read, before the resume."""
    wakeup: Wakeup
    """The resume, consumed by the claim's write."""
    event: str | None
    """The event its step completed with, after mapping."""


class RunEntry:
    """One run driven by this engine."""

    def __init__(
        self,
        lease: Lease,
        initial: Instance | None = None,
        initial_wakeups: Sequence[Wakeup] | None = None,
        resumed: AppliedResume | None = None,
    ) -> None:
        self.run_id = lease.run_id
        self.lease = lease
        # Unbounded: step tasks report once per step and pokes are coalesced,
        # so the buffer is bounded by the workflow, and a sender never blocks.
        self.send, self.recv = trio.open_memory_channel[Message](math.inf)
        self.scope = trio.CancelScope()
        self.lost = False
        """Set when the lease was lost: the driver stops without writing."""
        self.closing = False
        """Set once the loop has decided to stop (hibernate or terminal)."""
        self.done = trio.Event()
        self.metadata: dict[str, Any] = {"run_id": lease.run_id}
        """Event metadata of the run, filled in by its loop once it read the run."""
        self._poke_pending = False
        self._interrupt: Callable[[], None] | None = None
        self.incarnation: Any = None
        """The loop driving the run now, if one runs (``Engine.statistics`` reads it)."""
        self.initial: Instance | None = initial
        """The state this engine just created the run with, for its first loop only:
        that loop starts from it instead of reading back what it wrote; or the
        state read when this engine claimed it along with a resume."""
        self.initial_wakeups: Sequence[Wakeup] | None = initial_wakeups
        """With ``initial`` read at a claim: the run's unapplied wakeups read
        then, so that its first loop need not read them again."""
        self.resumed: AppliedResume | None = resumed
        """With ``initial``: the resume that claim applied, for the first loop to announce."""

    def poke(self) -> None:
        """Ask the loop to re-read the run's wakeups (coalesced)."""
        if self._poke_pending:
            return
        self._poke_pending = True
        try:
            self.send.send_nowait(Poke())
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def took_poke(self) -> None:
        self._poke_pending = False

    def set_interrupt(self, interrupt: Callable[[], None] | None) -> None:
        self._interrupt = interrupt

    @property
    def interruptible(self) -> bool:
        """Whether a loop is running that ``interrupt`` would reach."""
        return self._interrupt is not None

    def interrupt(self) -> None:
        """Cancel the run's executing steps now (a cancel request is recorded)."""
        if self._interrupt is not None:
            self._interrupt()

    def stop_lost(self) -> None:
        """The lease is gone: stop the driver at once, writing nothing."""
        self.lost = True
        self.scope.cancel()
