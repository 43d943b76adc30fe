"""JSON-safety: what may go into a context so that it round-trips unchanged."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_json_safe"]


def check_json_safe(value: Any, path: str = "value") -> None:
    """Raise ``TypeError`` naming the key path if ``value`` would not round-trip.

    Allowed: dicts with string keys, lists, strings, ints, finite floats, bools
    and ``None``. Tuples are refused (they would come back as lists) and so are
    NaN and infinities (not JSON).
    """
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path} is {value!r}: NaN and infinities are not JSON-safe")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{path} has key {key!r} of type {type(key).__name__}: "
                    "only string keys are JSON-safe"
                )
            check_json_safe(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_json_safe(item, f"{path}[{index}]")
        return
    hint = " (use a list)" if isinstance(value, tuple | set | frozenset) else ""
    raise TypeError(
        f"{path} is a {type(value).__name__}, which is not JSON-safe{hint}; "
        "contexts hold only dict, list, str, int, float, bool and None"
    )
