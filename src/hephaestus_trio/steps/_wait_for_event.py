"""``WaitForEvent``: park until an outside event (or an optional timeout)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import InvalidValue
from ..core._instance import Context, Instance
from ..core._step import Step, Suspend

__all__ = ["WaitForEvent"]


def _timeout(config: Mapping[str, Any] | None) -> float | None:
    if not config or config.get("timeout") is None:
        return None
    value = config["timeout"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValue(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


class WaitForEvent(Step):
    """Park until resumed with ``"received"`` (or the configured ``event_name``).

    Config: ``{"event_name": "payment_confirmed", "timeout": 60}``, both
    optional. With a timeout the step also declares ``"timeout"``, which a
    durable timer delivers unless the event arrives first.
    """

    events = ("received",)

    @classmethod
    def declared_events(cls, config: Mapping[str, Any] | None) -> tuple[str, ...]:
        if _timeout(config) is not None:
            return ("received", "timeout")
        return ("received",)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any] | None) -> None:
        _timeout(config)
        name = (config or {}).get("event_name")
        if name is not None and (not isinstance(name, str) or not name):
            raise InvalidValue(f"event_name must be a non-empty string, got {name!r}")

    @classmethod
    def resume_event(cls, config: Mapping[str, Any] | None, event: str) -> str | None:
        if config and event == config.get("event_name"):
            return "received"
        return super().resume_event(config, event)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Suspend:
        timeout = _timeout(config)
        return Suspend(after=timeout, event="timeout")
