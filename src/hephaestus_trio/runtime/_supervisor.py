"""Transient supervision of one run: restart its task after a crash, within a budget.

This is the OTP *transient* strategy on top of plain nurseries: an
incarnation that returns (terminal, hibernating, or cancelled by
``engine.cancel``) is not restarted; one that raises is restarted from the
last persisted state while ``RestartPolicy.should_restart`` allows it; past
the budget the run is marked failed. Nothing here can propagate an
exception into the root nursery, so one poison run never disturbs another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from ..core import _engine as pure
from ..core._instance import ErrorRecord
from ._instance_task import run_incarnation
from ._runner import Runner

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["supervise"]

logger = logging.getLogger("hephaestus_trio.runtime")

_GIVE_UP_FIRST_DELAY = 0.1
_GIVE_UP_MAX_DELAY = 30.0


def _leaf(group: BaseExceptionGroup[Exception]) -> Exception:
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup):
        first = first.exceptions[0]
    assert isinstance(first, Exception)
    return first


async def supervise(engine: Engine, runner: Runner) -> None:
    """Run incarnations of ``runner``'s run until it ends normally or exhausts its budget."""
    policy = engine.restart_policy
    restarts: list[float] = []
    try:
        while True:
            crash: Exception | None = None
            try:
                with trio.CancelScope() as scope:
                    runner.scope = scope
                    if runner.cancel_requested:
                        scope.cancel()
                    await run_incarnation(engine, runner)
            except* Exception as group:
                crash = _leaf(group)
            runner.scope = None
            if crash is None:
                return
            now = trio.current_time()
            if runner.cancel_requested:
                return
            if policy.should_restart(restarts, now):
                restarts.append(now)
                runner.state.value = "starting"
                logger.warning("run %s crashed (%r); restarting", runner.run_id, crash)
                engine.bus.emit(
                    "instance.restart",
                    {"restarts": float(len(restarts))},
                    {**runner.metadata, "error": repr(crash)},
                )
                continue
            runner.state.value = "stopped"  # engine calls stop waiting for this run
            await _give_up(engine, runner, crash, len(restarts))
            return
    finally:
        runner.state.value = "stopped"
        runner.stopped.set()
        engine._unregister(runner)


async def _give_up(engine: Engine, runner: Runner, crash: Exception, restarts: int) -> None:
    policy = engine.restart_policy
    message = (
        f"instance task crashed {restarts + 1} times; restart intensity "
        f"max_restarts={policy.max_restarts} within={policy.within}s exceeded; "
        f"last error: {crash!r}"
    )
    error = ErrorRecord(
        kind="restart_limit",
        message=message,
        exception_type=type(crash).__qualname__,
    )
    # The storage may be what keeps failing: retry the final write with a
    # capped backoff rather than leave a live run with no task behind. Only
    # closing the engine stops this (the next engine recovers the run).
    delay = _GIVE_UP_FIRST_DELAY
    while not runner.cancel_requested:  # engine.cancel takes over the final write
        try:
            instance = await engine.storage.get(runner.run_id)
            if instance is None or instance.is_terminal:
                return
            pending = [r.seq for r in await engine.storage.pending_resumes(runner.run_id)]
            failed = pure.fail(instance, error, at=engine.clock.now())
            await engine.storage.put(failed, consume=pending)
            break
        except Exception:
            logger.exception(
                "run %s: could not record its failure; retrying in %.1fs", runner.run_id, delay
            )
        await trio.sleep(delay)
        delay = min(delay * 2, _GIVE_UP_MAX_DELAY)
    else:
        return
    runner.instance = failed
    # _finished announces workflow.exception (once) and workflow.stop.
    engine._finished(failed)
