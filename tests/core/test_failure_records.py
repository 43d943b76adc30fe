"""Pure parts of failures and upgrades: bounded tracebacks, retry filters, definition shapes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hephaestus_trio import (
    TRACEBACK_FRAMES,
    TRACEBACK_LIMIT,
    DefinitionMismatch,
    Done,
    ErrorRecord,
    HephaestusError,
    Instance,
    InvalidValue,
    RetryPolicy,
    Status,
    Step,
    Suspend,
    Unique,
    Workflow,
    WorkflowDefinitionError,
    route,
)
from hephaestus_trio.core._instance import format_traceback
from hephaestus_trio.core._unique import validate_value
from hephaestus_trio.engine import (
    advance,
    apply_attempt_failure,
    apply_crash,
    check_definition,
    fail,
    next_attempt,
)
from hephaestus_trio.serialization import dumps, loads

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


def recurse(n: int) -> int:
    if n == 0:
        raise RecursionError("deep down")
    return recurse(n - 1) + 1


# -- tracebacks ---------------------------------------------------------------------------


def test_a_short_traceback_is_kept_whole() -> None:
    exc = raised(KeyError("missing"))
    text = format_traceback(exc)
    assert text is not None
    assert text.startswith("Traceback (most recent call last):")
    assert "in raised" in text
    assert text.endswith("KeyError: 'missing'\n")


def test_an_exception_never_raised_has_no_traceback() -> None:
    assert format_traceback(KeyError("x")) is None
    assert ErrorRecord.from_exception("crash", "a", KeyError("x")).traceback is None


def test_a_deep_traceback_keeps_the_innermost_frames() -> None:
    try:
        recurse(200)
    except RecursionError as exc:
        text = format_traceback(exc)
    assert text is not None
    assert text.count("in recurse") <= TRACEBACK_FRAMES
    assert text.rstrip().endswith("RecursionError: deep down")
    assert len(text) <= TRACEBACK_LIMIT


def test_a_huge_traceback_is_cut_in_the_middle_with_a_marker() -> None:
    exc = raised(ValueError("x" * 20_000))
    text = format_traceback(exc)
    assert text is not None
    assert len(text) == TRACEBACK_LIMIT
    assert text.startswith("Traceback (most recent call last):")
    assert "characters cut] ..." in text
    assert text.endswith("x" * 100 + "\n")


def test_chained_exceptions_keep_both_parts() -> None:
    try:
        try:
            raise ConnectionError("socket closed")
        except ConnectionError as inner:
            raise RuntimeError("fetch failed") from inner
    except RuntimeError as exc:
        text = format_traceback(exc)
    assert text is not None
    assert "ConnectionError: socket closed" in text
    assert "direct cause" in text
    assert text.rstrip().endswith("RuntimeError: fetch failed")


def test_the_traceback_round_trips_through_serialization() -> None:
    record = ErrorRecord.from_exception("crash", "a", raised(KeyError("k")), 2)
    inst = Instance.new("wf", {}, id="wf::a", run_id="r", now=T0)
    failed = fail(inst, record, at=T0)
    back = loads(dumps(failed))
    assert back.error == record
    assert back.error is not None
    assert back.error.traceback == record.traceback


# -- RetryPolicy filters -----------------------------------------------------------------------


def test_retry_filters_default_to_every_exception() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.retry_on == (Exception,)
    assert policy.give_up_on == ()
    assert policy.should_retry(1, KeyError("k"))
    assert not policy.should_retry(3, KeyError("k"))
    assert policy.should_retry(2)  # a timeout: the budget decides


def test_give_up_on_wins() -> None:
    policy = RetryPolicy(max_attempts=5, retry_on=(LookupError,), give_up_on=(KeyError,))
    assert policy.should_retry(1, IndexError("i"))
    assert not policy.should_retry(1, KeyError("k"))
    assert not policy.should_retry(1, ValueError("v"))
    assert policy.retries(IndexError())
    assert not policy.retries(KeyError())


def test_a_single_class_is_accepted_for_a_tuple() -> None:
    policy = RetryPolicy(retry_on=ConnectionError, give_up_on=[ConnectionResetError])  # type: ignore[arg-type]
    assert policy.retry_on == (ConnectionError,)
    assert policy.give_up_on == (ConnectionResetError,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retry_on": "ConnectionError"}, "tuple of exception classes, got 'ConnectionError'"),
        ({"retry_on": (int,)}, "<class 'int'> is not an exception class"),
        ({"give_up_on": (KeyError, "TypeError")}, "'TypeError' is not an exception class"),
        ({"max_attempts": 0}, r"max_attempts must be a positive int \(1, 2, \.\.\.\), got 0"),
        ({"base": -1}, "base must be a number of seconds >= 0"),
        ({"backoff": "fibonacci"}, "backoff must be one of"),
    ],
)
def test_bad_retry_policies_are_invalid_values(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidValue, match=message) as caught:
        RetryPolicy(**kwargs)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, HephaestusError)


def test_other_bad_values_are_invalid_values() -> None:
    with pytest.raises(InvalidValue, match="Unique scope must be one of"):
        Unique(key="k", scope="tenant")  # type: ignore[arg-type]
    with pytest.raises(WorkflowDefinitionError):
        Unique(key="K")
    with pytest.raises(InvalidValue, match="Suspend.after=.... must be a number of seconds"):
        Suspend(after=-1)
    with pytest.raises(InvalidValue, match="unknown status 'done'"):
        Status.coerce("done")
    with pytest.raises(InvalidValue, match="business value 'A B' is invalid"):
        validate_value("A B")
    with pytest.raises(InvalidValue, match="timezone-aware"):
        Instance.new("wf", {}, id="wf::a", now=datetime(2030, 1, 1))


def test_except_value_error_keeps_working() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=-3)


# -- failed attempts in the pure decisions --------------------------------------------------


class Flaky(Step):
    events = ("ok",)


class Later(Step):
    events = ("ok",)


class Pipeline(Workflow, unique=Unique(key="pipe")):
    start_at = Flaky
    transitions = {(Flaky, "ok"): Later, (Later, "ok"): Done}


def test_attempt_failures_append_to_the_history_and_count() -> None:
    inst = advance(Instance.new(Pipeline, {}, id="pipe::a", run_id="r", now=T0), at=T0)
    assert next_attempt(inst, "flaky") == 1
    d1 = apply_attempt_failure(
        inst, "flaky", raised(OSError("a")), attempt=1, timed_out=False, at=T0
    )
    assert d1.outcome == "retrying"
    assert d1.instance.running_steps == {"flaky"}
    assert next_attempt(d1.instance, "flaky") == 2
    assert next_attempt(d1.instance, "later") == 1
    later = T0 + timedelta(seconds=3)
    d2 = apply_crash(
        d1.instance, "flaky", raised(OSError("b")), attempt=2, timed_out=True, at=later
    )
    assert d2.outcome == "failed"
    failed = d2.instance
    assert failed.error is not None
    assert (failed.error.kind, failed.error.attempt) == ("timeout", 2)
    assert [(e.attempt, e.event, e.timestamp) for e in failed.execution_history] == [
        (1, "", T0),
        (2, "", later),
    ]
    assert failed.execution_history[-1].error == failed.error
    assert failed.completions == ()
    # Terminal, or not running: ignored.
    assert (
        apply_attempt_failure(
            failed, "flaky", OSError(), attempt=3, timed_out=False, at=later
        ).outcome
        == "ignored"
    )
    assert (
        apply_attempt_failure(
            inst, "later", OSError(), attempt=1, timed_out=False, at=later
        ).outcome
        == "ignored"
    )


# -- definition shapes ---------------------------------------------------------------------


class A(Step):
    events = ("ok", "skip")


class B(Step):
    events = ("ok",)


class C(Step):
    events = ("ok",)


def versioned(name: str, *, with_c: bool, skip_to: type[Step] = Done) -> type[Workflow]:
    """A workflow named ``name``: ``a -> b -> (c ->) done``, ``a --skip--> skip_to``."""
    transitions: dict[Any, Any] = {(A, "ok"): B, (A, "skip"): skip_to}
    if with_c:
        transitions.update({(B, "ok"): C, (C, "ok"): Done})
    else:
        transitions[(B, "ok")] = Done
    namespace = {"start_at": A, "transitions": transitions}
    return type("Order", (Workflow,), namespace, unique=Unique(key="ord"), name=name)


def test_the_shape_lists_steps_events_and_transitions() -> None:
    flow = versioned("shape.one", with_c=False)
    shape = flow.definition_shape()
    assert shape.start == "a"
    assert shape.steps == ("a", "b", "done")
    assert shape.events == (("a", "ok"), ("a", "skip"), ("b", "ok"), ("done", "done"))
    assert shape.transitions == (("a", "ok", "b"), ("a", "skip", "done"), ("b", "ok", "done"))
    assert flow.definition_fingerprint() == shape.fingerprint
    assert shape.fingerprint.startswith("sha256:")


def test_routes_are_part_of_the_shape() -> None:
    class Router(Workflow, unique=Unique(key="rt"), name="shape.routed"):
        start_at = A
        transitions = {(A, "skip"): Done, (B, "ok"): Done, (C, "ok"): Done}

        @route(A, "ok", targets=[B, C])
        def pick(context: Any) -> Any:
            return B

    assert ("a", "ok", "b") in Router.definition_shape().transitions
    assert ("a", "ok", "c") in Router.definition_shape().transitions


def test_the_fingerprint_is_the_same_in_another_process() -> None:
    flow = versioned("shape.stable", with_c=True)
    script = textwrap.dedent(
        """
        from tests.core.test_failure_records import versioned
        print(versioned("shape.stable", with_c=True).definition_fingerprint())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == flow.definition_fingerprint()


def test_changes_name_what_was_removed_and_added() -> None:
    old = versioned("shape.diff", with_c=True).definition_shape()
    new = versioned("shape.diff", with_c=False, skip_to=B).definition_shape()
    assert new.changes_from(old) == (
        "missing step 'c'",
        "missing event 'ok' of step 'c'",
        "missing transition 'a' --skip--> 'done'",
        "missing transition 'b' --ok--> 'c'",
        "missing transition 'c' --ok--> 'done'",
        "added transition 'a' --skip--> 'b'",
        "added transition 'b' --ok--> 'done'",
    )
    assert old.changes_from(old) == ()


def test_check_definition_refuses_an_edited_definition() -> None:
    old = versioned("shape.edit", with_c=True)
    inst = Instance.new(old, {}, id="ord::a", run_id="r", now=T0)
    assert inst.definition_fingerprint == old.definition_fingerprint()
    assert inst.definition_shape == old.definition_shape()
    check_definition(inst, old)  # same definition: fine
    new = versioned("shape.edit", with_c=False)
    with pytest.raises(DefinitionMismatch) as caught:
        check_definition(inst, new)
    error = caught.value
    assert (error.instance_id, error.workflow, error.version) == ("ord::a", "shape.edit", 1)
    assert "missing step 'c'" in error.changes
    assert "register the old definition as its own version beside the new one" in str(error)
    assert isinstance(error, HephaestusError)


def test_runs_without_a_fingerprint_are_trusted() -> None:
    inst = Instance.new("shape.legacy", {}, id="ord::a", run_id="r", now=T0)
    assert inst.definition_fingerprint is None
    assert inst.definition_shape is None
    check_definition(inst, versioned("shape.legacy", with_c=False))


def test_old_documents_without_the_new_fields_still_load() -> None:
    inst = Instance.new(versioned("shape.old", with_c=False), {}, id="ord::a", run_id="r", now=T0)
    data = json.loads(dumps(inst))
    del data["definition_fingerprint"]
    del data["definition_shape"]
    back = loads(json.dumps(data))
    assert back.definition_fingerprint is None
    assert back.definition_shape is None
