"""One cattrs converter for every persisted type, and JSON ``dumps``/``loads``.

Datetimes travel as ISO-8601 UTC strings, sets as sorted lists (so equal
instances serialize to equal text), enums as their values. Load failures
name the path of the bad field.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import cattrs

from .._errors import StorageError
from ._instance import Instance

__all__ = ["dumps", "from_dict", "loads", "make_converter", "to_dict"]


def _structure_datetime(value: Any, _: type) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp {value!r} has no timezone")
    return parsed.astimezone(UTC)


def _exactly(kind: type[Any]) -> Any:
    def structure(value: Any, _: type) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if type(value) is not kind:
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    return structure


def make_converter() -> cattrs.Converter:
    """A fresh converter configured for the instance model (never the global one)."""
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_unstructure_hook(datetime, lambda d: d.astimezone(UTC).isoformat())
    converter.register_structure_hook(datetime, _structure_datetime)
    # cattrs would coerce (str([1]) == "[1]"); a corrupt record must fail instead.
    for exact in (str, int, float, bool):
        converter.register_structure_hook(exact, _exactly(exact))
    # Sets are sorted so that equal instances serialize to equal text.
    keys, edges = frozenset[str], frozenset[tuple[str, str]]
    converter.register_unstructure_hook_func(lambda t: t == keys, lambda s: sorted(s))
    converter.register_structure_hook_func(lambda t: t == keys, lambda v, _: frozenset(v))
    converter.register_unstructure_hook_func(
        lambda t: t == edges, lambda s: [list(p) for p in sorted(s)]
    )
    converter.register_structure_hook_func(
        lambda t: t == edges, lambda v, _: frozenset((str(a), str(b)) for a, b in v)
    )
    return converter


_CONVERTER = make_converter()


def to_dict(instance: Instance) -> dict[str, Any]:
    """The JSON-ready dict form of ``instance``."""
    result: dict[str, Any] = _CONVERTER.unstructure(instance)
    return result


def from_dict(data: dict[str, Any]) -> Instance:
    """Rebuild an ``Instance`` from ``to_dict`` output.

    Raises:
        StorageError: the data does not describe an instance (the message gives the paths).
    """
    try:
        return _CONVERTER.structure(data, Instance)
    except Exception as exc:
        details = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise StorageError(f"cannot load instance: {details}") from exc


def dumps(instance: Instance) -> str:
    """Serialize to compact JSON text; ``loads(dumps(x)) == x`` for every instance."""
    return json.dumps(to_dict(instance), separators=(",", ":"), sort_keys=True, allow_nan=False)


def loads(text: str | bytes) -> Instance:
    """Parse ``dumps`` output back into an equal ``Instance``.

    Raises:
        StorageError: the text is not JSON or not an instance.
    """
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StorageError(f"cannot load instance: not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise StorageError(
            f"cannot load instance: expected a JSON object, got {type(data).__name__}"
        )
    return from_dict(data)
