"""Workflows the tracing and metrics tests drive: one behaviour each."""

from __future__ import annotations

from typing import Any

import trio

from hephaestus_trio import Done, Fail, RetryPolicy, Step, Suspend, Unique, Workflow

ATTEMPTS: dict[str, int] = {}
"""Attempts of ``Flaky`` per instance id (reset by the tests' fixture)."""


class Flaky(Step):
    """Raises ``KeyError('missing')`` on its first attempt, then emits ``ok``."""

    events = ("ok",)
    retry = RetryPolicy(max_attempts=2, backoff="constant", base=0.5)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        ATTEMPTS[instance.id] = ATTEMPTS.get(instance.id, 0) + 1
        if ATTEMPTS[instance.id] == 1:
            raise KeyError("missing")
        return "ok"


class Slow(Step):
    """Takes 1.5 s."""

    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(1.5)
        return "ok"


class Linear(Workflow, unique=Unique(key="linear")):
    start_at = Flaky
    transitions = {(Flaky, "ok"): Slow, (Slow, "ok"): Done}


class Gate(Step):
    """Parks until resumed with ``open``."""

    events = ("open",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend()


class Gated(Workflow, unique=Unique(key="gated")):
    start_at = Gate
    transitions = {(Gate, "open"): Done}


class Late(Step):
    """Takes 3 s, then parks until resumed with ``go``."""

    events = ("go",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        await trio.sleep(3)
        return Suspend()


class EarlyResume(Workflow, unique=Unique(key="early")):
    start_at = Late
    transitions = {(Late, "go"): Done}


class Pause(Step):
    """Parks with a durable 5 s timer delivering ``wake``."""

    events = ("wake",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend(after=5.0, event="wake")


class Timed(Workflow, unique=Unique(key="timed")):
    start_at = Pause
    transitions = {(Pause, "wake"): Done}


class Refuse(Step):
    """A business failure."""

    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Fail:
        return Fail("out of stock")


class Refusing(Workflow, unique=Unique(key="refusing")):
    start_at = Refuse
    transitions = {(Refuse, "ok"): Done}


class Broken(Step):
    """Always raises ``KeyError('missing')``; no retries."""

    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        raise KeyError("missing")


class Crashing(Workflow, unique=Unique(key="crashing")):
    start_at = Broken
    transitions = {(Broken, "ok"): Done}


class Sluggish(Step):
    """Times out: 5 s of work under a 1 s timeout."""

    events = ("ok",)
    timeout = 1.0

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(5)
        return "ok"


class TimingOut(Workflow, unique=Unique(key="timing")):
    start_at = Sluggish
    transitions = {(Sluggish, "ok"): Done}


class Nap(Step):
    """Takes 10 s: long enough to stop an engine or lose a lease in the middle."""

    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(10)
        return "ok"


class Napping(Workflow, unique=Unique(key="napping")):
    start_at = Nap
    transitions = {(Nap, "ok"): Done}


class Quick(Workflow, unique=Unique(key="quick")):
    start_at = Done
    transitions = {}


ALL = [Quick, Linear, Gated, EarlyResume, Timed, Refusing, Crashing, TimingOut, Napping]
