"""Differential test: the fast codecs agree with the cattrs converter, byte for byte.

``dumps``/``loads``/``to_dict``/``from_dict`` take hand-written fast paths
that hand every case they cannot vouch for back to the converter. Here the
reference is the converter itself (``make_converter()``) with the code the
functions had before the fast paths existed, and Hypothesis draws:

- instances with every field drawn at random (any Unicode in the strings,
  JSON-safe contexts, datetimes in several zones, errors, timers, shapes),
  and every state runs of random workflows pass through;
- values the model types as ``Any`` that are *not* JSON-safe (tuples, enums,
  sets, datetimes, NaN, mapping proxies), where both must give the same text
  or fail alike;
- stored documents with one part replaced by a random JSON value, deleted,
  or joined by an unknown key, where ``from_dict`` must accept exactly what
  the converter accepts, with an equal instance, and refuse the rest with the
  same message.
"""

from __future__ import annotations

import collections
import enum
import functools
import json
import types
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import cattrs
import pytest
from hypothesis import given, note
from hypothesis import strategies as st

from hephaestus_trio import (
    Context,
    DefinitionShape,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    Status,
    StorageError,
    TimerRecord,
    Workflow,
)
from hephaestus_trio.serialization import (
    INSTANCE_FIELDS,
    apply_fields,
    dumps,
    fields_to_dict,
    from_dict,
    loads,
    make_converter,
    to_dict,
)
from hephaestus_trio.testing import outcome_scripts, run_script, workflows

CONVERTER = make_converter()
T = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def reference_dumps(instance: Instance) -> str:
    unstructured = CONVERTER.unstructure(instance)
    return json.dumps(unstructured, separators=(",", ":"), sort_keys=True, allow_nan=False)


def reference_from_dict(data: Any) -> Instance:
    try:
        return CONVERTER.structure(data, Instance)
    except Exception as exc:
        details = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise StorageError(f"cannot load instance: {details}") from exc


# -- instances -------------------------------------------------------------------------------

texts = st.text(max_size=6)
keys = st.text(max_size=4)
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(keys, json_values, max_size=3)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
moments = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=zones
)
optional_texts = st.none() | texts
optional_ints = st.none() | st.integers()

errors = st.builds(
    ErrorRecord,
    kind=texts,
    message=texts,
    step=optional_texts,
    exception_type=optional_texts,
    attempt=optional_ints,
    traceback=optional_texts,
)
entries = st.builds(
    ExecutionEntry,
    step=texts,
    event=texts,
    timestamp=moments,
    context_updates=st.none() | json_objects,
    attempt=st.integers(),
    wakeup=optional_ints,
    error=st.none() | errors,
)
timers = st.builds(TimerRecord, step=texts, event=texts, fire_at=moments)
shapes = st.builds(
    DefinitionShape,
    start=texts,
    steps=st.lists(texts, max_size=3).map(tuple),
    events=st.lists(st.tuples(texts, texts), max_size=3).map(tuple),
    transitions=st.lists(st.tuples(texts, texts, texts), max_size=3).map(tuple),
)
random_instances = st.builds(
    Instance,
    id=texts,
    run_id=texts,
    workflow=texts,
    workflow_version=st.integers(),
    status=st.sampled_from(Status),
    context=st.builds(
        Context, initial=json_objects, steps=st.dictionaries(keys, json_objects, max_size=3)
    ),
    step_configs=st.dictionaries(keys, json_objects, max_size=3),
    active_steps=st.frozensets(texts, max_size=3),
    waiting_steps=st.frozensets(texts, max_size=3),
    completed_steps=st.frozensets(texts, max_size=3),
    taken_edges=st.frozensets(st.tuples(texts, texts), max_size=3),
    runtime_metadata=json_objects,
    telemetry_metadata=json_objects,
    trace_context=st.none() | st.dictionaries(keys, texts, max_size=2),
    execution_history=st.lists(entries, max_size=4).map(tuple),
    timers=st.lists(timers, max_size=2).map(tuple),
    error=st.none() | errors,
    definition_fingerprint=optional_texts,
    definition_shape=st.none() | shapes,
    unique_key=optional_texts,
    created_at=moments,
    updated_at=moments,
)


def check_agreement(instance: Instance) -> None:
    text = reference_dumps(instance)
    assert dumps(instance) == text
    # Twice: the second call meets the codecs' caches (entries, timestamps, shapes).
    assert dumps(instance) == text
    assert to_dict(instance) == CONVERTER.unstructure(instance)
    back = loads(text)
    assert back == reference_from_dict(json.loads(text)) == instance
    assert loads(text) == instance
    assert dumps(back) == text
    assert from_dict(to_dict(instance)) == instance


@given(random_instances)
def test_random_instances_serialize_as_the_converter_does(instance: Instance) -> None:
    check_agreement(instance)


@given(wf=workflows(), data=st.data())
def test_every_state_of_a_run_serializes_as_the_converter_does(
    wf: type[Workflow], data: st.DataObject
) -> None:
    for instance in run_script(wf, data.draw(outcome_scripts(wf), label="script")):
        check_agreement(instance)


@given(random_instances, random_instances, st.sets(st.sampled_from(INSTANCE_FIELDS)))
def test_a_subset_of_fields_moves_from_one_instance_to_another(
    source: Instance, target: Instance, names: set[str]
) -> None:
    chosen = sorted(names)
    values = fields_to_dict(source, chosen)
    whole = CONVERTER.unstructure(source)
    assert values == {name: whole[name] for name in chosen}
    assert list(values) == chosen
    expected = attrs.evolve(target, **{name: getattr(source, name) for name in chosen})
    assert apply_fields(target, values) == expected
    # What a storage would write: the JSON text of the values, then read back.
    assert apply_fields(target, json.loads(json.dumps(values))) == expected


# -- values that are not JSON-safe -----------------------------------------------------------


class Colour(enum.Enum):
    RED = "red"


class Size(enum.IntEnum):
    BIG = 2


class Tone(enum.StrEnum):
    LOW = "low"


Pair = collections.namedtuple("Pair", "left right")

exotic = st.sampled_from(
    [
        (1, (2, "three")),
        [(), ("x",)],
        Size.BIG,
        Tone.LOW,
        Colour.RED,
        Pair(1, 2),
        collections.OrderedDict(b=1, a=2),
        {1: "int key"},
        {"a": 1, 2: "mixed keys"},
        frozenset({1}),
        {"set"},
        datetime(2024, 5, 1, tzinfo=UTC),
        float("nan"),
        float("inf"),
        types.MappingProxyType({"a": 1}),
        b"bytes",
        object(),
    ]
)


def outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # the kind of failure must agree too
        return ("raised", type(exc))


@given(random_instances, exotic, st.sampled_from(["runtime_metadata", "initial", "updates"]))
def test_values_that_are_not_json_safe_fail_or_pass_as_before(
    instance: Instance, value: Any, where: str
) -> None:
    if where == "runtime_metadata":
        instance = attrs.evolve(instance, runtime_metadata={"k": value})
    elif where == "initial":
        instance = attrs.evolve(instance, context=Context(initial={"k": value}))
    else:
        entry = ExecutionEntry(
            step="s", event="e", timestamp=instance.created_at, context_updates={"k": value}
        )
        instance = attrs.evolve(instance, execution_history=(entry,))
    expected = outcome(lambda: reference_dumps(instance))
    assert outcome(lambda: dumps(instance)) == expected
    # Same containers (the same objects for what passes unchanged, so NaN compares equal).
    assert outcome(lambda: to_dict(instance)) == outcome(lambda: CONVERTER.unstructure(instance))


odd_values = st.recursive(
    json_values | exotic | moments | errors | st.sampled_from(Status),
    lambda inner: (
        st.lists(inner, max_size=2)
        | st.lists(inner, max_size=2).map(tuple)
        | st.dictionaries(keys, inner, max_size=2)
        | st.frozensets(texts, max_size=2)
    ),
    max_leaves=4,
)


@given(random_instances, st.sampled_from(INSTANCE_FIELDS), odd_values)
def test_any_field_holding_any_value_is_written_as_before(
    instance: Instance, name: str, value: Any
) -> None:
    try:
        instance = attrs.evolve(instance, **{name: value})
    except Exception:  # a field's converter refused it: no such instance exists
        return
    assert outcome(lambda: dumps(instance)) == outcome(lambda: reference_dumps(instance))
    assert outcome(lambda: to_dict(instance)) == outcome(lambda: CONVERTER.unstructure(instance))


@pytest.mark.parametrize(
    "changes",
    [
        {"active_steps": frozenset({1, 2})},
        {"context": Context(initial=types.MappingProxyType({"a": 1}))},
        {"step_configs": collections.OrderedDict(s={"b": 1})},
        {"execution_history": [ExecutionEntry(step="s", event="e", timestamp=datetime.now(UTC))]},
        {"workflow_version": True},
        {"id": 7},
        {"taken_edges": frozenset({("a", "b", "c")})},
        {"step_configs": {"s": [1]}},
        {"step_configs": {"s": "text"}},
        {"context": Context(steps={"s": [1]})},
        {"trace_context": {"traceparent": ("a",)}},
        {"trace_context": {"traceparent": 1}},
        {"execution_history": (ExecutionEntry(step="s", event="e", timestamp=T, wakeup=True),)},
        {"definition_shape": DefinitionShape(start="s", steps=["s"], events=(), transitions=())},
        {"timers": (TimerRecord(step=1, event="e", fire_at=T),)},
    ],
)
def test_fields_of_unexpected_types_are_written_as_before(changes: dict[str, Any]) -> None:
    instance = attrs.evolve(
        Instance.new("tests.Odd", {"a": 1}, id="odd::1", run_id="r", now=T), **changes
    )
    assert outcome(lambda: dumps(instance)) == outcome(lambda: reference_dumps(instance))
    assert outcome(lambda: to_dict(instance)) == outcome(lambda: CONVERTER.unstructure(instance))
    names = [name for name in INSTANCE_FIELDS if name in changes]
    assert outcome(lambda: fields_to_dict(instance, names)) == outcome(
        lambda: {name: CONVERTER.unstructure(instance)[name] for name in names}
    )


# -- damaged documents -----------------------------------------------------------------------

# Type confusions first (they shrink towards them), then any JSON value.
wrong_values = (
    st.sampled_from(
        [True, False, 0, 1, -1, 1.0, "1", "", None, [], {}, ["a"], [["a", "b"]], ["a", "b"]]
    )
    | st.sampled_from(
        ["pending", "sleeping", "2024-05-01T12:00:00", "2024-05-01T12:00:00+00:00", "yesterday"]
    )
    | json_values
)


def parts(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The path of every part of a JSON document, in document order (the root first)."""
    found = [path]
    if isinstance(node, dict):
        for key, child in node.items():
            found.extend(parts(child, (*path, key)))
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found.extend(parts(child, (*path, index)))
    return found


@given(random_instances, st.data())
def test_damaged_documents_are_refused_exactly_as_the_converter_refuses_them(
    instance: Instance, data: st.DataObject
) -> None:
    document: Any = json.loads(dumps(instance))
    path = data.draw(st.sampled_from(parts(document)), label="path")
    action = data.draw(st.sampled_from(["replace", "delete", "extra"]), label="action")
    if not path:
        document = data.draw(wrong_values, label="document") if action == "replace" else document
        if action == "extra":
            document["surprise"] = 1
    else:
        parent = document
        for step in path[:-1]:
            parent = parent[step]
        node = parent[path[-1]]
        if action == "delete" and isinstance(parent, dict):
            del parent[path[-1]]
        elif action == "extra" and isinstance(node, dict):
            node["surprise"] = data.draw(json_values, label="extra")
        else:
            parent[path[-1]] = data.draw(wrong_values, label="value")
    note(f"document: {document!r}")
    expected = outcome_of_load(lambda: reference_from_dict(document))
    assert outcome_of_load(lambda: from_dict(document)) == expected
    text = json.dumps(document)
    expected_text = outcome_of_load(lambda: reference_loads(text))
    assert outcome_of_load(lambda: loads(text)) == expected_text


def reference_loads(text: str) -> Instance:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise StorageError(
            f"cannot load instance: expected a JSON object, got {type(data).__name__}"
        )
    return reference_from_dict(data)


def outcome_of_load(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except StorageError as exc:
        return ("refused", str(exc))


CONFUSIONS: list[Any] = [
    True,
    0,
    -1,
    1.0,
    "1",
    "",
    None,
    [],
    {},
    ["a"],
    ["a", "b"],
    [["a", "b"]],
    ["a", "b", "c"],
    {"a": 1},
    {"": ""},
    "pending",
    "2024-05-01T12:00:00",
    "2024-05-01T12:00:00+00:00",
]


def every_field_instance() -> Instance:
    """One instance with every field and every nested type filled in."""
    at = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    error = ErrorRecord(
        kind="crash", message="boom", step="s", exception_type="KeyError", attempt=2, traceback="t"
    )
    return Instance(
        id="k::v",
        run_id="r",
        workflow="w",
        workflow_version=2,
        status=Status.WAITING,
        context=Context(initial={"a": [1, {"b": None}]}, steps={"s": {"x": 1.5}}),
        step_configs={"t": {"tier": 2}},
        active_steps=frozenset({"t", "u"}),
        waiting_steps=frozenset({"t"}),
        completed_steps=frozenset({"s"}),
        taken_edges=frozenset({("s", "t"), ("s", "u")}),
        runtime_metadata={"m": "v"},
        telemetry_metadata={"tenant": "eu"},
        trace_context={"traceparent": "00-ab-cd-01"},
        execution_history=(
            ExecutionEntry(step="s", event="", timestamp=at, attempt=1, error=error),
            ExecutionEntry(
                step="s", event="go", timestamp=at, context_updates={"x": 1.5}, wakeup=3
            ),
        ),
        timers=(TimerRecord(step="t", event="timeout", fire_at=at + timedelta(hours=1)),),
        error=error,
        definition_fingerprint="sha256:00",
        definition_shape=DefinitionShape(
            start="s", steps=("s", "t"), events=(("s", "go"),), transitions=(("s", "go", "t"),)
        ),
        unique_key="u::k",
        created_at=at,
        updated_at=at,
    )


def test_every_part_of_a_document_damaged_every_way_is_judged_as_the_converter_judges() -> None:
    """Exhaustive where the random test samples: each part replaced by each confusion,
    deleted, or given an unknown key."""
    pristine = json.loads(dumps(every_field_instance()))
    checked = 0
    for path in parts(pristine)[1:]:
        for damage in [*CONFUSIONS, "delete", "extra"]:
            document = json.loads(json.dumps(pristine))
            parent = document
            for step in path[:-1]:
                parent = parent[step]
            if damage == "delete":
                if not isinstance(parent, dict):
                    continue
                del parent[path[-1]]
            elif damage == "extra":
                if not isinstance(parent[path[-1]], dict):
                    continue
                parent[path[-1]]["surprise"] = 1
            else:
                parent[path[-1]] = damage
            expected = outcome_of_load(functools.partial(reference_from_dict, document))
            got = outcome_of_load(functools.partial(from_dict, document))
            assert got == expected, (path, damage)
            checked += 1
    assert checked > 1000
