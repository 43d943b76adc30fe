"""The JSON views, ``show``'s text for failed attempts and tracebacks, and ``graph --json``.

The run is built as the engine records one that failed after retries: a
completion, then a failed-attempt entry per attempt (``error`` set, ``event``
empty), and the run's error with its traceback.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from hephaestus_trio import (
    Context,
    Done,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    Status,
    Step,
    Unique,
    Wait,
    Workflow,
)
from hephaestus_trio.cli import main
from hephaestus_trio.cli._inspect import _show_text
from hephaestus_trio.cli._views import (
    error_view,
    failed_attempts,
    graph_view,
    history_view,
    run_detail,
    run_view,
    stamp,
)

T0 = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
TRACE = (
    "Traceback (most recent call last):\n"
    '  File "flows.py", line 9, in execute\n'
    '    return str({}["missing"])\n'
    "KeyError: 'missing'\n"
)


def _failed_run() -> Instance:
    def crash(attempt: int) -> ErrorRecord:
        return ErrorRecord(
            kind="crash",
            message="'missing'",
            step="explode",
            exception_type="KeyError",
            attempt=attempt,
            traceback=TRACE,
        )

    history = (
        ExecutionEntry(step="prepare", event="ok", timestamp=T0, context_updates={"x": (1, 2)}),
        ExecutionEntry(
            step="explode", event="", timestamp=T0 + timedelta(seconds=1), error=crash(1)
        ),
        ExecutionEntry(
            step="explode",
            event="",
            timestamp=T0 + timedelta(seconds=2),
            attempt=2,
            error=crash(2),
        ),
    )
    run = Instance.new("tests.cli.Broken", {"order": {"items": [1, 2]}}, id="broken::v", now=T0)
    return attrs.evolve(
        run,
        status=Status.FAILED,
        updated_at=T0 + timedelta(seconds=2),
        execution_history=history,
        completed_steps=frozenset({"prepare"}),
        error=crash(2),
    )


def test_stamps_are_utc_with_microseconds_and_z() -> None:
    assert stamp(None) is None
    assert stamp(T0) == "2026-12-02T03:00:00.000000Z"
    plus_one = datetime(2026, 12, 2, 4, 0, 0, 5, tzinfo=UTC).astimezone()
    assert stamp(plus_one) == "2026-12-02T04:00:00.000005Z"


def test_an_error_without_a_traceback_has_a_null_one() -> None:
    plain = ErrorRecord(kind="crash", message="'k'", step="s", exception_type="KeyError", attempt=1)
    assert error_view(plain) == {
        "kind": "crash",
        "type": "KeyError",
        "message": "'k'",
        "step": "s",
        "attempt": 1,
        "traceback": None,
    }
    assert error_view(None) is None


def test_failed_attempts_come_from_history_entries_with_an_error() -> None:
    run = _failed_run()
    found = failed_attempts(run)
    assert [(n, e.attempt, err.attempt) for n, e, err in found] == [(2, 1, 1), (3, 2, 2)]
    plain = attrs.evolve(run, execution_history=run.execution_history[:1])
    assert failed_attempts(plain) == []


def test_show_json_has_the_failure_traceback_and_failed_attempts() -> None:
    run = _failed_run()
    detail = run_detail(run, runs_sharing_id=2, wakeups=[])
    text = json.dumps(detail)  # JSON-ready: tuples and mappings became lists and dicts
    assert json.loads(text) == detail
    assert detail["failure"]["traceback"] == TRACE
    assert detail["failure"]["attempt"] == 2
    assert detail["failed_attempts"] == [
        {
            "n": 2,
            "at": "2026-12-02T03:00:01.000000Z",
            "step": "explode",
            "attempt": 1,
            "error": {
                "kind": "crash",
                "type": "KeyError",
                "message": "'missing'",
                "step": "explode",
                "attempt": 1,
                "traceback": TRACE,
            },
        },
        {
            "n": 3,
            "at": "2026-12-02T03:00:02.000000Z",
            "step": "explode",
            "attempt": 2,
            "error": detail["failure"],
        },
    ]
    history = detail["run"]["history"]
    assert history == history_view(run)
    assert [h["error"] is None for h in history] == [True, False, False]
    assert history[0]["context_updates"] == {"x": [1, 2]}
    assert detail["run"]["context"] == {"initial": {"order": {"items": [1, 2]}}, "steps": {}}
    assert detail["runs_sharing_id"] == 2
    assert {k: detail["run"][k] for k in run_view(run)} == run_view(run)


def test_show_text_has_the_failure_traceback_and_failed_attempts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    _show_text(_failed_run(), 1, [])
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = lines.index("failure:")
    assert lines[start : start + 7] == [
        "failure:",
        "    type:     KeyError",
        "    message:  'missing'",
        "    kind:     crash",
        "    step:     explode",
        "    attempt:  2",
        "traceback:",
    ]
    assert lines[start + 7 : start + 11] == ["    " + line for line in TRACE.splitlines()]
    attempts = lines.index("failed attempts:")
    assert lines[attempts + 1].split() == ["#", "AT", "STEP", "ATTEMPT", "ERROR", "MESSAGE"]
    rows = [line.split() for line in lines[attempts + 3 : attempts + 5]]
    assert [(r[0], r[3], r[4], r[5], r[6]) for r in rows] == [
        ("2", "explode", "1", "KeyError", "'missing'"),
        ("3", "explode", "2", "KeyError", "'missing'"),
    ]
    history_header = next(line for line in lines if line.startswith("#  AT"))
    assert history_header.split()[-1] == "RESULT"
    results = [line.split()[-1] for line in lines[lines.index(history_header) + 2 :]]
    assert results == ["ok", "failed", "failed"]


class _Go(Step):
    events = ("go", "skip")

    async def execute(self, instance: Instance, config: Any, context: Context) -> str:
        return "go"


class _GraphV1(Workflow, unique=Unique(key="g"), version=1, name="tests.cli.views.GraphV1"):
    start_at = _Go
    transitions = {(_Go, "go"): Done, (_Go, "skip"): Done}


class _GraphV2(Workflow, unique=Unique(key="g"), version=2, name="tests.cli.views.GraphV2"):
    start_at = _Go
    transitions = {
        (_Go, "go"): (Wait, {"seconds": 1}),
        (Wait, "timeout"): Done,
        (_Go, "skip"): Done,
    }


class _Graph(
    Workflow,
    unique=Unique(key="g"),
    versions={1: _GraphV1, 2: _GraphV2},
    current=2,
    name="tests.cli.views.Graph",
):
    pass


def test_graph_json_of_a_plain_workflow() -> None:
    view = graph_view(_GraphV1)
    assert json.loads(json.dumps(view)) == view
    assert view == {
        "workflow": "tests.cli.views.GraphV1",
        "family": "tests.cli.views.Graph",  # a version belongs to its dispatcher's family
        "current": 1,
        "versions": [
            {
                "version": 1,
                "name": "tests.cli.views.GraphV1",
                "start": "_go",
                "steps": ["_go", "done"],
                "edges": [
                    {"source": "_go", "event": "go", "target": "done", "dynamic": False},
                    {"source": "_go", "event": "skip", "target": "done", "dynamic": False},
                ],
            }
        ],
    }


def test_graph_json_of_a_dispatcher_lists_every_version(
    capsys: pytest.CaptureFixture[str],
) -> None:
    view = graph_view(_Graph)
    assert (view["workflow"], view["current"]) == ("tests.cli.views.Graph", 2)
    assert [v["version"] for v in view["versions"]] == [1, 2]
    assert view["versions"][1]["steps"] == ["_go", "wait", "done"]
    assert {(e["source"], e["event"], e["target"]) for e in view["versions"][1]["edges"]} == {
        ("_go", "go", "wait"),
        ("wait", "timeout", "done"),
        ("_go", "skip", "done"),
    }
    assert main(["graph", f"{__name__}:_Graph", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == view
