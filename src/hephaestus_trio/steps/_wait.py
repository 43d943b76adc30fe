"""``Wait``: park for a duration; the runtime arms a durable timer for it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import InvalidValue
from ..core._instance import Context, Instance
from ..core._step import Step, Suspend

__all__ = ["Wait", "wait_seconds"]

_UNITS = {"second": 1.0, "minute": 60.0, "hour": 3600.0, "day": 86400.0}


def wait_seconds(config: Mapping[str, Any] | None) -> float:
    """Seconds a ``Wait`` config asks for.

    Accepts ``{"duration": n, "unit": "second"|"minute"|"hour"|"day"}`` (unit
    defaults to ``second``; plurals accepted) or ``{"seconds": x}``.

    Raises:
        InvalidValue: missing or non-positive duration, or an unknown unit.
    """
    if not isinstance(config, Mapping):
        raise InvalidValue(
            'Wait needs a config: {"duration": 30, "unit": "second"} or {"seconds": 1.5}'
        )
    if "seconds" in config:
        if "duration" in config or "unit" in config:
            raise InvalidValue("give either seconds or duration/unit, not both")
        amount, factor = config["seconds"], 1.0
        what = "seconds"
    elif "duration" in config:
        unit = config.get("unit", "second")
        if not isinstance(unit, str) or unit.rstrip("s") not in _UNITS:
            raise InvalidValue(f"unknown unit {unit!r}; use one of {list(_UNITS)}")
        amount, factor = config["duration"], _UNITS[unit.rstrip("s")]
        what = "duration"
    else:
        raise InvalidValue(f'Wait config {dict(config)!r} has neither "duration" nor "seconds"')
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not amount > 0:
        raise InvalidValue(f"{what} must be a positive number, got {amount!r}")
    return float(amount) * factor


class Wait(Step):
    """Park for the configured duration, then continue with ``"timeout"``.

    The timer is durable: it survives crashes and engine restarts and fires
    at once on recovery if its time has passed.
    """

    events = ("timeout",)

    @classmethod
    def validate_config(cls, config: Mapping[str, Any] | None) -> None:
        wait_seconds(config)

    async def execute(self, instance: Instance, config: Any, context: Context) -> Suspend:
        return Suspend(after=wait_seconds(config), event="timeout")
