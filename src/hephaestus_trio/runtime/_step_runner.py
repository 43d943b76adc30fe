"""One step, all its attempts: timeout scope, retries with backoff, threads for sync code.

Exceptions from ``execute`` are *crashes*: retried per the step's
``RetryPolicy`` (its budget, and ``retry_on``/``give_up_on``), then reported.
Each failed attempt that will be retried is reported too (``record``), so the
run's loop persists it before the next attempt can succeed: attempt numbers
continue across restarts. ``trio.Cancelled`` is never caught, so an instance
cancel or an engine shutdown stops a step at its next checkpoint.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from ..core._instance import Instance, format_traceback
from ..core._step import Complete, Fail, Step, StepResult, Suspend
from ._messages import AttemptFailed, Message, StepCrashed, StepFinished
from ._thread_clock import run_sync_step

__all__ = ["run_step"]

Emit = Callable[[str, Mapping[str, float], Mapping[str, Any]], None]


def _normalize(step_cls: type[Step], result: Any) -> StepResult:
    if isinstance(result, str):
        return Complete(result)
    if isinstance(result, Complete | Suspend | Fail):
        return result
    raise TypeError(
        f"step {step_cls.__name__}.execute returned {result!r}; expected an event string, "
        "Complete(...), Suspend() or Fail(...)"
    )


async def _attempt(step_cls: type[Step], instance: Instance, config: Any) -> StepResult:
    step = step_cls()
    if step_cls.is_async():
        result = await step.execute(instance, config, instance.context)  # type: ignore[misc]
    else:
        # In a worker thread, abandoned on cancel; under an autojumping mock
        # clock the clock is held meanwhile (see _thread_clock).
        call = functools.partial(step.execute, instance, config, instance.context)
        result = await run_sync_step(call, real_limit=step_cls.timeout)
    return _normalize(step_cls, result)


async def _backoff(step_key: str, seconds: float, backing_off: set[str] | None) -> None:
    if backing_off is None:
        await trio.sleep(seconds)
        return
    backing_off.add(step_key)
    try:
        await trio.sleep(seconds)
    finally:
        backing_off.discard(step_key)


async def run_step(
    *,
    step_key: str,
    step_cls: type[Step],
    config: Any,
    snapshot: Callable[[], Instance],
    report: Callable[[Message], Awaitable[None]],
    record: Callable[[AttemptFailed], Awaitable[None]],
    emit: Emit,
    metadata: Mapping[str, Any],
    rng: random.Random,
    first_attempt: int = 1,
    first_delay: float = 0.0,
    backing_off: set[str] | None = None,
    wants: Callable[[str], bool] | None = None,
) -> None:
    """Run ``step_key`` until it returns, gives up or exhausts its retries, then ``report`` it.

    ``first_attempt`` is the number of the first attempt made here (more than 1
    when failed attempts were persisted before a restart), ``first_delay``
    what remains of the backoff after the last of them. While the step sleeps
    in a backoff its key is in ``backing_off`` (the engine's statistics read it).
    ``wants`` tells whether anyone listens to an event, so that nobody pays for
    announcing what nobody hears.
    """
    policy = step_cls.retry
    attempt = first_attempt
    if first_delay > 0:
        await _backoff(step_key, first_delay, backing_off)
    while True:
        meta = {**metadata, "step": step_key, "attempt": attempt}
        if wants is None or wants("step.start"):
            emit("step.start", {"attempt": float(attempt)}, meta)
        started = trio.current_time()
        try:
            if step_cls.timeout is not None:
                with trio.fail_after(step_cls.timeout):
                    result = await _attempt(step_cls, snapshot(), config)
            else:
                result = await _attempt(step_cls, snapshot(), config)
        except Exception as exc:
            duration = trio.current_time() - started
            timed_out = isinstance(exc, trio.TooSlowError)
            retry = policy.should_retry(attempt, None if timed_out else exc)
            emit(
                "step.exception",
                {"duration": duration, "attempt": float(attempt)},
                {
                    **meta,
                    "error": repr(exc),
                    "kind": type(exc).__name__,
                    "will_retry": retry,
                    "traceback": format_traceback(exc),
                    "exception": exc,
                },
            )
            if retry:
                await record(AttemptFailed(step_key, exc, attempt, timed_out))
                await _backoff(step_key, policy.delay(attempt, rng), backing_off)
                attempt += 1
                continue
            await report(StepCrashed(step_key, exc, attempt, timed_out))
            return
        await report(StepFinished(step_key, result, attempt, trio.current_time() - started))
        return
