"""``Debug``: log the context and history at DEBUG, then continue."""

from __future__ import annotations

import logging
from typing import Any

from ..core._instance import Context, Instance
from ..core._step import Step

__all__ = ["Debug"]

logger = logging.getLogger("hephaestus_trio.steps.debug")


class Debug(Step):
    """Log the run's context and execution history at DEBUG; emits ``"completed"``."""

    events = ("completed",)

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        logger.debug(
            "debug %s: context=%r history=%r",
            instance.id,
            {"initial": dict(context.initial), "steps": dict(context.steps)},
            [(e.step, e.event, e.attempt) for e in instance.execution_history],
        )
        return "completed"
