"""A ``logging`` handler for events, with the original library's default levels."""

from __future__ import annotations

import logging

from ._events import Event

__all__ = ["DEFAULT_LEVELS", "LoggingHandler"]

DEFAULT_LEVELS: dict[str, int] = {
    "workflow.start": logging.INFO,
    "workflow.stop": logging.INFO,
    "workflow.exception": logging.ERROR,
    "workflow.transition": logging.DEBUG,
    "step.start": logging.INFO,
    "step.stop": logging.INFO,
    "step.exception": logging.ERROR,
    "step.async": logging.WARNING,
    "step.resume": logging.INFO,
    "engine.advance": logging.DEBUG,
    "runner.init": logging.INFO,
    "instance.restart": logging.WARNING,
    "instance.cancel": logging.INFO,
    "incarnation.start": logging.DEBUG,
    "incarnation.stop": logging.DEBUG,
    "storage.commit": logging.DEBUG,
}
"""``workflow.*``, ``step.start|stop|resume`` and ``runner.init`` at INFO, ``step.async``
at WARNING, exceptions at ERROR; ``workflow.transition``, ``engine.advance``,
``incarnation.*`` and ``storage.commit`` at DEBUG."""

_NOT_LOGGED = frozenset({"instance_id", "step", "exception", "trace_context"})
"""Metadata keys left out of the detail text: shown elsewhere in the line, already
rendered by ``error``, or only meant for tracing handlers."""


class LoggingHandler:
    """Log every event it receives; pass it to ``subscribe`` or ``open_engine(handlers=)``.

    Synopsis::

        engine.subscribe(LoggingHandler())
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        levels: dict[str, int] | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger("hephaestus_trio")
        self.levels = {**DEFAULT_LEVELS, **(levels or {})}

    def __call__(self, event: Event) -> None:
        level = self.levels.get(event.name, logging.INFO)
        if not self.logger.isEnabledFor(level):
            return
        meta = event.metadata
        where = meta.get("instance_id", "")
        step = meta.get("step")
        detail = " ".join(f"{k}={v}" for k, v in meta.items() if k not in _NOT_LOGGED)
        measured = " ".join(f"{k}={v:.6g}" for k, v in event.measurements.items())
        text = f"[{event.name}] {where}" + (f" step={step}" if step else "")
        self.logger.log(level, "%s %s %s", text, detail, measured)
