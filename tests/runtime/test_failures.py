"""Failures an operator can act on: tracebacks, failed attempts in the history, retry_on.

Every failed attempt is one entry of ``execution_history`` (``error`` set,
``event == ""``), written as it happens, so the attempt count survives a
restart. ``RetryPolicy.retry_on``/``give_up_on`` let a bug fail at once while
a flaky network retries. Time is virtual throughout: the gaps between
attempts are exactly the backoff.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    FAILED_ATTEMPT,
    Done,
    Instance,
    LoggingHandler,
    RetryPolicy,
    SQLiteStorage,
    Status,
    Step,
    Storage,
    Unique,
    Workflow,
    open_engine,
    trio_wall_clock,
)

RUNS: dict[str, list[float]] = defaultdict(list)
"""Virtual time of every attempt, by instance id."""
RAISES: dict[str, list[BaseException]] = {}
"""What each attempt of a run raises, in order (then it succeeds)."""


@pytest.fixture(autouse=True)
def _reset() -> None:
    RUNS.clear()
    RAISES.clear()


def make_flow(policy: RetryPolicy, key: str) -> type[Workflow]:
    """One step that raises ``RAISES[id][k-1]`` on attempt k while there are any left."""

    class Call(Step):
        events = ("done",)
        retry = policy

        async def execute(self, instance: Instance, config: Any, context: Any) -> str:
            seen = RUNS[instance.id]
            seen.append(trio.current_time())
            planned = RAISES.get(instance.id, [])
            if len(seen) <= len(planned):
                raise planned[len(seen) - 1]
            return "done"

    class CallFlow(Workflow, unique=Unique(key=key)):
        start_at = Call
        transitions = {(Call, "done"): Done}

    return CallFlow


def lookup(data: dict[str, int], key: str) -> int:
    return data[key]  # the bug: a KeyError deep in business code


class Buggy(Step):
    events = ("done",)
    retry = RetryPolicy(max_attempts=5, base=1.0, give_up_on=(KeyError, TypeError))

    async def execute(self, instance: Instance, config: Any, context: Any) -> str:
        RUNS[instance.id].append(trio.current_time())
        return str(lookup({}, "missing"))


class BuggyFlow(Workflow, unique=Unique(key="buggy")):
    start_at = Buggy
    transitions = {(Buggy, "done"): Done}


# -- retry_on / give_up_on ---------------------------------------------------------------


async def test_a_bug_fails_at_once_with_its_traceback(autojump_clock: Any) -> None:
    async with open_engine(workflows=[BuggyFlow]) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start_instance(BuggyFlow, id="buggy::one"))
        assert trio.current_time() == t0  # no backoff: given up at once

    assert RUNS["buggy::one"] == [t0]
    assert final.status is Status.FAILED
    error = final.error
    assert error is not None
    assert (error.kind, error.step, error.attempt) == ("crash", "buggy", 1)
    assert error.exception_type == "KeyError"
    assert error.message == "'missing'"
    assert error.traceback is not None
    # The traceback names the frame that raised, not just the message.
    assert "in lookup" in error.traceback
    assert "return data[key]" in error.traceback
    assert error.traceback.rstrip().endswith("KeyError: 'missing'")
    [entry] = final.execution_history
    assert (entry.step, entry.event, entry.attempt, entry.error) == ("buggy", "", 1, error)
    assert entry.failed
    assert final.completions == ()


async def test_retry_on_retries_only_what_it_names(autojump_clock: Any) -> None:
    policy = RetryPolicy(max_attempts=5, backoff="constant", base=2.0, retry_on=(ConnectionError,))
    flow = make_flow(policy, "net")
    RAISES["net::flaky"] = [ConnectionResetError("reset"), ConnectionRefusedError("refused")]
    RAISES["net::bug"] = [ConnectionResetError("reset"), TypeError("bad operand")]
    async with open_engine(workflows=[flow]) as engine:
        t0 = trio.current_time()
        ok = await engine.wait(await engine.start_instance(flow, id="net::flaky"))
        bug = await engine.wait(await engine.start_instance(flow, id="net::bug"))

    assert [t - t0 for t in RUNS["net::flaky"]] == [0, 2, 4]
    assert ok.status is Status.COMPLETED
    assert [
        (e.attempt, e.error.exception_type if e.error else None) for e in ok.execution_history
    ] == [
        (1, "ConnectionResetError"),
        (2, "ConnectionRefusedError"),
        (3, None),
        (1, None),  # the Done step
    ]
    assert ok.completions[0].attempt == 3

    assert len(RUNS["net::bug"]) == 2  # the TypeError is not retried
    assert bug.status is Status.FAILED
    assert bug.error is not None
    assert (bug.error.kind, bug.error.attempt, bug.error.exception_type) == (
        "crash",
        2,
        "TypeError",
    )
    assert [e.attempt for e in bug.failed_attempts("call")] == [1, 2]


async def test_give_up_on_wins_over_retry_on(autojump_clock: Any) -> None:
    policy = RetryPolicy(
        max_attempts=4,
        backoff="constant",
        base=1.0,
        retry_on=(LookupError,),
        give_up_on=(KeyError,),
    )
    flow = make_flow(policy, "lookup")
    RAISES["lookup::a"] = [IndexError("no row"), KeyError("k")]
    async with open_engine(workflows=[flow]) as engine:
        final = await engine.wait(await engine.start_instance(flow, id="lookup::a"))

    assert len(RUNS["lookup::a"]) == 2  # IndexError retried, KeyError given up on
    assert final.error is not None
    assert (final.error.exception_type, final.error.attempt) == ("KeyError", 2)


async def test_timeouts_are_retried_whatever_retry_on_says(autojump_clock: Any) -> None:
    class Slow(Step):
        events = ("done",)
        timeout = 3
        retry = RetryPolicy(max_attempts=2, backoff="constant", base=1.0, retry_on=(OSError,))

        async def execute(self, instance: Instance, config: Any, context: Any) -> str:
            RUNS[instance.id].append(trio.current_time())
            if len(RUNS[instance.id]) == 1:
                await trio.sleep(10)
            return "done"

    class SlowFlow(Workflow, unique=Unique(key="slowish")):
        start_at = Slow
        transitions = {(Slow, "done"): Done}

    async with open_engine(workflows=[SlowFlow]) as engine:
        t0 = trio.current_time()
        final = await engine.wait(await engine.start_instance(SlowFlow, id="slowish::a"))

    assert [t - t0 for t in RUNS["slowish::a"]] == [0, 4]
    assert final.status is Status.COMPLETED
    [failed] = final.failed_attempts("slow")
    assert failed.error is not None
    assert (failed.error.kind, failed.attempt) == ("timeout", 1)
    assert "TooSlowError" in (failed.error.traceback or "")


# -- persisted attempts --------------------------------------------------------------------


async def test_each_failed_attempt_is_written_before_the_next_attempt(
    storage: Storage, mock_clock: Any
) -> None:
    policy = RetryPolicy(max_attempts=3, backoff="constant", base=100.0, max_backoff=100.0)
    flow = make_flow(policy, "persist")
    RAISES["persist::a"] = [OSError("disk"), OSError("disk again")]
    async with open_engine(storage=storage, workflows=[flow]) as engine:
        iid = await engine.start_instance(flow, id="persist::a")
        while len(RUNS[iid]) < 1:
            await trio.sleep(1)
        await trio.sleep(50)  # inside the first backoff
        stored = await storage.get((await engine.get(iid)).run_id)
        assert stored is not None
        assert [(e.attempt, e.event) for e in stored.execution_history] == [(1, FAILED_ATTEMPT)]
        assert stored.status is Status.RUNNING
        assert stored.running_steps == {"call"}
        final = await engine.wait(iid)

    assert [e.attempt for e in final.execution_history] == [1, 2, 3, 1]
    # Read back from the storage: errors, tracebacks and attempt numbers persisted.
    stored = await _reopened(storage, final.run_id)
    assert stored == final
    first = stored.execution_history[0]
    assert first.error is not None
    assert first.error.message == "disk"
    assert "OSError: disk" in (first.error.traceback or "")


async def _reopened(storage: Storage, run_id: str) -> Instance:
    if isinstance(storage, SQLiteStorage):
        storage = SQLiteStorage(storage.path)
        async with storage:
            found = await storage.get(run_id)
    else:
        async with storage:
            found = await storage.get(run_id)
    assert found is not None
    return found


async def test_a_restart_in_the_middle_of_retries_continues_the_count(
    storage: Storage, mock_clock: Any
) -> None:
    """Engine A makes attempt 1 and closes during the backoff; B goes on with attempt 2.

    B waits what remains of the backoff (measured from the failed attempt's
    record), and the budget is not granted twice: max_attempts=3 means three
    attempts in all, across both engines.
    """
    policy = RetryPolicy(max_attempts=3, backoff="constant", base=10.0)
    flow = make_flow(policy, "restart")
    RAISES["restart::a"] = [RuntimeError(f"boom {k}") for k in range(1, 10)]
    clock = trio_wall_clock(datetime(2030, 1, 1, tzinfo=UTC))  # one wall clock for both
    async with open_engine(storage=storage, workflows=[flow], wall_clock=clock) as engine:
        t0 = trio.current_time()
        iid = await engine.start_instance(flow, id="restart::a")
        await trio.sleep(4)  # attempt 1 failed at t0; its backoff ends at t0 + 10
    assert RUNS[iid] == [t0]
    async with open_engine(storage=storage, workflows=[flow], wall_clock=clock) as engine:
        final = await engine.wait(iid)

    assert [t - t0 for t in RUNS[iid]] == [0, 10, 20]
    assert final.status is Status.FAILED
    assert final.error is not None
    assert (final.error.attempt, final.error.message) == (3, "boom 3")
    assert [e.attempt for e in final.failed_attempts("call")] == [1, 2, 3]


async def test_a_failed_run_announces_its_traceback(autojump_clock: Any) -> None:
    seen: list[dict[str, Any]] = []
    async with open_engine(
        workflows=[BuggyFlow], handlers=[lambda e: seen.append(dict(e.metadata))]
    ) as engine:
        await engine.wait(await engine.start_instance(BuggyFlow, id="buggy::two"))
    [failure] = [m for m in seen if "traceback" in m and m.get("will_retry") is None]
    assert "KeyError: 'missing'" in failure["traceback"]
    [attempt] = [m for m in seen if m.get("will_retry") is False]
    assert "in lookup" in attempt["traceback"]


# -- logging levels --------------------------------------------------------------------------


async def test_retries_log_at_warning_failures_at_error_with_the_traceback(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hephaestus_trio.fail")
    log = logging.getLogger("hephaestus_trio.fail")
    policy = RetryPolicy(max_attempts=2, backoff="constant", base=1.0)
    flow = make_flow(policy, "logged")
    RAISES["logged::a"] = [ConnectionError("first"), ValueError("second")]
    async with open_engine(workflows=[flow], handlers=[LoggingHandler(log)]) as engine:
        await engine.wait(await engine.start_instance(flow, id="logged::a"))

    records = [r for r in caplog.records if r.name == log.name]
    exceptions = [r for r in records if r.getMessage().startswith("[step.exception]")]
    assert [r.levelno for r in exceptions] == [logging.WARNING, logging.ERROR]
    retry, final = (r.getMessage() for r in exceptions)
    assert "will_retry=True" in retry
    assert "ConnectionError: first" in retry
    assert "Traceback (most recent call last)" in final
    assert final.rstrip().endswith("ValueError: second")
    [failed] = [r for r in records if r.getMessage().startswith("[workflow.exception]")]
    assert failed.levelno == logging.ERROR
    assert "ValueError: second" in failed.getMessage()
    assert "in execute" in failed.getMessage()


async def test_the_retry_level_can_be_changed(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hephaestus_trio.retry")
    log = logging.getLogger("hephaestus_trio.retry")
    policy = RetryPolicy(max_attempts=2, backoff="constant", base=1.0)
    flow = make_flow(policy, "quiet")
    RAISES["quiet::a"] = [ConnectionError("first")]
    handler = LoggingHandler(log, retry_level=logging.INFO)
    async with open_engine(workflows=[flow], handlers=[handler]) as engine:
        await engine.wait(await engine.start_instance(flow, id="quiet::a"))
    [retry] = [r for r in caplog.records if r.getMessage().startswith("[step.exception]")]
    assert retry.levelno == logging.INFO


async def test_a_cancel_during_retries_keeps_the_failed_attempts(
    storage: Storage, mock_clock: Any
) -> None:
    policy = RetryPolicy(max_attempts=5, backoff="constant", base=30.0)
    flow = make_flow(policy, "cancelled")
    RAISES["cancelled::a"] = [TimeoutError(f"upstream {k}") for k in range(1, 6)]
    async with open_engine(storage=storage, workflows=[flow]) as engine:
        iid = await engine.start_instance(flow, id="cancelled::a")
        while len(RUNS[iid]) < 2:
            await trio.sleep(1)
        cancelled = await engine.cancel(iid)
        await trio.sleep(100)
        assert len(RUNS[iid]) == 2  # no attempt after the cancel
        assert await engine.get(iid) == cancelled
    assert cancelled.status is Status.CANCELLED
    assert [
        (e.attempt, e.error.message if e.error else None) for e in cancelled.execution_history
    ] == [
        (1, "upstream 1"),
        (2, "upstream 2"),
    ]
