"""Row (j): the test kit's crash check on a 5-step workflow, against plain runs of it.

The engine side is ``check_crash_safety`` with 100 examples (each a run with up
to three crashes and the reopens they need, plus the two crash-free runs the
check starts with). The baseline runs the same workflow the same number of
times (102) with the same harness shape, one ``trio.run`` under an
autojumping ``MockClock`` with an engine on a fresh ``MemoryStorage`` each,
without crashes, audit or Hypothesis: what the runs themselves cost.

Both sides are measured in CPU seconds of this process (``time.process_time``):
nothing here waits on I/O or real time (memory storage, virtual time), so on
an idle machine wall time is the same, and on a shared one the CPU time does
not count the time other processes held the CPU.
"""

from __future__ import annotations

import random
import time

import trio
import trio.testing
from hypothesis import settings

from hephaestus_trio import (
    Complete,
    Done,
    MemoryStorage,
    Step,
    Unique,
    Wait,
    Workflow,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.testing import EPOCH, check_crash_safety

__all__ = ["EXAMPLES", "FiveSteps", "baseline_runs", "crash_check"]

EXAMPLES = 100


class Validate(Step):
    events = ("valid",)

    async def execute(self, instance, config, context):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return Complete("valid", {"items": context.initial["items"]})


class Charge(Step):
    events = ("charged",)

    async def execute(self, instance, config, context):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return Complete("charged", {"amount": 10 * context.steps["validate"]["items"]})


class Reserve(Step):
    events = ("reserved",)

    async def execute(self, instance, config, context):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return Complete("reserved", {"bin": "a1"})


class Ship(Step):
    events = ("shipped",)

    async def execute(self, instance, config, context):  # type: ignore[no-untyped-def]
        await trio.lowlevel.checkpoint()
        return Complete("shipped", {"tracking": "trk-1"})


class FiveSteps(Workflow, unique=Unique(key="benchcrash")):
    """validate -> [charge, reserve] -> ship -> wait 1 h -> done."""

    start_at = Validate
    transitions = {
        (Validate, "valid"): [Charge, Reserve],
        (Charge, "charged"): Ship,
        (Reserve, "reserved"): Ship,
        (Ship, "shipped"): (Wait, {"duration": 1, "unit": "hour"}),
        (Wait, "timeout"): Done,
    }


def crash_check(examples: int = EXAMPLES) -> float:
    """CPU seconds ``check_crash_safety`` takes for ``examples`` crash plans."""
    started = time.process_time()
    check_crash_safety(
        FiveSteps,
        {"items": 3},
        examples=examples,
        settings=settings(database=None, derandomize=True),
    )
    return time.process_time() - started


async def _one_run() -> None:
    async with open_engine(
        MemoryStorage(), [FiveSteps], wall_clock=trio_wall_clock(EPOCH), rng=random.Random(0)
    ) as engine:
        iid = await engine.start_instance(FiveSteps, {"items": 3}, id="benchcrash::crashcheck")
        await engine.wait(iid)


def baseline_runs(examples: int = EXAMPLES) -> float:
    """CPU seconds for ``examples + 2`` plain runs of the same workflow, a ``trio.run`` each."""
    started = time.process_time()
    for _ in range(examples + 2):
        trio.run(_one_run, clock=trio.testing.MockClock(autojump_threshold=0))
    return time.process_time() - started
