"""``TimerHandle``: a value naming one durable timer wakeup.

A timer is a row in the storage with an absolute due time, not a task: the
run that owns it may be hibernating, or driven by another engine. The handle
therefore holds no scope and no task; ``cancel()`` deletes the row (durably,
from any process) and ``state()`` reads the storage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, final

import attrs

from ..core._instance import TimerRecord

if TYPE_CHECKING:
    from ..storage._protocol import Storage

__all__ = ["TimerHandle", "TimerState"]

TimerState = Literal["pending", "fired", "cancelled"]


@final
@attrs.frozen(kw_only=True)
class TimerHandle:
    """A durable timer armed by ``schedule_resume``.

    ``fired`` means the timer completed its step; ``cancelled`` means it never
    will: cancelled through this handle, or its step finished another way, or
    its run ended first.
    """

    run_id: str
    """The run the timer belongs to."""
    seq: int
    """The timer's wakeup ``seq`` in the storage."""
    record: TimerRecord
    """Step, event and ``fire_at``."""
    _storage: Storage = attrs.field(alias="_storage", eq=False, repr=False)

    async def cancel(self) -> bool:
        """Delete the timer durably; ``True`` if this call stopped it, ``False`` if it
        had already fired or been dropped. Works from any engine or process."""
        return await self._storage.cancel_timer(self.run_id, self.seq)

    async def state(self) -> TimerState:
        """``"pending"``, ``"fired"`` or ``"cancelled"``, as the storage has it now."""
        if any(w.seq == self.seq for w in await self._storage.wakeups(self.run_id)):
            return "pending"
        run = await self._storage.get(self.run_id)
        if run is not None and any(e.wakeup == self.seq for e in run.execution_history):
            return "fired"
        return "cancelled"
