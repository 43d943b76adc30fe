"""The workflows the benchmarks run, and the step code the baselines share.

Every step body is one checkpoint (a real step yields at least once, on I/O)
followed by its event. The bare-Trio baselines call the *same* ``execute``
methods, so both sides run identical step code and the difference is the
engine.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from hephaestus_trio import Context, Done, Instance, Step, Unique, Wait, WaitForEvent, Workflow

__all__ = [
    "BenchOrder",
    "Charge",
    "Mark",
    "Parked",
    "Reserve",
    "Ship",
    "Validate",
    "WeekParked",
    "mark_times",
    "mark_waiters",
]


class Validate(Step):
    events = ("valid",)

    async def execute(self, instance: Instance | None, config: Any, context: Context | None) -> str:
        await trio.lowlevel.checkpoint()
        return "valid"


class Charge(Step):
    events = ("charged",)

    async def execute(self, instance: Instance | None, config: Any, context: Context | None) -> str:
        await trio.lowlevel.checkpoint()
        return "charged"


class Reserve(Step):
    events = ("reserved",)

    async def execute(self, instance: Instance | None, config: Any, context: Context | None) -> str:
        await trio.lowlevel.checkpoint()
        return "reserved"


class Ship(Step):
    events = ("shipped",)

    async def execute(self, instance: Instance | None, config: Any, context: Context | None) -> str:
        await trio.lowlevel.checkpoint()
        return "shipped"


class BenchOrder(Workflow, unique=Unique(key="order"), name="bench.BenchOrder"):
    """validate -> [charge, reserve] -> ship -> done (no Wait)."""

    start_at = Validate
    transitions = {
        (Validate, "valid"): [Charge, Reserve],
        (Charge, "charged"): Ship,
        (Reserve, "reserved"): Ship,
        (Ship, "shipped"): Done,
    }


mark_times: dict[str, float] = {}
"""Business id -> ``perf_counter()`` when its ``Mark`` step started."""
mark_waiters: dict[str, trio.Event] = {}
"""Business id -> event set when its ``Mark`` step ran (registered by the bench)."""


class Mark(Step):
    """The step after the resume: records when it started."""

    events = ("marked",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        mark_times[instance.id] = time.perf_counter()
        waiter = mark_waiters.pop(instance.id, None)
        if waiter is not None:
            waiter.set()
        await trio.lowlevel.checkpoint()
        return "marked"


class WeekParked(Workflow, unique=Unique(key="weekparked"), name="bench.WeekParked"):
    """wait 7 days (a durable timer: the run hibernates with it pending) -> done."""

    start_at = (Wait, {"duration": 7, "unit": "day"})
    transitions = {(Wait, "timeout"): Done}


class Parked(Workflow, unique=Unique(key="parked"), name="bench.Parked"):
    """wait_for_event (no timeout: the run hibernates) -> mark -> done."""

    start_at = WaitForEvent
    transitions = {
        (WaitForEvent, "received"): Mark,
        (Mark, "marked"): Done,
    }
