"""Wall-clock time for records, derived from Trio's clock.

Persisted timestamps (history, ``fire_at``) are wall-clock UTC, but every
wait is slept on Trio's clock. ``WallClock`` anchors the two once, when the
engine opens, and afterwards advances wall time *with Trio's clock*: under
``trio.testing.MockClock`` timestamps are virtual and exact, in production
they track real time. Recovery computes ``fire_at - now()`` through the same
object, which is what makes timers resume at the right moment.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import trio

__all__ = ["WallClock"]


class WallClock:
    """``now()`` is ``anchor + (trio.current_time() - trio_at_anchor)``."""

    def __init__(self, source: Callable[[], datetime] | None = None) -> None:
        self._source = source
        self._anchor = datetime.now(UTC)
        self._trio_anchor = trio.current_time()
        self._last_trio = self._trio_anchor
        self._last = self._anchor

    def now(self) -> datetime:
        """Current wall time, UTC."""
        if self._source is not None:
            return self._source()
        # Asked several times per transition at the same Trio time: answer
        # from the last computation when the clock has not moved.
        at = trio.current_time()
        if at != self._last_trio:
            self._last_trio = at
            self._last = self._anchor + timedelta(seconds=at - self._trio_anchor)
        return self._last

    def deadline(self, fire_at: datetime) -> float:
        """Trio-clock deadline for wall time ``fire_at`` (already past: now)."""
        remaining = (fire_at - self.now()).total_seconds()
        return trio.current_time() + max(0.0, remaining)

    def after(self, seconds: float) -> datetime:
        """Wall time ``seconds`` from now."""
        return self.now() + timedelta(seconds=seconds)


def trio_wall_clock(epoch: datetime) -> Callable[[], datetime]:
    """A wall-clock source that is ``epoch`` plus Trio's clock: stable across engine reopens.

    Tests that close and reopen an engine inside one ``trio.run`` under
    ``MockClock`` pass ``open_engine(wall_clock=trio_wall_clock(EPOCH))`` so the
    wall time seen by the second engine continues from the first.
    """

    def now() -> datetime:
        return epoch + timedelta(seconds=trio.current_time())

    return now
