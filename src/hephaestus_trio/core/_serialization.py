"""One cattrs converter for every persisted type, and JSON ``dumps``/``loads``.

Datetimes travel as ISO-8601 UTC strings, sets as sorted lists (so equal
instances serialize to equal text), enums as their values. Load failures
name the path of the bad field.

Why there are two implementations: the converter is the *definition* of the
format, but every durable write serializes the whole run document and every
read parses one, and the converter's generic dispatch costs several times
what the JSON encoding itself does. So ``to_dict``/``dumps``/``from_dict``/
``loads`` first try hand-written codecs of the instance model, and these only
ever vouch for what they fully understand: exact builtin types in exactly the
shapes the converter produces or accepts. On anything else they raise
``_Doubt`` (internally) and the call is redone by the converter, which then
produces the same result as before, or the same error with the path of the
bad field. The fast paths are thus a pure optimisation: same text, same
instances, same refusals (``properties/test_serialization_agreement.py``
checks this against ``make_converter()`` over generated instances).

``fields_to_dict`` and ``apply_fields`` do the same for a subset of
``Instance`` fields, for storages that write only what a transition changed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import attrs
import cattrs

from .._errors import InvalidValue, StorageError
from ._instance import Context, ErrorRecord, ExecutionEntry, Instance, Status, TimerRecord
from ._shape import DefinitionShape

__all__ = [
    "INSTANCE_FIELDS",
    "apply_fields",
    "dumps",
    "fields_to_dict",
    "from_dict",
    "loads",
    "make_converter",
    "to_dict",
]


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

INSTANCE_FIELDS: Final[tuple[str, ...]] = tuple(f.name for f in attrs.fields(Instance))
"""The names of ``Instance``'s fields, in declaration order (the keys of ``to_dict``)."""


# -- the fast codecs -------------------------------------------------------------------------


class _Doubt(Exception):
    """The fast codec cannot vouch for a value: redo the call with the converter."""


def _doubt(*_: object) -> NoReturn:
    raise _Doubt


# JSON text of a string, exactly as ``json.dumps`` writes it (ASCII, escaped).
_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


def _make_any_encoder() -> Callable[[Any], str]:
    """``json.dumps(..., separators=(",", ":"), sort_keys=True, allow_nan=False)``, faster.

    For the values the model types as ``Any``; what JSON cannot encode natively
    (``default``) is the converter's business. ``json.dumps`` builds a new
    encoder on every call, which costs more than encoding a small dict, so the
    C encoder is made once. It skips the circular-reference check: a circular
    value overflows the stack instead, which is doubt too, and the converter
    then fails on it as it always did.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the pure-Python encoder, made once
        return json.JSONEncoder(
            separators=(",", ":"), sort_keys=True, allow_nan=False, default=_doubt
        ).encode
    encode = make(None, _doubt, _string, None, ":", ",", True, False, False)
    return lambda value: "".join(encode(value, 0))


_any: Callable[[Any], str] = _make_any_encoder()

# ``datetime.isoformat`` costs more than all the rest of an entry's encoding, and a run's
# timestamps are re-encoded on each of its writes: keep the recent ones.
_ISO_TEXT: dict[datetime, str] = {}
_ISO_TEXT_SIZE = 4096


def _iso(value: Any) -> str:
    if type(value) is not datetime:
        raise _Doubt
    text = _ISO_TEXT.get(value)
    if text is None:
        text = value.astimezone(UTC).isoformat()
        if len(_ISO_TEXT) >= _ISO_TEXT_SIZE:
            _ISO_TEXT.clear()
        _ISO_TEXT[value] = text
    return text


# Unstructure (the converter's ``unstructure``): JSON-ready values, freshly built containers.


def _plain(value: Any) -> Any:
    """A value typed ``Any``, copied as the converter copies it (tuples become lists)."""
    kind = type(value)
    if kind is str or kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        copy = {}
        for key, item in value.items():
            if type(key) is not str:
                raise _Doubt
            copy[key] = _plain(item)
        return copy
    if kind is list or kind is tuple:
        return [_plain(item) for item in value]
    raise _Doubt


def _u_str(value: Any) -> str:
    if type(value) is not str:
        raise _Doubt
    return value


def _u_opt_str(value: Any) -> str | None:
    return None if value is None else _u_str(value)


def _u_int(value: Any) -> int:
    if type(value) is not int:
        raise _Doubt
    return value


def _u_opt_int(value: Any) -> int | None:
    return None if value is None else _u_int(value)


def _u_mapping(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        raise _Doubt
    return _plain(value)  # type: ignore[no-any-return]


def _u_mapping_of_mappings(value: Any) -> dict[str, Any]:
    _check_mapping_of_mappings(value)
    return _plain(value)  # type: ignore[no-any-return]


def _check_mapping_of_mappings(value: Any) -> None:
    # The converter walks the inner mappings as mappings: anything else fails there.
    if type(value) is not dict:
        raise _Doubt
    for item in value.values():
        if type(item) is not dict:
            raise _Doubt


def _check_mapping_of_strs(value: Any) -> None:
    # Typed ``str``, the values pass the converter as they are (a tuple stays a tuple).
    if type(value) is not dict:
        raise _Doubt
    for item in value.values():
        if type(item) is not str:
            raise _Doubt


def _u_trace_context(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    _check_mapping_of_strs(value)
    return dict(value)


def _u_keys(value: Any) -> list[str]:
    keys = sorted(value)
    for key in keys:
        if type(key) is not str:
            raise _Doubt
    return keys


def _u_edges(value: Any) -> list[list[str]]:
    return [_u_strs(pair, 2) for pair in sorted(value)]


def _u_strs(value: Any, length: int | None = None) -> list[str]:
    if type(value) is not tuple or (length is not None and len(value) != length):
        raise _Doubt
    for item in value:
        if type(item) is not str:
            raise _Doubt
    return list(value)


def _u_status(value: Any) -> str:
    if type(value) is not Status:
        raise _Doubt
    return value._value_


def _u_context(value: Any) -> dict[str, Any]:
    if type(value) is not Context:
        raise _Doubt
    return {"initial": _u_mapping(value.initial), "steps": _u_mapping_of_mappings(value.steps)}


def _u_error(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not ErrorRecord:
        raise _Doubt
    return {
        "kind": _u_str(value.kind),
        "message": _u_str(value.message),
        "step": _u_opt_str(value.step),
        "exception_type": _u_opt_str(value.exception_type),
        "attempt": _u_opt_int(value.attempt),
        "traceback": _u_opt_str(value.traceback),
    }


def _u_entry(value: Any) -> dict[str, Any]:
    if type(value) is not ExecutionEntry:
        raise _Doubt
    updates = value.context_updates
    return {
        "step": _u_str(value.step),
        "event": _u_str(value.event),
        "timestamp": _iso(value.timestamp),
        "context_updates": None if updates is None else _u_mapping(updates),
        "attempt": _u_int(value.attempt),
        "wakeup": _u_opt_int(value.wakeup),
        "error": _u_error(value.error),
    }


def _u_timer(value: Any) -> dict[str, Any]:
    if type(value) is not TimerRecord:
        raise _Doubt
    return {
        "step": _u_str(value.step),
        "event": _u_str(value.event),
        "fire_at": _iso(value.fire_at),
    }


def _u_history(value: Any) -> list[dict[str, Any]]:
    if type(value) is not tuple:
        raise _Doubt
    return [_u_entry(entry) for entry in value]


def _u_timers(value: Any) -> list[dict[str, Any]]:
    if type(value) is not tuple:
        raise _Doubt
    return [_u_timer(timer) for timer in value]


def _u_shape(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if type(value) is not DefinitionShape or type(value.events) is not tuple:
        raise _Doubt
    if type(value.transitions) is not tuple:
        raise _Doubt
    # The converter writes the inner pairs and triples as tuples.
    return {
        "start": _u_str(value.start),
        "steps": _u_strs(value.steps),
        "events": [tuple(_u_strs(pair, 2)) for pair in value.events],
        "transitions": [tuple(_u_strs(triple, 3)) for triple in value.transitions],
    }


_UNSTRUCTURE: Final[dict[str, Callable[[Any], Any]]] = {
    "id": _u_str,
    "run_id": _u_str,
    "workflow": _u_str,
    "workflow_version": _u_int,
    "status": _u_status,
    "context": _u_context,
    "step_configs": _u_mapping_of_mappings,
    "active_steps": _u_keys,
    "waiting_steps": _u_keys,
    "completed_steps": _u_keys,
    "taken_edges": _u_edges,
    "runtime_metadata": _u_mapping,
    "telemetry_metadata": _u_mapping,
    "trace_context": _u_trace_context,
    "execution_history": _u_history,
    "timers": _u_timers,
    "error": _u_error,
    "definition_fingerprint": _u_opt_str,
    "definition_shape": _u_shape,
    "unique_key": _u_opt_str,
    "created_at": _iso,
    "updated_at": _iso,
}


# Encode: the text ``json.dumps`` gives for the unstructured value, written directly.


def _e_str(value: Any) -> str:
    if type(value) is not str:
        raise _Doubt
    return _string(value)


def _e_opt_str(value: Any) -> str:
    return "null" if value is None else _e_str(value)


def _e_int(value: Any) -> str:
    if type(value) is not int:
        raise _Doubt
    return int.__repr__(value)


def _e_opt_int(value: Any) -> str:
    return "null" if value is None else _e_int(value)


def _e_datetime(value: Any) -> str:
    return '"' + _iso(value) + '"'


def _e_mapping(value: Any) -> str:
    if type(value) is not dict:
        raise _Doubt
    return _any(value) if value else "{}"


def _e_mapping_of_mappings(value: Any) -> str:
    _check_mapping_of_mappings(value)
    return _any(value) if value else "{}"


def _e_trace_context(value: Any) -> str:
    if value is None:
        return "null"
    _check_mapping_of_strs(value)
    return _any(value)


def _e_keys(value: Any) -> str:
    return "[" + ",".join([_e_str(key) for key in sorted(value)]) + "]"


def _e_strs(value: Any, length: int | None = None) -> str:
    if type(value) is not tuple or (length is not None and len(value) != length):
        raise _Doubt
    return "[" + ",".join([_e_str(item) for item in value]) + "]"


def _e_edges(value: Any) -> str:
    return "[" + ",".join([_e_strs(pair, 2) for pair in sorted(value)]) + "]"


_STATUS_TEXT: Final[dict[str, str]] = {s._name_: _string(s._value_) for s in Status}


def _e_status(value: Any) -> str:
    if type(value) is not Status:
        raise _Doubt
    return _STATUS_TEXT[value._name_]


def _e_context(value: Any) -> str:
    if type(value) is not Context:
        raise _Doubt
    initial, steps = _e_mapping(value.initial), _e_mapping_of_mappings(value.steps)
    return '{"initial":' + initial + ',"steps":' + steps + "}"


def _e_error(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is not ErrorRecord:
        raise _Doubt
    return (
        '{"attempt":'
        + _e_opt_int(value.attempt)
        + ',"exception_type":'
        + _e_opt_str(value.exception_type)
        + ',"kind":'
        + _e_str(value.kind)
        + ',"message":'
        + _e_str(value.message)
        + ',"step":'
        + _e_opt_str(value.step)
        + ',"traceback":'
        + _e_opt_str(value.traceback)
        + "}"
    )


# An entry without context updates holds only immutable values (strings, numbers, a
# datetime, an error record of those), and a run re-encodes all of its entries on each of
# its writes: keep the text of recent ones, by identity (the entry is held, so its id is
# not reused while cached).
_ENTRY_TEXT: dict[int, tuple[ExecutionEntry, str]] = {}
_ENTRY_TEXT_SIZE = 8192


def _e_entry(value: Any) -> str:
    cached = _ENTRY_TEXT.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    if type(value) is not ExecutionEntry:
        raise _Doubt
    updates = value.context_updates
    text = (
        '{"attempt":'
        + _e_int(value.attempt)
        + ',"context_updates":'
        + ("null" if updates is None else _e_mapping(updates))
        + ',"error":'
        + _e_error(value.error)
        + ',"event":'
        + _e_str(value.event)
        + ',"step":'
        + _e_str(value.step)
        + ',"timestamp":"'
        + _iso(value.timestamp)
        + '","wakeup":'
        + _e_opt_int(value.wakeup)
        + "}"
    )
    if updates is None:
        if len(_ENTRY_TEXT) >= _ENTRY_TEXT_SIZE:
            _ENTRY_TEXT.clear()
        _ENTRY_TEXT[id(value)] = (value, text)
    return text


def _e_timer(value: Any) -> str:
    if type(value) is not TimerRecord:
        raise _Doubt
    return (
        '{"event":'
        + _e_str(value.event)
        + ',"fire_at":"'
        + _iso(value.fire_at)
        + '","step":'
        + _e_str(value.step)
        + "}"
    )


def _e_history(value: Any) -> str:
    if type(value) is not tuple:
        raise _Doubt
    return "[" + ",".join([_e_entry(entry) for entry in value]) + "]"


def _e_timers(value: Any) -> str:
    if type(value) is not tuple:
        raise _Doubt
    return "[" + ",".join([_e_timer(timer) for timer in value]) + "]"


# Runs of one workflow share its shape object (``Instance.new`` takes the class's), so its
# text is kept, by identity; the few most recent shapes are enough.
_SHAPE_TEXT: dict[int, tuple[DefinitionShape, str]] = {}
_SHAPE_TEXT_SIZE = 64


def _e_shape(value: Any) -> str:
    if value is None:
        return "null"
    cached = _SHAPE_TEXT.get(id(value))
    if cached is not None and cached[0] is value:
        return cached[1]
    if type(value) is not DefinitionShape:
        raise _Doubt
    for field in (value.events, value.transitions):
        if type(field) is not tuple:
            raise _Doubt
    text = (
        '{"events":['
        + ",".join([_e_strs(pair, 2) for pair in value.events])
        + '],"start":'
        + _e_str(value.start)
        + ',"steps":'
        + _e_strs(value.steps)
        + ',"transitions":['
        + ",".join([_e_strs(triple, 3) for triple in value.transitions])
        + "]}"
    )
    if len(_SHAPE_TEXT) >= _SHAPE_TEXT_SIZE:
        _SHAPE_TEXT.clear()
    _SHAPE_TEXT[id(value)] = (value, text)
    return text


_ENCODE: Final[dict[str, Callable[[Any], str]]] = {
    "id": _e_str,
    "run_id": _e_str,
    "workflow": _e_str,
    "workflow_version": _e_int,
    "status": _e_status,
    "context": _e_context,
    "step_configs": _e_mapping_of_mappings,
    "active_steps": _e_keys,
    "waiting_steps": _e_keys,
    "completed_steps": _e_keys,
    "taken_edges": _e_edges,
    "runtime_metadata": _e_mapping,
    "telemetry_metadata": _e_mapping,
    "trace_context": _e_trace_context,
    "execution_history": _e_history,
    "timers": _e_timers,
    "error": _e_error,
    "definition_fingerprint": _e_opt_str,
    "definition_shape": _e_shape,
    "unique_key": _e_opt_str,
    "created_at": _e_datetime,
    "updated_at": _e_datetime,
}

# ``dumps`` sorts keys: the fields in name order, each with its key's text.
_ENCODE_SORTED: Final[tuple[tuple[str, str, Callable[[Any], str]], ...]] = tuple(
    (name, _string(name) + ":", _ENCODE[name]) for name in sorted(_ENCODE)
)


def _encode_instance(instance: Instance) -> str:
    if type(instance) is not Instance:
        raise _Doubt
    return (
        "{"
        + ",".join([key + encode(getattr(instance, name)) for name, key, encode in _ENCODE_SORTED])
        + "}"
    )


# Structure (the converter's ``structure``): exactly what it accepts from JSON, or doubt.


def _s_str(value: Any) -> str:
    if type(value) is not str:
        raise _Doubt
    return value


def _s_opt_str(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _Doubt


def _s_int(value: Any) -> int:
    if type(value) is not int:
        raise _Doubt
    return value


def _s_opt_int(value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    raise _Doubt


def _s_datetime(value: Any) -> datetime:
    if type(value) is not str:
        raise _Doubt
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise _Doubt
    return parsed.astimezone(UTC)


_STATUS_BY_VALUE: Final[dict[str, Status]] = {s._value_: s for s in Status}


def _s_status(value: Any) -> Status:
    status = _STATUS_BY_VALUE.get(value) if type(value) is str else None
    if status is None:
        raise _Doubt
    return status


def _s_mapping(value: Any) -> dict[str, Any]:
    # The converter checks the keys and copies the mapping; values typed Any pass as they are.
    if type(value) is not dict:
        raise _Doubt
    for key in value:
        if type(key) is not str:
            raise _Doubt
    return dict(value)


def _s_opt_mapping_of_str(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    mapping = _s_mapping(value)
    for item in mapping.values():
        if type(item) is not str:
            raise _Doubt
    return mapping


def _s_mapping_of_mappings(value: Any) -> dict[str, dict[str, Any]]:
    mapping = _s_mapping(value)
    for key, item in mapping.items():
        mapping[key] = _s_mapping(item)
    return mapping


def _s_strs(value: Any, length: int | None = None) -> tuple[str, ...]:
    # ``to_dict`` writes pairs as tuples, JSON gives lists: the converter takes both.
    kind = type(value)
    if (kind is not list and kind is not tuple) or (length is not None and len(value) != length):
        raise _Doubt
    for item in value:
        if type(item) is not str:
            raise _Doubt
    return tuple(value)


def _s_keys(value: Any) -> frozenset[str]:
    return frozenset(_s_strs(value))


def _s_pair(value: Any) -> tuple[str, ...]:
    return _s_strs(value, 2)


def _s_triple(value: Any) -> tuple[str, ...]:
    return _s_strs(value, 3)


def _s_edges(value: Any) -> frozenset[tuple[str, str]]:
    if type(value) is not list:
        raise _Doubt
    return frozenset([_s_pair(pair) for pair in value])  # type: ignore[misc]


def _s_tuple_of(item: Callable[[Any], Any]) -> Callable[[Any], tuple[Any, ...]]:
    def structure(value: Any) -> tuple[Any, ...]:
        if type(value) is not list:
            raise _Doubt
        return tuple([item(element) for element in value])

    return structure


def _structurer(
    cls: type[Any],
    fields: Mapping[str, Callable[[Any], Any]],
    whole: Callable[[dict[str, Any]], Any] | None = None,
) -> Callable[[Any], Any]:
    """Build ``cls`` from a dict of its fields, as the converter does, or doubt.

    Unknown keys are doubted (the converter refuses them), missing ones take
    their defaults (a missing required one makes ``cls`` raise: doubt too).
    ``whole`` is the same for a dict with every key, spelled out: what ``dumps``
    writes, so the common case skips the loop.
    """
    if {f.name for f in attrs.fields(cls)} != set(fields):
        # A field added to a model without its codec would be dropped silently.
        raise RuntimeError(f"the fast codec of {cls.__name__} does not match its fields")
    names = frozenset(fields)

    def structure(value: Any) -> Any:
        if type(value) is not dict:
            raise _Doubt
        if whole is not None and value.keys() == names:
            return whole(value)
        kwargs = {}
        for key, item in value.items():
            field = fields.get(key)
            if field is None:
                raise _Doubt
            kwargs[key] = field(item)
        return cls(**kwargs)

    return structure


def _optional(structure: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else structure(value)


def _s_opt_mapping(value: Any) -> dict[str, Any] | None:
    return None if value is None else _s_mapping(value)


_ERROR_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "kind": _s_str,
    "message": _s_str,
    "step": _s_opt_str,
    "exception_type": _s_opt_str,
    "attempt": _s_opt_int,
    "traceback": _s_opt_str,
}
_s_error = _optional(_structurer(ErrorRecord, _ERROR_FIELDS))


def _whole_entry(value: dict[str, Any]) -> ExecutionEntry:
    return ExecutionEntry(
        step=_s_str(value["step"]),
        event=_s_str(value["event"]),
        timestamp=_s_datetime(value["timestamp"]),
        context_updates=_s_opt_mapping(value["context_updates"]),
        attempt=_s_int(value["attempt"]),
        wakeup=_s_opt_int(value["wakeup"]),
        error=_s_error(value["error"]),
    )


_ENTRY_FIELDS: Final[dict[str, Callable[[Any], Any]]] = {
    "step": _s_str,
    "event": _s_str,
    "timestamp": _s_datetime,
    "context_updates": _s_opt_mapping,
    "attempt": _s_int,
    "wakeup": _s_opt_int,
    "error": _s_error,
}
_s_history = _s_tuple_of(_structurer(ExecutionEntry, _ENTRY_FIELDS, _whole_entry))
_s_timers = _s_tuple_of(
    _structurer(TimerRecord, {"step": _s_str, "event": _s_str, "fire_at": _s_datetime})
)
_s_context = _structurer(Context, {"initial": _s_mapping, "steps": _s_mapping_of_mappings})
_s_new_shape = _optional(
    _structurer(
        DefinitionShape,
        {
            "start": _s_str,
            "steps": _s_strs,
            "events": _s_tuple_of(_s_pair),
            "transitions": _s_tuple_of(_s_triple),
        },
    )
)

# Every run of a workflow stores the same shape: loaded runs share one object (less
# memory for many parked runs, and no rebuilding), found by its start step and checked
# against the stored JSON form of the cached one, never the caller's (mutable) dict.
_SHAPES: dict[str, tuple[dict[str, Any], DefinitionShape]] = {}
_SHAPES_SIZE = 64


def _s_shape(value: Any) -> DefinitionShape | None:
    if type(value) is dict:
        start = value.get("start")
        cached = _SHAPES.get(start) if type(start) is str else None
        if cached is not None and cached[0] == value:
            return cached[1]
    shape: DefinitionShape | None = _s_new_shape(value)
    if shape is not None:
        if len(_SHAPES) >= _SHAPES_SIZE:
            _SHAPES.clear()
        form = {
            "start": shape.start,
            "steps": list(shape.steps),
            "events": [list(pair) for pair in shape.events],
            "transitions": [list(triple) for triple in shape.transitions],
        }
        _SHAPES[shape.start] = (form, shape)
    return shape


_STRUCTURE: Final[dict[str, Callable[[Any], Any]]] = {
    "id": _s_str,
    "run_id": _s_str,
    "workflow": _s_str,
    "workflow_version": _s_int,
    "status": _s_status,
    "context": _s_context,
    "step_configs": _s_mapping_of_mappings,
    "active_steps": _s_keys,
    "waiting_steps": _s_keys,
    "completed_steps": _s_keys,
    "taken_edges": _s_edges,
    "runtime_metadata": _s_mapping,
    "telemetry_metadata": _s_mapping,
    "trace_context": _s_opt_mapping_of_str,
    "execution_history": _s_history,
    "timers": _s_timers,
    "error": _s_error,
    "definition_fingerprint": _s_opt_str,
    "definition_shape": _s_shape,
    "unique_key": _s_opt_str,
    "created_at": _s_datetime,
    "updated_at": _s_datetime,
}


def _whole_instance(value: dict[str, Any]) -> Instance:
    return Instance(
        id=_s_str(value["id"]),
        run_id=_s_str(value["run_id"]),
        workflow=_s_str(value["workflow"]),
        workflow_version=_s_int(value["workflow_version"]),
        status=_s_status(value["status"]),
        context=_s_context(value["context"]),
        step_configs=_s_mapping_of_mappings(value["step_configs"]),
        active_steps=_s_keys(value["active_steps"]),
        waiting_steps=_s_keys(value["waiting_steps"]),
        completed_steps=_s_keys(value["completed_steps"]),
        taken_edges=_s_edges(value["taken_edges"]),
        runtime_metadata=_s_mapping(value["runtime_metadata"]),
        telemetry_metadata=_s_mapping(value["telemetry_metadata"]),
        trace_context=_s_opt_mapping_of_str(value["trace_context"]),
        execution_history=_s_history(value["execution_history"]),
        timers=_s_timers(value["timers"]),
        error=_s_error(value["error"]),
        definition_fingerprint=_s_opt_str(value["definition_fingerprint"]),
        definition_shape=_s_shape(value["definition_shape"]),
        unique_key=_s_opt_str(value["unique_key"]),
        created_at=_s_datetime(value["created_at"]),
        updated_at=_s_datetime(value["updated_at"]),
    )


_s_instance = _structurer(Instance, _STRUCTURE, _whole_instance)

# A field added to a model without its codec would be dropped silently: refuse to start.
for _table in (_UNSTRUCTURE, _ENCODE):
    if tuple(_table) != INSTANCE_FIELDS:
        raise RuntimeError("the fast codecs of Instance do not match its fields")


# -- the public functions --------------------------------------------------------------------


def to_dict(instance: Instance) -> dict[str, Any]:
    """The JSON-ready dict form of ``instance``."""
    if type(instance) is Instance:
        try:
            return {name: field(getattr(instance, name)) for name, field in _UNSTRUCTURE.items()}
        except Exception:
            pass
    result: dict[str, Any] = _CONVERTER.unstructure(instance)
    return result


def _load_error(exc: Exception) -> StorageError:
    details = (
        "; ".join(cattrs.transform_error(exc))
        if isinstance(exc, cattrs.BaseValidationError)
        else str(exc)
    )
    return StorageError(f"cannot load instance: {details}")


def _strict_structure(data: Any) -> Instance:
    try:
        return _CONVERTER.structure(data, Instance)
    except Exception as exc:
        raise _load_error(exc) from exc


def from_dict(data: dict[str, Any]) -> Instance:
    """Rebuild an ``Instance`` from ``to_dict`` output.

    Raises:
        StorageError: the data does not describe an instance (the message gives the paths).
    """
    try:
        return _s_instance(data)  # type: ignore[no-any-return]
    except Exception:
        return _strict_structure(data)


def dumps(instance: Instance) -> str:
    """Serialize to compact JSON text; ``loads(dumps(x)) == x`` for every instance."""
    try:
        return _encode_instance(instance)
    except Exception:
        pass
    return json.dumps(
        _CONVERTER.unstructure(instance), separators=(",", ":"), sort_keys=True, allow_nan=False
    )


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


# -- subsets of fields, for writers that store only what changed ----------------------------


def _field_names(names: Iterable[str], what: str) -> list[str]:
    if isinstance(names, str):
        raise InvalidValue(f"{what} takes a collection of field names, got the string {names!r}")
    chosen = list(names)
    unknown = [name for name in chosen if name not in _UNSTRUCTURE]
    if unknown:
        raise InvalidValue(
            f"{what}: unknown Instance field(s) {unknown}; the fields are {list(INSTANCE_FIELDS)}"
        )
    return chosen


def fields_to_dict(instance: Instance, names: Collection[str]) -> dict[str, Any]:
    """The JSON-ready values of some fields of ``instance``: ``to_dict`` restricted to ``names``.

    For a storage that writes, per transition, only the fields that changed:
    ``json.dumps`` of each value (``separators=(",", ":"), sort_keys=True``)
    is exactly its text inside ``dumps(instance)``, and ``apply_fields`` puts
    the values back. Keys come in the order of ``names``.

    Raises:
        InvalidValue: a name is not a field of ``Instance`` (the message lists them).
    """
    chosen = _field_names(names, "fields_to_dict")
    if type(instance) is Instance:
        try:
            return {name: _UNSTRUCTURE[name](getattr(instance, name)) for name in chosen}
        except Exception:
            pass
    whole: dict[str, Any] = _CONVERTER.unstructure(instance)
    return {name: whole[name] for name in chosen}


def apply_fields(instance: Instance, data: Mapping[str, Any]) -> Instance:
    """``instance`` with the fields in ``data`` (``fields_to_dict`` output, or its JSON) replaced.

    The values are checked exactly as ``from_dict`` checks a whole document;
    ``apply_fields(base, fields_to_dict(new, changed))`` equals ``new`` when
    ``base`` and ``new`` differ only in the ``changed`` fields.

    Raises:
        StorageError: a key is not a field of ``Instance``, or a value is not valid for its
            field (the message gives the path, as ``from_dict`` does).
    """
    if not isinstance(data, Mapping):
        raise StorageError(
            f"cannot load instance fields: expected a mapping, got {type(data).__name__}"
        )
    unknown = [key for key in data if key not in _STRUCTURE]
    if unknown:
        raise StorageError(
            f"cannot load instance fields: unknown field(s) {unknown!r}; "
            f"the fields are {list(INSTANCE_FIELDS)}"
        )
    if type(instance) is Instance:
        try:
            changes = {key: _STRUCTURE[key](value) for key, value in data.items()}
            return attrs.evolve(instance, **changes)
        except Exception:
            pass
    # The converter on the whole document: the same result, or the error with its path.
    return _strict_structure({**_CONVERTER.unstructure(instance), **data})
