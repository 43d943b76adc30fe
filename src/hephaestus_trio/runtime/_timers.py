"""Timers: each armed timer is a ``trio.sleep_until`` task in the instance nursery.

The durable half is the ``TimerRecord`` in ``instance.timers``; the task is
only its in-memory incarnation, re-created from the record after a restart.
"""

from __future__ import annotations

from typing import final

import attrs
import trio

from ..core._instance import TimerRecord
from ._messages import Message, TimerCancelled, TimerFired

__all__ = ["TimerHandle", "run_timer"]


@final
@attrs.define(eq=False)
class TimerHandle:
    """A cancellable handle on one armed timer (returned by ``schedule_resume``).

    ``cancel()`` cancels the sleep task's scope; the instance then drops the
    durable record, so the timer will not fire after a restart either.
    """

    record: TimerRecord
    """The durable record: step, event, fire_at."""
    _scope: trio.CancelScope = attrs.field(factory=trio.CancelScope, alias="_scope")
    _silent: bool = attrs.field(default=False, alias="_silent")
    _armed: trio.Event = attrs.field(factory=trio.Event, alias="_armed")
    _fired: bool = attrs.field(default=False, alias="_fired")

    def cancel(self) -> None:
        """Stop the timer; a no-op once it has fired."""
        self._scope.cancel()

    @property
    def fired(self) -> bool:
        """Whether the timer delivered its event."""
        return self._fired

    @property
    def cancelled(self) -> bool:
        """Whether ``cancel()`` (or the step completing first) stopped it."""
        return self._scope.cancel_called and not self._fired

    def _discard(self) -> None:
        # Cancelled by the instance itself (the step completed first): no message back.
        self._silent = True
        self._scope.cancel()


async def run_timer(
    handle: TimerHandle, deadline: float, send: trio.MemorySendChannel[Message]
) -> None:
    """Sleep until ``deadline`` on Trio's clock, then deliver (or report the cancel)."""
    with handle._scope:
        await trio.sleep_until(deadline)
        handle._fired = True
    if handle._fired:
        await send.send(TimerFired(handle.record))
    elif not handle._silent:
        await send.send(TimerCancelled(handle.record))
