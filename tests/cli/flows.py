"""Workflows the CLI tests park and resume (also imported by file path via --workflow-module)."""

from __future__ import annotations

from typing import Any

from hephaestus_trio import Complete, Context, Done, Instance, Step, Unique, WaitForEvent, Workflow


class Prepare(Step):
    events = ("ok",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Complete:
        return Complete("ok", updates={"prepared": True})


class Finish(Step):
    events = ("ok",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        return "ok"


class Approval(Workflow, unique=Unique(key="approval"), name="tests.cli.Approval"):
    """prepare -> wait_for_event (accepts "approved") -> finish -> done."""

    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "approved"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }
