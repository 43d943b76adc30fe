"""Crashes, retries with backoff, per-step timeouts and business failures.

Steps record ``trio.current_time()`` at every attempt; under the autojump
clock the gaps between attempts are exactly the backoff the SPEC defines:
after failed attempt k, constant ``base``, linear ``base*k``, exponential
``base*2**(k-1)``, each capped by ``max_backoff``. The expected times are
computed here from that formula, not from ``RetryPolicy.delay``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Complete,
    Done,
    Fail,
    Instance,
    RetryPolicy,
    Status,
    Step,
    Unique,
    Workflow,
    open_engine,
)

# Virtual time of every attempt, keyed by instance id.
ATTEMPTS: dict[str, list[float]] = defaultdict(list)


def backoff(kind: str, base: float, cap: float, k: int) -> float:
    raw = {"constant": base, "linear": base * k, "exponential": base * 2 ** (k - 1)}[kind]
    return min(raw, cap)


def attempt_times(kind: str, base: float, cap: float, attempts: int) -> list[float]:
    times = [0.0]
    for k in range(1, attempts):
        times.append(times[-1] + backoff(kind, base, cap, k))
    return times


def make_flaky_flow(policy: RetryPolicy, crashes: int, key: str) -> type[Workflow]:
    """A one-step workflow whose step crashes ``crashes`` times, then succeeds."""

    class Flaky(Step):
        events = ("done",)
        retry = policy

        async def execute(self, instance, config, context):
            seen = ATTEMPTS[instance.id]
            seen.append(trio.current_time())
            if len(seen) <= crashes:
                raise ConnectionError(f"flaky attempt {len(seen)}")
            return Complete("done", updates={"attempts": len(seen)})

    class FlakyFlow(Workflow, unique=Unique(key=key)):
        start_at = Flaky
        transitions = {(Flaky, "done"): Done}

    return FlakyFlow


def history(inst: Instance) -> list[tuple[str, str, int]]:
    """The completions (failed attempts are in the history too, with ``error`` set)."""
    return [(e.step, e.event, e.attempt) for e in inst.completions]


def failures(inst: Instance, step: str) -> list[tuple[int, str, str | None]]:
    """``(attempt, kind, exception type)`` of each failed attempt of ``step``, in order."""
    out = []
    for entry in inst.failed_attempts(step):
        assert entry.error is not None
        assert entry.event == ""
        out.append((entry.attempt, entry.error.kind, entry.error.exception_type))
    return out


@pytest.mark.parametrize(
    ("kind", "base", "cap"),
    [
        ("constant", 2.0, 30.0),
        ("linear", 2.0, 30.0),
        ("exponential", 1.5, 30.0),
        # The cap bites: uncapped waits would be 4, 8, 16.
        ("exponential", 4.0, 5.0),
        ("linear", 3.0, 4.0),
    ],
)
@pytest.mark.parametrize("attempts", [3, 4])
async def test_crash_then_success_waits_the_backoff(autojump_clock, kind, base, cap, attempts):
    policy = RetryPolicy(max_attempts=attempts, backoff=kind, base=base, max_backoff=cap)
    flow = make_flaky_flow(policy, crashes=attempts - 1, key="flaky")
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(
            flow, {}, id=f"flaky::{kind}{int(base)}{int(cap)}{attempts}"
        )
        final = await engine.wait(iid)
        elapsed = trio.current_time() - t0

    expected = attempt_times(kind, base, cap, attempts)
    assert [t - t0 for t in ATTEMPTS[iid]] == pytest.approx(expected, abs=1e-9)
    assert elapsed == pytest.approx(expected[-1], abs=1e-9)
    assert final.status is Status.COMPLETED
    assert final.error is None
    assert history(final) == [("flaky", "done", attempts), ("done", "done", 1)]
    assert failures(final, "flaky") == [(k, "crash", "ConnectionError") for k in range(1, attempts)]
    # In the history in order: every failed attempt, then the completion.
    assert [e.attempt for e in final.execution_history if e.step == "flaky"] == list(
        range(1, attempts + 1)
    )
    assert final.context.steps == {"flaky": {"attempts": attempts}}


async def test_max_backoff_caps_every_wait(autojump_clock):
    """Spelled out: exponential base 10 capped at 15 waits 10, 15, 15 (not 10, 20, 40)."""
    policy = RetryPolicy(max_attempts=4, backoff="exponential", base=10, max_backoff=15)
    flow = make_flaky_flow(policy, crashes=3, key="capped")
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, {}, id="capped::one")
        final = await engine.wait(iid)

    assert [t - t0 for t in ATTEMPTS[iid]] == [0, 10, 25, 40]
    assert final.status is Status.COMPLETED
    assert final.completions[0].attempt == 4
    assert [e.attempt for e in final.failed_attempts("flaky")] == [1, 2, 3]


async def test_exhausted_retries_fail_the_run(autojump_clock):
    policy = RetryPolicy(max_attempts=3, backoff="constant", base=1.0)
    flow = make_flaky_flow(policy, crashes=10, key="exhausted")
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, {}, id="exhausted::one")
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 2  # attempts at 0, 1, 2; no wait after the last

    assert [t - t0 for t in ATTEMPTS[iid]] == [0, 1, 2]
    assert final.status is Status.FAILED
    error = final.error
    assert error is not None
    assert error.kind == "crash"
    assert error.step == "flaky"
    assert error.attempt == 3
    assert error.exception_type == "ConnectionError"
    assert "flaky attempt 3" in str(error)
    assert error.traceback is not None
    assert "ConnectionError: flaky attempt 3" in error.traceback
    assert "in execute" in error.traceback
    assert final.completions == ()
    assert failures(final, "flaky") == [
        (1, "crash", "ConnectionError"),
        (2, "crash", "ConnectionError"),
        (3, "crash", "ConnectionError"),
    ]
    last = final.execution_history[-1]
    assert last.error == error  # the failing attempt is the last entry, with the run's error
    assert final.active_steps == frozenset()
    assert "done" not in final.completed_steps


async def test_no_retry_by_default(autojump_clock):
    flow = make_flaky_flow(RetryPolicy(), crashes=1, key="noretry")
    async with open_engine(workflows=[flow]) as engine:
        iid = await engine.start_instance(flow, {}, id="noretry::one")
        final = await engine.wait(iid)

    assert len(ATTEMPTS[iid]) == 1
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "crash"
    assert final.error.attempt == 1
    assert "flaky attempt 1" in str(final.error)


async def test_step_without_retry_attribute_is_not_retried(autojump_clock):
    class Fragile(Step):
        events = ("done",)

        async def execute(self, instance, config, context):
            ATTEMPTS[instance.id].append(trio.current_time())
            raise RuntimeError("fragile")

    class FragileFlow(Workflow, unique=Unique(key="fragile")):
        start_at = Fragile
        transitions = {(Fragile, "done"): Done}

    async with open_engine(workflows=[FragileFlow]) as engine:
        iid = await engine.start_instance(FragileFlow, {}, id="fragile::one")
        final = await engine.wait(iid)
        await trio.sleep(100)
        assert (await engine.get(iid)) == final

    assert len(ATTEMPTS[iid]) == 1
    assert final.status is Status.FAILED
    assert "fragile" in str(final.error)


# -- per-step timeouts -------------------------------------------------------------------


def make_slow_flow(policy: RetryPolicy | None, key: str) -> type[Workflow]:
    class Slow(Step):
        events = ("done",)
        timeout = 5
        retry = policy if policy is not None else RetryPolicy()

        async def execute(self, instance, config, context):
            ATTEMPTS[instance.id].append(trio.current_time())
            await trio.sleep(100)
            return "done"

    class SlowFlow(Workflow, unique=Unique(key=key)):
        start_at = Slow
        transitions = {(Slow, "done"): Done}

    return SlowFlow


async def test_step_timeout_fails_the_run(autojump_clock):
    flow = make_slow_flow(None, key="slow")
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, {}, id="slow::one")
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 5

    assert len(ATTEMPTS[iid]) == 1
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "timeout"
    assert final.error.step == "slow"
    assert final.error.attempt == 1
    assert final.error.traceback is not None
    assert "TooSlowError" in final.error.traceback
    assert final.completions == ()
    assert failures(final, "slow") == [(1, "timeout", "trio.TooSlowError")]


async def test_timed_out_attempts_count_against_the_retry_budget(autojump_clock):
    policy = RetryPolicy(max_attempts=3, backoff="linear", base=1.0)
    flow = make_slow_flow(policy, key="slowretry")
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, {}, id="slowretry::one")
        final = await engine.wait(iid)
        # 5 s attempt, wait 1, 5 s attempt, wait 2, 5 s attempt.
        assert trio.current_time() - t0 == 18

    assert [t - t0 for t in ATTEMPTS[iid]] == [0, 6, 13]
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "timeout"
    assert final.error.attempt == 3


async def test_timeout_then_success_on_retry(autojump_clock):
    class SlowThenFast(Step):
        events = ("done",)
        timeout = 5
        retry = RetryPolicy(max_attempts=2, backoff="constant", base=1.0)

        async def execute(self, instance, config, context):
            seen = ATTEMPTS[instance.id]
            seen.append(trio.current_time())
            if len(seen) == 1:
                await trio.sleep(100)
            await trio.sleep(4)  # under the timeout
            return "done"

    class SlowThenFastFlow(Workflow, unique=Unique(key="slowthenfast")):
        start_at = SlowThenFast
        transitions = {(SlowThenFast, "done"): Done}

    async with open_engine(workflows=[SlowThenFastFlow]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(SlowThenFastFlow, {}, id="slowthenfast::one")
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 10  # 5 (timed out) + 1 (backoff) + 4

    assert final.status is Status.COMPLETED
    assert final.completions[0].attempt == 2
    assert failures(final, "slow_then_fast") == [(1, "timeout", "trio.TooSlowError")]


# -- Fail: a business failure, never retried -----------------------------------------------


class Refuse(Step):
    events = ("done",)
    retry = RetryPolicy(max_attempts=5, backoff="constant", base=1.0)

    async def execute(self, instance, config, context):
        ATTEMPTS[instance.id].append(trio.current_time())
        return Fail(f"card declined for {context.initial['who']}")


class Refusing(Workflow, unique=Unique(key="refusing")):
    start_at = Refuse
    transitions = {(Refuse, "done"): Done}


async def test_fail_is_a_business_failure_without_retry(autojump_clock):
    async with open_engine(workflows=[Refusing]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(Refusing, {"who": "alice"}, id="refusing::one")
        final = await engine.wait(iid)
        assert trio.current_time() == t0
        await trio.sleep(100)  # no retry shows up later either
        assert (await engine.get(iid)) == final

    assert ATTEMPTS[iid] == [t0]
    assert final.status is Status.FAILED
    assert final.error is not None
    assert final.error.kind == "failure"
    assert final.error.step == "refuse"
    assert "card declined for alice" in str(final.error)
    assert final.execution_history == ()
    assert final.completed_steps == frozenset()


# -- retries in one branch leave the others alone ----------------------------------------------


class Fork(Step):
    events = ("go",)

    async def execute(self, instance, config, context):
        return "go"


class Steady(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        await trio.sleep(1)
        return Complete("done", updates={"at": trio.current_time()})


class Shaky(Step):
    events = ("done",)
    retry = RetryPolicy(max_attempts=3, backoff="constant", base=10.0)

    async def execute(self, instance, config, context):
        seen = ATTEMPTS[instance.id]
        seen.append(trio.current_time())
        if len(seen) < 3:
            raise OSError("shaky")
        return "done"


class Gather(Step):
    events = ("done",)

    async def execute(self, instance, config, context):
        return "done"


class Branchy(Workflow, unique=Unique(key="branchy")):
    start_at = Fork
    transitions = {
        (Fork, "go"): [Steady, Shaky],
        (Steady, "done"): Gather,
        (Shaky, "done"): Gather,
        (Gather, "done"): Done,
    }


async def test_retrying_branch_does_not_hold_up_its_sibling(autojump_clock):
    async with open_engine(workflows=[Branchy]) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(Branchy, {}, id="branchy::one")
        await trio.sleep(2)
        mid = await engine.get(iid)
        assert "steady" in mid.completed_steps
        assert mid.active_steps == {"shaky"}
        final = await engine.wait(iid)
        assert trio.current_time() - t0 == 20

    assert [t - t0 for t in ATTEMPTS[iid]] == [0, 10, 20]
    assert final.status is Status.COMPLETED
    assert final.context.steps["steady"] == {"at": t0 + 1}
    entries: dict[str, Any] = {e.step: e.attempt for e in final.completions}
    assert entries == {"fork": 1, "steady": 1, "shaky": 3, "gather": 1, "done": 1}
