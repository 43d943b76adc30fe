"""Event names and the frozen ``Event`` value every handler receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, final

import attrs

__all__ = ["EVENT_NAMES", "Event"]

EVENT_NAMES: tuple[str, ...] = (
    "workflow.start",
    "workflow.stop",
    "workflow.exception",
    "workflow.transition",
    "step.start",
    "step.stop",
    "step.exception",
    "step.async",
    "step.resume",
    "engine.advance",
    "runner.init",
    "instance.restart",
    "instance.cancel",
    "incarnation.start",
    "incarnation.stop",
    "storage.commit",
)
"""The original's eleven events (dotted) plus ``instance.restart`` and ``instance.cancel``,
and three for tracing and metrics: ``incarnation.start`` / ``incarnation.stop`` bracket
one engine's drive of a run (from its claim to its hibernation, terminal state, lease
loss or engine stop) and ``storage.commit`` times each fenced write of a run."""


@final
@attrs.frozen(kw_only=True)
class Event:
    """One observation: ``name``, numeric ``measurements`` and descriptive ``metadata``.

    Durations are float seconds under ``measurements["duration"]``; the step
    key is ``metadata["step"]``; the run's ``telemetry_metadata`` is merged
    into ``metadata``.
    """

    name: str
    """One of ``EVENT_NAMES``."""
    measurements: Mapping[str, float] = attrs.field(factory=dict)
    """Numbers: ``duration`` (seconds), ``attempt``, counts."""
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    """``instance_id``, ``run_id``, ``workflow``, ``workflow_version``, ``step``, ..."""
