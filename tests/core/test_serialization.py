"""``hephaestus_trio.serialization``: lossless JSON for instances, clear load errors."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from hephaestus_trio import (
    Done,
    ErrorRecord,
    Instance,
    InvalidValue,
    Status,
    Step,
    StorageError,
    TimerRecord,
    Unique,
    Workflow,
)
from hephaestus_trio.engine import activate_transitions, advance, complete_step, fail, park
from hephaestus_trio.serialization import (
    INSTANCE_FIELDS,
    apply_fields,
    check_json_safe,
    dumps,
    fields_to_dict,
    from_dict,
    loads,
    make_converter,
    to_dict,
)

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
PLUS_FIVE = timezone(timedelta(hours=5, minutes=30))

Go = type("Go", (Step,), {"events": ("go",)})
Hold = type("Hold", (Step,), {"events": ("next",)})


class RoundTrip(Workflow, unique=Unique(key="rt")):
    start_at = (Go, {"strict": True, "limits": [1, 2.5]})
    transitions = {(Go, "go"): (Hold, {"tier": 2}), (Hold, "next"): Done}


def rich_instance() -> Instance:
    """An instance using every field: history, updates, metadata, timers, configs, edges."""
    inst = Instance.new(
        RoundTrip,
        {"order": {"id": "a1", "lines": [{"sku": "x", "qty": 2}], "total": 19.99}, "vip": True},
        id="rt::a1",
        run_id="0f0e",
        now=T0,
        telemetry_metadata={"tenant": "eu-1"},
        unique_key="workflow::rt::rt::a1",
    )
    inst = advance(inst, at=T0 + timedelta(seconds=1))
    inst = complete_step(
        inst,
        "go",
        "go",
        {"checked": ["a", "b"], "score": -0.5, "none": None, "é": "ü"},
        metadata={"trace": "abc"},
        at=T0 + timedelta(seconds=2),
        attempt=2,
    )
    inst = activate_transitions(inst, "go", "go", at=T0 + timedelta(seconds=2))
    timer = TimerRecord(step="hold", event="next", fire_at=T0 + timedelta(minutes=5))
    return park(inst, "hold", timer=timer, at=T0 + timedelta(seconds=3))


def test_fresh_instance_round_trips() -> None:
    inst = Instance.new(RoundTrip, {}, id="rt::a1", run_id="r", now=T0)
    assert loads(dumps(inst)) == inst


def test_rich_instance_round_trips() -> None:
    inst = rich_instance()
    assert inst.timers
    assert inst.execution_history
    assert inst.taken_edges
    assert inst.step_configs
    text = dumps(inst)
    back = loads(text)
    assert back == inst
    assert back.status is Status.WAITING
    assert back.taken_edges == {("go", "hold")}
    assert back.step_configs == {"hold": {"tier": 2}}
    # equal instances serialize to equal text
    assert dumps(back) == text


def test_failed_instance_round_trips_with_its_error() -> None:
    record = ErrorRecord(
        kind="crash", message="boom", step="hold", exception_type="builtins.KeyError", attempt=3
    )
    inst = fail(rich_instance(), record, at=T0 + timedelta(seconds=9))
    back = loads(dumps(inst))
    assert back == inst
    assert back.error == record
    assert str(back.error) == str(record)


def test_dict_form_round_trips() -> None:
    inst = rich_instance()
    data = to_dict(inst)
    assert data["status"] == "waiting"
    assert data["active_steps"] == ["hold"]
    assert data["taken_edges"] == [["go", "hold"]]
    assert from_dict(json.loads(json.dumps(data))) == inst


def test_datetimes_are_iso_8601_utc_strings() -> None:
    data = json.loads(dumps(rich_instance()))
    assert data["created_at"] == "2024-05-01T12:00:00.123456+00:00"
    assert data["timers"][0]["fire_at"] == "2024-05-01T12:05:00.123456+00:00"
    assert data["execution_history"][0]["timestamp"] == "2024-05-01T12:00:02.123456+00:00"


def test_tz_aware_datetimes_in_other_zones_come_back_as_the_same_instant_in_utc() -> None:
    local = datetime(2024, 5, 1, 17, 30, tzinfo=PLUS_FIVE)
    inst = Instance.new(RoundTrip, {}, id="rt::a1", run_id="r", now=local)
    assert inst.created_at.tzinfo is UTC
    back = loads(dumps(inst))
    assert back == inst
    assert back.created_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert back.created_at.utcoffset() == timedelta(0)
    timer = TimerRecord(step="go", event="go", fire_at=local)
    assert timer.fire_at.tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        Instance.new(RoundTrip, {}, id="rt::a1", now=datetime(2024, 5, 1))
    with pytest.raises(ValueError, match="naive"):
        TimerRecord(step="go", event="go", fire_at=datetime(2024, 5, 1))


def test_bytes_are_accepted() -> None:
    inst = rich_instance()
    assert loads(dumps(inst).encode()) == inst


def _mangled(**changes: Any) -> str:
    data = to_dict(rich_instance())
    for key, value in changes.items():
        if value is _DROP:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


_DROP = object()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('"text"', "got str"),
        ("null", "got NoneType"),
        ("{}", "cannot load instance"),
        (_mangled(status="sleeping"), "status"),
        (_mangled(id=_DROP), "id"),
        (_mangled(surprise=1), "surprise"),
        (_mangled(created_at="2024-05-01T12:00:00"), "created_at"),
        (_mangled(created_at="yesterday"), "created_at"),
        (_mangled(timers=[{"step": "hold"}]), "timers"),
    ],
)
def test_bad_input_to_loads_raises_storage_error(text: str, message: str) -> None:
    with pytest.raises(StorageError, match="cannot load instance") as exc:
        loads(text)
    assert message in str(exc.value)


def test_from_dict_reports_bad_data_as_storage_error() -> None:
    with pytest.raises(StorageError, match="workflow_version"):
        from_dict({**to_dict(rich_instance()), "workflow_version": "two"})


def test_make_converter_builds_a_fresh_converter_each_time() -> None:
    first, second = make_converter(), make_converter()
    assert first is not second
    inst = rich_instance()
    assert first.structure(first.unstructure(inst), Instance) == inst


def test_check_json_safe_names_the_path() -> None:
    check_json_safe({"a": [1, {"b": None}]})
    with pytest.raises(TypeError, match=r"payload\['a'\]\[1\]\['b'\] is a tuple"):
        check_json_safe({"a": [1, {"b": (1,)}]}, "payload")


@pytest.mark.parametrize(
    ("field", "value"),
    [("workflow", ["a", "list"]), ("workflow_version", "1"), ("id", 7), ("run_id", None)],
)
def test_wrongly_typed_fields_are_refused_not_coerced(field: str, value: Any) -> None:
    with pytest.raises(StorageError, match=field):
        loads(_mangled(**{field: value}))


def test_trace_context_round_trips_and_old_documents_load_without_it() -> None:
    headers = {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=opaque",
    }
    plain = Instance.new(RoundTrip, {}, id="rt::traced", now=T0)
    traced = attrs.evolve(plain, trace_context=headers)
    assert loads(dumps(traced)) == traced
    assert to_dict(traced)["trace_context"] == headers
    document = to_dict(Instance.new(RoundTrip, {}, id="rt::old", now=T0))
    del document["trace_context"]  # written before the field existed
    assert from_dict(document).trace_context is None


def test_fields_to_dict_gives_the_values_to_dict_gives() -> None:
    inst = rich_instance()
    whole = to_dict(inst)
    subset = fields_to_dict(inst, ["status", "execution_history", "updated_at"])
    assert subset == {name: whole[name] for name in ("status", "execution_history", "updated_at")}
    assert list(subset) == ["status", "execution_history", "updated_at"]
    assert fields_to_dict(inst, []) == {}
    assert fields_to_dict(inst, INSTANCE_FIELDS) == whole


def test_apply_fields_moves_what_changed_onto_the_previous_version() -> None:
    before = rich_instance()
    after = fail(before, ErrorRecord(kind="failure", message="no"), at=T0 + timedelta(minutes=1))
    changed = [f for f in INSTANCE_FIELDS if getattr(before, f) != getattr(after, f)]
    assert "status" in changed
    assert "error" in changed
    assert "id" not in changed
    stored = json.loads(json.dumps(fields_to_dict(after, changed)))
    assert apply_fields(before, stored) == after
    assert dumps(apply_fields(before, stored)) == dumps(after)
    assert apply_fields(before, {}) == before


def test_fields_to_dict_refuses_unknown_names() -> None:
    with pytest.raises(InvalidValue, match=r"unknown Instance field\(s\) \['colour'\]"):
        fields_to_dict(rich_instance(), ["status", "colour"])
    with pytest.raises(InvalidValue, match="collection of field names"):
        fields_to_dict(rich_instance(), "status")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": "red"}, "unknown field(s) ['colour']"),
        ({"status": "sleeping"}, "status"),
        ({"workflow_version": True}, "workflow_version"),
        ({"execution_history": [{"step": "go"}]}, "execution_history"),
        ({"updated_at": "2024-05-01T12:00:00"}, "updated_at"),
        (["status"], "expected a mapping"),
    ],
)
def test_apply_fields_refuses_bad_values_naming_the_field(data: Any, message: str) -> None:
    with pytest.raises(StorageError, match="cannot load instance") as caught:
        apply_fields(rich_instance(), data)
    assert message in str(caught.value)


def test_a_value_the_fast_codec_does_not_know_is_written_by_the_converter() -> None:
    # A tuple in a context is not JSON-safe (Instance.new refuses it), but an instance
    # built by hand may hold one: it is written as the converter always wrote it.
    inst = attrs.evolve(rich_instance(), runtime_metadata={"pair": (1, 2)})
    converter = make_converter()
    expected = json.dumps(
        converter.unstructure(inst), separators=(",", ":"), sort_keys=True, allow_nan=False
    )
    assert dumps(inst) == expected
    assert to_dict(inst) == converter.unstructure(inst)
    assert to_dict(inst)["runtime_metadata"] == {"pair": [1, 2]}


def test_to_dict_copies_what_it_returns() -> None:
    inst = rich_instance()
    data = to_dict(inst)
    data["context"]["initial"]["order"]["id"] = "changed"
    data["execution_history"][0]["context_updates"]["checked"].append("c")
    assert inst.context.initial["order"]["id"] == "a1"
    assert (
        inst.execution_history[0].context_updates
        == rich_instance().execution_history[0].context_updates
    )


def test_loaded_runs_of_one_workflow_share_one_shape() -> None:
    first, second = loads(dumps(rich_instance())), loads(dumps(rich_instance()))
    assert first.definition_shape == RoundTrip.definition_shape()
    assert first.definition_shape is second.definition_shape
