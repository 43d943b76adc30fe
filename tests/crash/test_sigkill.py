"""SIGKILL an engine process at chosen points; a fresh engine on the same file finishes the work.

Each test starts the app (``_crash_app.py``) in a child process on a SQLite
file, waits for the child's markers, kills it with SIGKILL, reads what the
file holds, then opens a fresh engine on the file in this process and runs
every instance to its end. The result must equal an uncrashed reference run
of the same instances (status, completed steps, ``context.steps``, one
history entry per step), and the side file (one durable line per step
execution) must show that no step whose completion was persisted before the
kill ran again; steps that were running when the process died run again
(at-least-once).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import trio

from hephaestus_trio import Instance, InvalidResume, SQLiteStorage, Status, open_engine

from . import _crash_app as app
from ._harness import (
    Child,
    assert_recovered,
    executions,
    history,
    pending_resumes,
    persisted,
    reference,
    restart,
)

Crash = Callable[[str], Child]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]


async def test_kill_mid_step(crash: Crash) -> None:
    expected = await reference("mid_step")
    child = crash("mid_step")
    await child.wait_for([*app.blocking_markers("mid_step"), "ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    a1, b2, c3 = before["linear::a1"], before["linear::b2"], before["linear::c3"]
    assert a1.status is Status.RUNNING
    assert (set(a1.completed_steps), set(a1.running_steps)) == ({"prepare"}, {"work"})
    assert b2.status is Status.RUNNING
    assert (set(b2.completed_steps), set(b2.running_steps)) == ({"prepare", "work"}, {"finish"})
    assert c3.status is Status.COMPLETED

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    # The interrupted steps ran again (at-least-once); everything else ran once.
    assert executions(child, "linear::a1", "work") == (1, 1)
    assert executions(child, "linear::a1", "prepare") == (1, 0)
    assert executions(child, "linear::a1", "finish") == (0, 1)
    assert executions(child, "linear::b2", "finish") == (1, 1)
    assert executions(child, "linear::b2", "work") == (1, 0)
    for step in ("prepare", "work", "finish"):
        assert executions(child, "linear::c3", step) == (1, 0)
    assert after["linear::c3"] == c3  # a finished run is left alone


async def test_kill_during_fan_out(crash: Crash) -> None:
    expected = await reference("fan_out")
    child = crash("fan_out")
    await child.wait_for([*app.blocking_markers("fan_out"), "ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    run = before["fanout::a1"]
    assert run.status is Status.RUNNING
    assert run.completed_steps == {"prepare"}
    assert run.running_steps == {"left", "right"}

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    assert executions(child, "fanout::a1", "left") == (1, 1)
    assert executions(child, "fanout::a1", "right") == (1, 1)
    assert executions(child, "fanout::a1", "prepare") == (1, 0)
    assert executions(child, "fanout::a1", "join") == (0, 1)


async def test_retry_attempts_continue_the_count_after_a_crash(crash: Crash) -> None:
    """Failed attempts are persisted as they happen: a restart continues the count."""
    expected = await reference("retry")
    child = crash("retry")
    await child.wait_for([*app.blocking_markers("retry"), "ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    assert before["retrying::a1"].running_steps == {"flaky"}
    # Attempt 1 crashed and was written before attempt 2 started (and was killed).
    [failed] = before["retrying::a1"].failed_attempts("flaky")
    assert failed.attempt == 1
    assert failed.error is not None
    assert "first attempt in this process" in (failed.error.traceback or "")

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    # Four executions in all: two before the kill (crash, then the blocked
    # attempt 2) and two after it. Attempt 2 never ended, so it is made again
    # under its number (crash), then attempt 3 succeeds: the count went on.
    assert executions(child, "retrying::a1", "flaky") == (2, 2)
    run = after["retrying::a1"]
    [entry] = [e for e in run.completions if e.step == "flaky"]
    assert entry.attempt == 3
    assert [e.attempt for e in run.failed_attempts("flaky")] == [1, 2]


async def test_kill_while_parked(crash: Crash) -> None:
    expected = await reference("parked")
    child = crash("parked")
    await child.wait_for(["ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    for parked in before.values():
        assert parked.status is Status.WAITING
        assert parked.waiting_steps == {"wait_for_event"}
        assert parked.completed_steps == {"prepare"}
        assert parked.timers == ()

    after = await restart(child, resume=True)

    assert_recovered(child, before, after, expected)
    for run in child.runs:
        assert executions(child, run.id, "prepare") == (1, 0)
        assert executions(child, run.id, "finish") == (0, 1)


async def _kill_with_timer_pending(crash: Crash) -> tuple[Child, dict[str, Instance], datetime]:
    child = crash("timer")
    await child.wait_for(["ready"])
    child.kill()
    before = await persisted(child.db, child.runs)
    run = before["timed::a1"]
    assert run.status is Status.WAITING
    [timer] = run.timers
    assert (timer.step, timer.event) == ("wait", "timeout")
    assert timer.fire_at.tzinfo is not None
    return child, before, timer.fire_at


def _fired_at(run: Instance) -> datetime:
    [entry] = [e for e in run.execution_history if e.step == "wait"]
    stamp: datetime = entry.timestamp
    return stamp


# Wall-clock slack: the engine's clock is anchored to the system clock when it opens.
SLACK = timedelta(milliseconds=50)


async def test_timer_rearms_for_the_remaining_time_after_a_kill(crash: Crash) -> None:
    expected = await reference("timer")
    child, before, fire_at = await _kill_with_timer_pending(crash)
    # Restart with about a second left, well short of the full Wait.
    left = (fire_at - datetime.now(UTC)).total_seconds()
    await trio.sleep(max(0.0, left - 1.0))
    restarted_at = datetime.now(UTC)
    remaining = (fire_at - restarted_at).total_seconds()
    assert 0.3 < remaining < app.WAIT_SECONDS - 0.5

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    fired = _fired_at(after["timed::a1"])
    # Not early, and at fire_at rather than a full WAIT_SECONDS after the restart.
    assert fire_at - SLACK <= fired < fire_at + timedelta(seconds=1.0)
    assert fired < restarted_at + timedelta(seconds=app.WAIT_SECONDS - 0.5)
    assert executions(child, "timed::a1", "finish") == (0, 1)


async def test_overdue_timer_fires_at_once_after_a_restart(crash: Crash) -> None:
    expected = await reference("timer")
    child, before, fire_at = await _kill_with_timer_pending(crash)
    # Stay down until the timer is overdue.
    overdue = (fire_at - datetime.now(UTC)).total_seconds() + 0.3
    await trio.sleep(max(0.0, overdue))
    restarted_at = datetime.now(UTC)
    assert restarted_at > fire_at

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    fired = _fired_at(after["timed::a1"])
    assert restarted_at - SLACK <= fired < restarted_at + timedelta(seconds=1.0)
    assert executions(child, "timed::a1", "finish") == (0, 1)


async def test_kill_right_after_resume_returned(crash: Crash) -> None:
    """The accepted resume is on disk; the restarted engine goes on from it exactly once.

    The run had hibernated, so the resume claimed it and was applied in that
    claim's commit: on disk it is already the step's completion (no pending
    resume), its next step not yet started, as the child's loop was blocked
    when ``resume`` returned.
    """
    expected = await reference("after_resume")
    child = crash("after_resume")
    await child.wait_for(["ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    run = before["parked::r1"]
    assert run.status is Status.RUNNING
    assert run.waiting_steps == set()
    assert history(run)[-1] == ("wait_for_event", "received")
    assert await pending_resumes(child.db) == []
    assert executions(child, "parked::r1", "finish") == (0, 0)

    after = await restart(child)  # no second resume: the next step runs from the disk

    assert_recovered(child, before, after, expected)
    done = after["parked::r1"]
    assert history(done).count(("wait_for_event", "received")) == 1
    assert await pending_resumes(child.db) == []
    assert executions(child, "parked::r1", "finish") == (0, 1)
    # And it stays applied once: yet another engine has nothing left to do.
    async with open_engine(storage=SQLiteStorage(child.db), workflows=app.WORKFLOWS) as engine:
        with trio.fail_after(5):
            assert await engine.get("parked::r1") == done
            with pytest.raises(InvalidResume):
                await engine.resume("parked::r1", app.RESUME_EVENT)


async def test_kill_right_after_start_returned(crash: Crash) -> None:
    """A run persisted ``pending`` and never advanced is started by the next engine."""
    expected = await reference("after_start")
    child = crash("after_start")
    await child.wait_for(["ready"])
    child.kill()

    before = await persisted(child.db, child.runs)
    run = before["linear::s1"]
    assert run.status is Status.PENDING
    assert run.execution_history == ()
    assert child.lines() == []

    after = await restart(child)

    assert_recovered(child, before, after, expected)
    for step in ("prepare", "work", "finish"):
        assert executions(child, "linear::s1", step) == (0, 1)
