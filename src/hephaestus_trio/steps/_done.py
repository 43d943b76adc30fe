"""``Done``: the terminal step every path of a workflow ends in."""

from __future__ import annotations

from typing import Any

from ..core._instance import Context, Instance
from ..core._step import Step

__all__ = ["Done"]


class Done(Step):
    """Terminal step: emits ``"done"``; the run completes once nothing else is active."""

    events = ("done",)
    terminal = True

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        return "done"
