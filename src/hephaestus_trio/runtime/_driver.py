"""Transient supervision of one owned run: restart its loop after a crash, within a budget.

This is the OTP *transient* strategy on top of plain nurseries. An
incarnation that returns (terminal, hibernating) is not restarted. One that
raises is classified first:

- ``LeaseLost``: another engine owns the run now. Stop at once, write nothing:
  not a crash, so no restart and no failure.
- ``StorageFault``: the storage failed (disk full, I/O error). Not a bug in
  the run's code either: back off (capped exponential, on Trio's clock) and
  start again from the last persisted state, without spending the budget.
- anything else is a crash: restart while ``RestartPolicy.should_restart``
  allows it; past the budget, one last incarnation writes ``failed``.

Nothing here propagates an exception into the root nursery, so one poison
run never disturbs another.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from .._errors import LeaseLost
from ._incarnation import Incarnation, StorageFault
from ._runs import RunEntry

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["drive"]

logger = logging.getLogger("hephaestus_trio.runtime")

FAULT_FIRST_DELAY = 0.05
"""Seconds before the first retry after a storage fault; doubles up to the cap."""
FAULT_MAX_DELAY = 5.0
"""Cap of the storage-fault backoff: a storage that comes back is used within this."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _classify(exc: BaseException) -> tuple[str, BaseException]:
    leaves = _leaves(exc)
    for leaf in leaves:
        if isinstance(leaf, LeaseLost):
            return "lost", leaf
    crashes = [leaf for leaf in leaves if not isinstance(leaf, StorageFault)]
    if not crashes:
        return "fault", leaves[0]
    return "crash", crashes[0]


async def drive(engine: Engine, entry: RunEntry) -> None:
    """Run incarnations of ``entry``'s run until it stops, hibernates or is lost."""
    policy = engine.restart_policy
    restarts: list[float] = []
    fault_delay = FAULT_FIRST_DELAY
    try:
        while not entry.lost:
            entry.scope = trio.CancelScope()
            try:
                with entry.scope:
                    await Incarnation(engine, entry).run()
                return
            except (Exception, BaseExceptionGroup) as exc:
                if isinstance(exc, BaseExceptionGroup):
                    _, rest = exc.split(Exception)
                    if rest is not None:
                        raise  # a Cancelled or KeyboardInterrupt travels on
                kind, cause = _classify(exc)
            if kind == "lost":
                logger.info("run %s: lease lost (%s); stopped here", entry.run_id, cause)
                return
            if kind == "fault":
                logger.warning(
                    "run %s: storage failed (%s); retrying in %.2fs",
                    entry.run_id,
                    cause.__cause__ or cause,
                    fault_delay,
                )
                await trio.sleep(fault_delay)
                fault_delay = min(fault_delay * 2, FAULT_MAX_DELAY)
                continue
            fault_delay = FAULT_FIRST_DELAY
            now = trio.current_time()
            if policy.should_restart(restarts, now):
                restarts.append(now)
                logger.warning("run %s crashed (%r); restarting", entry.run_id, cause)
                engine.bus.emit(
                    "instance.restart",
                    {"restarts": float(len(restarts))},
                    {**entry.metadata, "error": repr(cause)},
                )
                continue
            await _give_up(engine, entry, cause, len(restarts))
            return
    finally:
        engine._driver_done(entry)


async def _give_up(engine: Engine, entry: RunEntry, crash: BaseException, restarts: int) -> None:
    """Fail the run for good through one last incarnation (the loop's own write path).

    The storage may be what keeps failing: retry with a capped backoff rather
    than leave a live run with no driver. Closing the engine or losing the
    lease stops this; the run is then recovered by whoever claims it next.
    """
    delay = FAULT_FIRST_DELAY
    while not entry.lost:
        entry.scope = trio.CancelScope()
        try:
            with entry.scope:
                await Incarnation(engine, entry).fail_for_good(crash, restarts)
            return
        except LeaseLost:
            return
        except Exception:
            logger.exception(
                "run %s: could not record its failure; retrying in %.2fs", entry.run_id, delay
            )
        await trio.sleep(delay)
        delay = min(delay * 2, FAULT_MAX_DELAY)
