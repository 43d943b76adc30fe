"""Workflows the CLI tests park and resume (also imported by file path via --workflow-module).

When ``HEPHAESTUS_TEST_STEP_LOG`` names a file, every step execution appends
``"<instance_id> <step_key> <pid>"`` to it: the tests set it in their own
process too, so a step executed by the command line would show up under the
test's pid.
"""

from __future__ import annotations

import os
from typing import Any

import trio

from hephaestus_trio import (
    Complete,
    Context,
    Done,
    Instance,
    RetryPolicy,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
)

STEP_LOG = "HEPHAESTUS_TEST_STEP_LOG"


def record(instance: Instance, step_key: str) -> None:
    """Append one execution to the step log, if one is configured."""
    path = os.environ.get(STEP_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as log:
            log.write(f"{instance.id} {step_key} {os.getpid()}\n")


class Prepare(Step):
    events = ("ok",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Complete:
        record(instance, "prepare")
        return Complete("ok", updates={"prepared": True})


class Finish(Step):
    events = ("ok",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        record(instance, "finish")
        return "ok"


class Approval(Workflow, unique=Unique(key="approval"), name="tests.cli.Approval"):
    """prepare -> wait_for_event (accepts "approved") -> finish -> done."""

    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "approved"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


class Linger(Step):
    """Runs for a minute: long enough to be cancelled while it runs."""

    events = ("ok",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        record(instance, "linger")
        await trio.sleep(60)
        return "ok"


class Lingering(Workflow, unique=Unique(key="lingering"), name="tests.cli.Lingering"):
    """linger -> done."""

    start_at = Linger
    transitions = {(Linger, "ok"): Done}


class Explode(Step):
    """A bug: looks up a key that is not there, on every attempt (two, quickly)."""

    events = ("ok",)
    retry = RetryPolicy(max_attempts=2, backoff="constant", base=0.01)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        record(instance, "explode")
        return str({}["missing"])


class Broken(Workflow, unique=Unique(key="broken"), name="tests.cli.Broken"):
    """explode (always raises KeyError) -> done: a run that fails with a crash."""

    start_at = Explode
    transitions = {(Explode, "ok"): Done}
