"""Row (s): the engine's task structure with no engine in it.

A bare-Trio program with the shape the SPEC fixes for a run, and nothing
else: per run a supervisor task, a cancel scope around each incarnation
(here one), a child nursery and a mailbox (an unbounded memory channel) of
its own, and a loop that runs the steps, as the engine's incarnation loop
does: the run's only ready step runs inline in the loop, fan-out branches run
as tasks in the child nursery and report to the mailbox. No state machine, no
storage, no events, no per-step cancel scopes. It is the ceiling for any
engine of that shape: engine/skeleton is what the engine's own work costs,
skeleton/bare what the shape costs before the engine does anything.
"""

from __future__ import annotations

import math
import time
from typing import Any

import trio

from ._flows import Charge, Reserve, Ship, Validate

__all__ = ["skeleton_order", "skeleton_throughput"]

_STEPS: dict[str, Any] = {
    "validate": Validate(),
    "charge": Charge(),
    "reserve": Reserve(),
    "ship": Ship(),
}
_NEXT: dict[str, tuple[str, ...]] = {
    "validate": ("charge", "reserve"),
    "charge": ("ship",),
    "reserve": ("ship",),
    "ship": (),
}
_JOIN: dict[str, frozenset[str]] = {"ship": frozenset({"charge", "reserve"})}
"""Steps that wait for all their predecessors (row a's DAG joins at ``ship``)."""


async def _branch(key: str, mailbox: trio.MemorySendChannel[str]) -> None:
    await _STEPS[key].execute(None, None, None)
    await mailbox.send(key)


async def _incarnation(mailbox: trio.MemorySendChannel[str], inbox: Any) -> None:
    """The run's loop: start what is ready, wait for a report, until nothing is left."""
    completed: set[str] = set()
    ready, running = ["validate"], 0
    async with trio.open_nursery() as nursery:
        while ready or running:
            if len(ready) == 1 and not running:
                # The only active step: run it in the loop task, as the engine does.
                key = ready.pop()
                await _STEPS[key].execute(None, None, None)
            else:
                for key in ready:
                    nursery.start_soon(_branch, key, mailbox)
                running += len(ready)
                ready = []
                key = await inbox.receive()
                running -= 1
            completed.add(key)
            for following in _NEXT[key]:
                if _JOIN.get(following, frozenset()) <= completed:
                    ready.append(following)
        nursery.cancel_scope.cancel()


async def skeleton_order() -> None:
    """One run: the supervisor, its incarnation's scope, the child nursery and the mailbox."""
    mailbox, inbox = trio.open_memory_channel[str](math.inf)
    with trio.CancelScope():  # the supervisor's scope around one incarnation
        await _incarnation(mailbox, inbox)


async def skeleton_throughput(count: int) -> float:
    """Runs per second: ``count`` skeleton runs started concurrently, until all finished."""
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(skeleton_order)
    return count / (time.perf_counter() - started)
