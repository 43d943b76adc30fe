"""Sync steps (worker threads) with a ``timeout`` under the autojumping mock clock.

These steps do real work in real threads, so the tests wait on real time,
briefly; the clock they run on is virtual.
"""

from __future__ import annotations

import threading
import time

import pytest
import trio

from hephaestus_trio import Complete, Done, Status, Step, Unique, Workflow, open_engine
from hephaestus_trio.runtime import _thread_clock

pytestmark = pytest.mark.slow

RELEASE = threading.Event()
CLOCK_SEEN: list[float] = []


class SlowSync(Step):
    """Real work in a thread, much shorter than its timeout."""

    events = ("done",)
    timeout = 5.0

    def execute(self, instance, config, context):
        CLOCK_SEEN.append(trio.from_thread.run_sync(trio.current_time))
        time.sleep(0.2)
        CLOCK_SEEN.append(trio.from_thread.run_sync(trio.current_time))
        return Complete("done", updates={"worked": True})


class SlowSyncFlow(Workflow, unique=Unique(key="slowsync")):
    start_at = SlowSync
    transitions = {(SlowSync, "done"): Done}


class HangingSync(Step):
    """A thread that never finishes by itself: its timeout must still fire."""

    events = ("done",)
    timeout = 0.3

    def execute(self, instance, config, context):
        RELEASE.wait(30)
        return "done"


class HangingSyncFlow(Workflow, unique=Unique(key="hangingsync")):
    start_at = HangingSync
    transitions = {(HangingSync, "done"): Done}


async def test_sync_step_does_not_time_out_while_its_thread_works(autojump_clock):
    CLOCK_SEEN.clear()
    async with open_engine(workflows=[SlowSyncFlow]) as engine:
        iid = await engine.start_instance(SlowSyncFlow, {}, id="slowsync::a")
        final = await engine.wait(iid)
    assert final.status is Status.COMPLETED, final.error
    assert final.context.steps == {"slow_sync": {"worked": True}}
    # Virtual time stood still while the thread worked.
    start, end = CLOCK_SEEN
    assert end == start


async def test_a_hanging_sync_step_still_times_out_after_its_timeout_in_real_time(autojump_clock):
    RELEASE.clear()
    started = time.monotonic()
    try:
        async with open_engine(workflows=[HangingSyncFlow]) as engine:
            iid = await engine.start_instance(HangingSyncFlow, {}, id="hangingsync::a")
            final = await engine.wait(iid)
    finally:
        RELEASE.set()
    assert time.monotonic() - started >= HangingSync.timeout
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "timeout"


async def test_the_clock_is_held_only_under_an_autojumping_mock_clock(mock_clock):
    # mock_clock without autojump: nothing to hold, the thread call is direct.
    assert not _thread_clock._autojumping()
    mock_clock.autojump_threshold = 0
    assert _thread_clock._autojumping()
    assert await _thread_clock.run_sync_step(lambda: 7, real_limit=None) == 7


async def test_an_exception_from_the_thread_is_raised_as_is(autojump_clock):
    def boom() -> None:
        raise KeyError("from the thread")

    with pytest.raises(KeyError, match="from the thread"):
        await _thread_clock.run_sync_step(boom, real_limit=1.0)
