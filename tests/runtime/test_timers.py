"""Timers under virtual time: ``Wait``, ``schedule_resume`` and ``WaitForEvent`` timeouts.

Every test runs on the autojump clock, so each asserts the exact virtual
moment a timer fires, both on Trio's clock and in the history's wall-clock
timestamps (which the engine advances with Trio's clock).
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Done,
    Event,
    Instance,
    InstanceNotFound,
    InvalidResume,
    Status,
    Step,
    Suspend,
    TimerRecord,
    Unique,
    Wait,
    WaitForEvent,
    Workflow,
    open_engine,
)


async def settle() -> None:
    """Let every task run until all are blocked, without advancing virtual time."""
    await trio.testing.wait_all_tasks_blocked()


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.execution_history]


def entry_time(inst: Instance, step: str):
    [entry] = [e for e in inst.execution_history if e.step == step]
    return entry.timestamp


class Kickoff(Step):
    events = ("next",)

    async def execute(self, instance, config, context):
        return "next"


# -- Wait ---------------------------------------------------------------------------


class WaitMinutes(Workflow, unique=Unique(key="waitmin")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): (Wait, {"duration": 2, "unit": "minute"}),
        (Wait, "timeout"): Done,
    }


class WaitSeconds(Workflow, unique=Unique(key="waitsec")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): (Wait, {"seconds": 1.5}),
        (Wait, "timeout"): Done,
    }


@pytest.mark.parametrize(("flow", "seconds"), [(WaitMinutes, 120.0), (WaitSeconds, 1.5)])
async def test_wait_fires_at_the_configured_time(autojump_clock, flow, seconds):
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, {}, id=f"{flow.unique.key}::one")
        await settle()
        parked = await engine.get(iid)
        assert parked.status is Status.WAITING
        assert parked.waiting_steps == {"wait"}
        [timer] = parked.timers
        assert timer.step == "wait"
        assert timer.event == "timeout"
        assert timer.fire_at - entry_time(parked, "kickoff") == timedelta(seconds=seconds)
        # Changed on purpose: a timer is a row the engine watches, not a task, so a
        # run parked on one hibernates (no task) until the timer is due.
        assert engine.live_tasks == 0

        await trio.sleep(seconds / 2)
        assert (await engine.get(iid)).status is Status.WAITING

        final = await engine.wait(iid)
        assert trio.current_time() - t0 == seconds

    assert final.status is Status.COMPLETED
    assert history(final) == [("kickoff", "next"), ("wait", "timeout"), ("done", "done")]
    assert entry_time(final, "wait") - entry_time(final, "kickoff") == timedelta(seconds=seconds)
    assert entry_time(final, "done") == entry_time(final, "wait")
    assert final.timers == ()


# -- schedule_resume -------------------------------------------------------------------


class Hold(Step):
    """Parks with no timer of its own; a ``schedule_resume`` or a resume wakes it."""

    events = ("timeout", "go")

    async def execute(self, instance, config, context):
        return Suspend()


class Holding(Workflow, unique=Unique(key="holding")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): Hold,
        (Hold, "timeout"): Done,
        (Hold, "go"): Done,
    }


async def test_schedule_resume_fires_after_delay(autojump_clock):
    async with open_engine(workflows=[Holding]) as engine:
        iid = await engine.start_instance(Holding, {}, id="holding::fires")
        await settle()
        assert engine.live_tasks == 0  # parked without a timer: hibernating

        await trio.sleep(7)  # the delay counts from the call, not from parking
        t1 = trio.current_time()
        handle = await engine.schedule_resume(iid, "hold", 10)
        assert trio.current_time() == t1
        armed = await engine.get(iid)
        assert armed.timers == (handle.record,)
        assert isinstance(handle.record, TimerRecord)
        assert handle.record.step == "hold"
        assert handle.record.event == "timeout"
        assert await handle.state() == "pending"
        await settle()
        assert engine.live_tasks == 0  # the armed timer is a row: still hibernating

        final = await engine.wait(iid)
        assert trio.current_time() - t1 == 10
        assert await handle.state() == "fired"

    assert final.status is Status.COMPLETED
    assert history(final) == [("kickoff", "next"), ("hold", "timeout"), ("done", "done")]
    assert entry_time(final, "hold") == handle.record.fire_at
    assert entry_time(final, "hold") - entry_time(final, "kickoff") == timedelta(seconds=17)


async def test_schedule_resume_with_event_override(autojump_clock):
    async with open_engine(workflows=[Holding]) as engine:
        iid = await engine.start_instance(Holding, {}, id="holding::override")
        await settle()
        t1 = trio.current_time()
        await engine.schedule_resume(iid, "hold", 2.5, event="go")
        final = await engine.wait(iid)
        assert trio.current_time() - t1 == 2.5
    assert history(final) == [("kickoff", "next"), ("hold", "go"), ("done", "done")]


async def test_cancelled_schedule_resume_never_fires(autojump_clock):
    async with open_engine(workflows=[Holding]) as engine:
        iid = await engine.start_instance(Holding, {}, id="holding::cancelled")
        await settle()
        handle = await engine.schedule_resume(iid, "hold", 10)
        assert len((await engine.get(iid)).timers) == 1

        await trio.sleep(4)
        assert await handle.cancel() is True
        await settle()
        assert await handle.state() == "cancelled"
        after_cancel = await engine.get(iid)
        assert after_cancel.timers == ()
        assert after_cancel.status is Status.WAITING
        assert engine.live_tasks == 0  # nothing armed any more: hibernating again

        # Far past the original deadline: still parked, nothing delivered.
        await trio.sleep(10_000)
        later = await engine.get(iid)
        assert later.status is Status.WAITING
        assert later.waiting_steps == {"hold"}
        assert later.timers == ()
        assert history(later) == [("kickoff", "next")]
        assert await handle.state() == "cancelled"

        assert await handle.cancel() is False  # idempotent: it stopped nothing this time
        await engine.resume(iid, "go")
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert history(final) == [("kickoff", "next"), ("hold", "go"), ("done", "done")]


async def test_resume_before_scheduled_timer_discards_it(autojump_clock):
    async with open_engine(workflows=[Holding]) as engine:
        iid = await engine.start_instance(Holding, {}, id="holding::beaten")
        await settle()
        handle = await engine.schedule_resume(iid, "hold", 10)
        await trio.sleep(3)
        await engine.resume(iid, "go")
        final = await engine.wait(iid)
        await trio.sleep(100)
        assert (await engine.get(iid)) == final
        assert await handle.state() == "cancelled"  # dropped with its step, never fired

    assert final.timers == ()
    assert history(final) == [("kickoff", "next"), ("hold", "go"), ("done", "done")]


class Busy(Step):
    events = ("timeout",)

    async def execute(self, instance, config, context):
        await trio.sleep(50)
        return "timeout"


class Busying(Workflow, unique=Unique(key="busying")):
    start_at = Busy
    transitions = {(Busy, "timeout"): Done}


async def test_schedule_resume_on_a_step_that_is_not_parked(autojump_clock):
    async with open_engine(workflows=[Holding, Busying]) as engine:
        iid = await engine.start_instance(Holding, {}, id="holding::refused")
        await settle()
        before = await engine.get(iid)
        # Completed step.
        with pytest.raises(InvalidResume, match="not parked"):
            await engine.schedule_resume(iid, "kickoff", 5)
        # Unknown step key.
        with pytest.raises(InvalidResume, match="not parked"):
            await engine.schedule_resume(iid, "nope", 5)
        # Parked step, but an event it does not declare.
        with pytest.raises(InvalidResume, match="does not declare 'bogus'"):
            await engine.schedule_resume(iid, "hold", 5, event="bogus")
        with pytest.raises(ValueError, match="delay"):
            await engine.schedule_resume(iid, "hold", -1)
        await settle()
        assert (await engine.get(iid)) == before
        assert before.timers == ()

        # A running (not parked) step.
        busy = await engine.start_instance(Busying, {}, id="busying::one")
        await trio.sleep(1)
        with pytest.raises(InvalidResume, match="not parked"):
            await engine.schedule_resume(busy, "busy", 5)
        final = await engine.wait(busy)
        assert final.status is Status.COMPLETED
        assert trio.current_time() >= 50  # completed by the step, not by a timer at t+5

        # A terminal run.
        with pytest.raises(InvalidResume, match="completed"):
            await engine.schedule_resume(busy, "busy", 5)
        with pytest.raises(InstanceNotFound):
            await engine.schedule_resume("holding::missing", "hold", 5)


class Fork(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        return "go"


class Chug(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        await trio.sleep(20)
        return "done"


class Gather(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return "done"


class HoldBeside(Workflow, unique=Unique(key="holdbeside")):
    start_at = Fork
    transitions = {
        (Fork, "go"): [Hold, Chug],
        (Hold, "timeout"): Gather,
        (Hold, "go"): Gather,
        (Chug, "done"): Gather,
        (Gather, "done"): Done,
    }


async def test_schedule_resume_while_a_sibling_step_runs(autojump_clock):
    async with open_engine(workflows=[HoldBeside]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(HoldBeside, {}, id="holdbeside::one")
        await trio.sleep(1)
        running = await engine.get(iid)
        assert running.status is Status.RUNNING
        assert running.waiting_steps == {"hold"}

        await engine.schedule_resume(iid, "hold", 5)
        await trio.sleep(5)
        await settle()
        fired = await engine.get(iid)
        # The timer delivered at t0 + 6 while chug kept running.
        assert fired.active_steps == {"chug"}
        assert fired.timers == ()
        assert ("hold", "timeout") in history(fired)
        assert entry_time(fired, "hold") - entry_time(fired, "fork") == timedelta(seconds=6)

        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 20

    assert final.status is Status.COMPLETED
    assert [s for s, _ in history(final)] == ["fork", "hold", "chug", "gather", "done"]


# -- WaitForEvent with a timeout -------------------------------------------------------


class WaitOrGiveUp(Workflow, unique=Unique(key="waitorgiveup")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): (WaitForEvent, {"timeout": 30}),
        (WaitForEvent, "received"): Done,
        (WaitForEvent, "timeout"): Done,
    }


async def test_wait_for_event_event_before_timeout(autojump_clock):
    resumed: list[Event] = []
    async with open_engine(workflows=[WaitOrGiveUp]) as engine:
        engine.subscribe(resumed.append, events=["step.resume"])
        t0 = trio.current_time()
        iid = await engine.start_instance(WaitOrGiveUp, {}, id="waitorgiveup::event")
        await settle()
        parked = await engine.get(iid)
        [timer] = parked.timers
        assert (timer.step, timer.event) == ("wait_for_event", "timeout")
        assert engine.live_tasks == 0  # hibernating on its timeout timer (a row)

        await trio.sleep(10)
        await engine.resume(iid, "received")
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 10

        # Long past the timeout: nothing more happens.
        await trio.sleep(1000)
        assert (await engine.get(iid)) == final

    assert final.status is Status.COMPLETED
    assert final.timers == ()
    assert history(final) == [
        ("kickoff", "next"),
        ("wait_for_event", "received"),
        ("done", "done"),
    ]
    assert [(e.metadata["step"], e.metadata["event"]) for e in resumed] == [
        ("wait_for_event", "received")
    ]


async def test_wait_for_event_timeout_before_event(autojump_clock):
    async with open_engine(workflows=[WaitOrGiveUp]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(WaitOrGiveUp, {}, id="waitorgiveup::timeout")
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 30
        with pytest.raises(InvalidResume, match="completed"):
            await engine.resume(iid, "received")
        assert (await engine.get(iid)) == final

    assert final.status is Status.COMPLETED
    assert history(final) == [
        ("kickoff", "next"),
        ("wait_for_event", "timeout"),
        ("done", "done"),
    ]
    assert entry_time(final, "wait_for_event") - entry_time(final, "kickoff") == timedelta(
        seconds=30
    )


class WaitThenHold(Workflow, unique=Unique(key="waitthenhold")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): (WaitForEvent, {"timeout": 30}),
        (WaitForEvent, "received"): Done,
        (WaitForEvent, "timeout"): Hold,
        (Hold, "go"): Done,
        (Hold, "timeout"): Done,
    }


async def test_late_event_after_timeout_is_refused_while_run_continues(autojump_clock):
    async with open_engine(workflows=[WaitThenHold]) as engine:
        iid = await engine.start_instance(WaitThenHold, {}, id="waitthenhold::one")
        await trio.sleep(31)
        moved_on = await engine.get(iid)
        assert moved_on.status is Status.WAITING
        assert moved_on.waiting_steps == {"hold"}
        assert ("wait_for_event", "timeout") in history(moved_on)

        with pytest.raises(InvalidResume, match="no step that can still run declares 'received'"):
            await engine.resume(iid, "received")
        with pytest.raises(InvalidResume, match="cannot still run"):
            await engine.resume(iid, "received", step="wait_for_event")
        await settle()
        assert (await engine.get(iid)) == moved_on

        await engine.resume(iid, "go")
        final = await engine.wait(iid)

    assert history(final) == [
        ("kickoff", "next"),
        ("wait_for_event", "timeout"),
        ("hold", "go"),
        ("done", "done"),
    ]


class WaitForPayment(Workflow, unique=Unique(key="waitforpayment")):
    start_at = Kickoff
    transitions = {
        (Kickoff, "next"): (WaitForEvent, {"event_name": "payment_confirmed"}),
        (WaitForEvent, "received"): Done,
    }


@pytest.mark.parametrize("event", ["payment_confirmed", "received"])
async def test_wait_for_event_name_is_delivered_as_received(autojump_clock, event):
    async with open_engine(workflows=[WaitForPayment]) as engine:
        iid = await engine.start_instance(WaitForPayment, {}, id=f"waitforpayment::{event[0]}")
        await settle()
        parked = await engine.get(iid)
        assert parked.timers == ()  # no timeout configured: no timer
        assert engine.live_tasks == 0
        with pytest.raises(InvalidResume, match="payment_refused"):
            await engine.resume(iid, "payment_refused")
        await engine.resume(iid, event)
        final = await engine.wait(iid)

    assert final.status is Status.COMPLETED
    assert history(final) == [
        ("kickoff", "next"),
        ("wait_for_event", "received"),
        ("done", "done"),
    ]
