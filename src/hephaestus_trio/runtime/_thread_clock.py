"""Sync steps in worker threads, and a mock clock that must not jump while they work.

Why: under ``trio.testing.MockClock`` with an autojump threshold (pytest-trio's
``autojump_clock``), Trio jumps virtual time to the next deadline as soon as
every task has been blocked for the threshold. A task waiting for a worker
thread *is* blocked, so while a plain ``def execute`` works in its thread the
clock jumps straight to the step's own ``timeout`` deadline and the step
fails with ``TooSlowError`` although it took a few real milliseconds.

The mechanism: while the thread runs, a companion task waits in
``trio.testing.wait_all_tasks_blocked``, again and again. Trio's run loop
never autojumps while a task waits there (the idle waiter wakes instead of
the clock jumping), so virtual time stands still while the thread works, as
if the work took no virtual time. Other tasks still run; timers do not fire
early. The hold lasts at most the step's ``timeout`` in *real* seconds: a
sync step that really hangs still times out under the mock clock, after
that much real time. With any other clock nothing changes.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TypeVar

import trio

__all__ = ["run_sync_step"]

_T = TypeVar("_T")

HOLD_CUSHION = 0.01
"""Real seconds between two wake-ups of the companion task while it holds the clock."""


def _autojumping() -> bool:
    # trio.testing is looked up, not imported: it imports pytest when that is
    # installed, and a MockClock can only exist once trio.testing was imported.
    testing = sys.modules.get("trio.testing")
    if testing is None:
        return False
    clock = trio.lowlevel.current_clock()
    return isinstance(clock, testing.MockClock) and clock.autojump_threshold != math.inf


async def _hold_clock(real_limit: float | None) -> None:
    """Keep the mock clock from autojumping for at most ``real_limit`` real seconds."""
    import trio.testing  # already imported: the clock is a MockClock

    deadline = math.inf if real_limit is None else time.monotonic() + real_limit
    while time.monotonic() < deadline:
        await trio.testing.wait_all_tasks_blocked(HOLD_CUSHION)
    await trio.sleep_forever()  # stop holding; the caller cancels this task


async def run_sync_step(call: Callable[[], _T], *, real_limit: float | None) -> _T:
    """``call()`` in a worker thread, abandoned on cancel; the mock clock held meanwhile.

    ``real_limit`` is the step's ``timeout``: how long (real seconds) the mock
    clock may be held before it is allowed to jump to the timeout again.
    """
    if not _autojumping():
        # Blocking code must not stall the loop; abandoning on cancel lets a
        # timeout or a cancel take effect even while the thread keeps running.
        return await trio.to_thread.run_sync(call, abandon_on_cancel=True)
    failure: Exception | None = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_hold_clock, real_limit)
        try:
            result = await trio.to_thread.run_sync(call, abandon_on_cancel=True)
        except Exception as exc:  # re-raised below, not wrapped in the nursery's group
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
    return result
