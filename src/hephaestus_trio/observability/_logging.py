"""A ``logging`` handler for events, at levels an operator can filter on.

The levels say what needs a person: ERROR is a failure (a run failed, or a
step gave up: the record carries the traceback), WARNING something that may
need attention but heals itself (a failed attempt that will be retried, a
restart), INFO the normal life of a run (a step parked waiting for the
outside world is normal, not a warning), DEBUG the engine's internals.
"""

from __future__ import annotations

import logging

from ._events import Event

__all__ = ["DEFAULT_LEVELS", "RETRY_LEVEL", "LoggingHandler"]

DEFAULT_LEVELS: dict[str, int] = {
    "workflow.start": logging.INFO,
    "workflow.stop": logging.INFO,
    "workflow.exception": logging.ERROR,
    "workflow.transition": logging.DEBUG,
    "step.start": logging.INFO,
    "step.stop": logging.INFO,
    "step.exception": logging.ERROR,
    "step.async": logging.INFO,
    "step.resume": logging.INFO,
    "engine.advance": logging.DEBUG,
    "runner.init": logging.INFO,
    "instance.restart": logging.WARNING,
    "instance.cancel": logging.INFO,
}
"""``workflow.*``, ``step.start|stop|async|resume`` and ``runner.init`` at INFO,
``instance.restart`` at WARNING, exceptions at ERROR, ``workflow.transition`` and
``engine.advance`` at DEBUG. A ``step.exception`` whose attempt will be retried
(``will_retry``) logs at ``RETRY_LEVEL`` instead."""

RETRY_LEVEL = logging.WARNING
"""Level of a ``step.exception`` that will be retried: the step may still succeed."""


class LoggingHandler:
    """Log every event it receives; pass it to ``subscribe`` or ``open_engine(handlers=)``.

    A failure's traceback (metadata ``traceback`` of ``step.exception`` and
    ``workflow.exception``) is logged after the one-line summary, on lines of
    its own, as ``logger.exception`` would show it.

    Synopsis::

        engine.subscribe(LoggingHandler())
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        levels: dict[str, int] | None = None,
        *,
        retry_level: int = RETRY_LEVEL,
    ) -> None:
        self.logger = logger or logging.getLogger("hephaestus_trio")
        self.levels = {**DEFAULT_LEVELS, **(levels or {})}
        self.retry_level = retry_level

    def __call__(self, event: Event) -> None:
        level = self.levels.get(event.name, logging.INFO)
        meta = event.metadata
        if event.name == "step.exception" and meta.get("will_retry"):
            level = self.retry_level
        if not self.logger.isEnabledFor(level):
            return
        where = meta.get("instance_id", "")
        step = meta.get("step")
        # The traceback goes on lines of its own; an exception object (for
        # handlers that record it) is already summarised by ``error``.
        skip = {"instance_id", "step", "traceback", "exception"}
        detail = " ".join(f"{k}={v}" for k, v in meta.items() if k not in skip)
        measured = " ".join(f"{k}={v:.6g}" for k, v in event.measurements.items())
        text = f"[{event.name}] {where}" + (f" step={step}" if step else "")
        trace = meta.get("traceback")
        if isinstance(trace, str) and trace:
            self.logger.log(level, "%s %s %s\n%s", text, detail, measured, trace.rstrip("\n"))
        else:
            self.logger.log(level, "%s %s %s", text, detail, measured)
