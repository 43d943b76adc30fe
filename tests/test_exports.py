"""The public API: everything in ``hephaestus_trio.__all__`` resolves, once, in order."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import hephaestus_trio
import hephaestus_trio.engine
import hephaestus_trio.serialization
import hephaestus_trio.testing

NAMESPACES = [
    hephaestus_trio,
    hephaestus_trio.engine,
    hephaestus_trio.serialization,
    hephaestus_trio.testing,
]


def test_every_name_in_all_resolves() -> None:
    for module in NAMESPACES:
        missing = [name for name in module.__all__ if not hasattr(module, name)]
        assert missing == [], (module.__name__, missing)


def isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then the rest."""
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_without_duplicates() -> None:
    for module in NAMESPACES:
        names = list(module.__all__)
        assert len(names) == len(set(names)), (module.__name__, names)
        assert names == sorted(names, key=isort_style), module.__name__


def test_the_sort_order_is_the_isort_style_one() -> None:
    names = ["step", "Step", "EVENT_NAMES", "__version__", "Backpressure", "DONE"]
    assert sorted(names, key=isort_style) == [
        "DONE",
        "EVENT_NAMES",
        "Backpressure",
        "Step",
        "__version__",
        "step",
    ]


def test_spec_names_are_public() -> None:
    spec_names = {
        "Step",
        "Complete",
        "Suspend",
        "Fail",
        "step",
        "Workflow",
        "Unique",
        "route",
        "Done",
        "Wait",
        "WaitForEvent",
        "Debug",
        "RetryPolicy",
        "RestartPolicy",
        "Instance",
        "Context",
        "ExecutionEntry",
        "Status",
        "TimerRecord",
        "HephaestusError",
        "WorkflowDefinitionError",
        "UndeclaredEvent",
        "InstanceNotFound",
        "InvalidResume",
        "NotCancellable",
        "Backpressure",
        "AlreadyRunning",
        "AmbiguousInstance",
        "StorageError",
        "engine",
        "serialization",
    }
    assert spec_names <= set(hephaestus_trio.__all__)


def test_pure_engine_facade_has_the_spec_functions() -> None:
    assert {
        "advance",
        "complete_step",
        "activate_transitions",
        "resume_step",
        "check_completion",
        "fail",
        "cancel",
        "park",
    } <= set(hephaestus_trio.engine.__all__)
    assert {"dumps", "loads"} <= set(hephaestus_trio.serialization.__all__)


DECISIONS = (
    "Decision",
    "apply_attempt_failure",
    "apply_cancel",
    "apply_crash",
    "apply_result",
    "apply_resume",
    "apply_timer",
    "can_still_run",
    "check_definition",
    "choose_resume_step",
    "give_up",
    "next_attempt",
)
"""The decision functions the running engine and ``testing.run_script`` share."""


def test_pure_engine_facade_has_the_decision_functions() -> None:
    assert set(DECISIONS) <= set(hephaestus_trio.engine.__all__)
    assert getattr(hephaestus_trio.engine.Decision, "__final__", False) is True


def test_every_pure_engine_name_has_a_docstring() -> None:
    engine = hephaestus_trio.engine
    undocumented = [name for name in engine.__all__ if not getattr(engine, name).__doc__]
    assert undocumented == []


def test_every_error_derives_from_hephaestus_error() -> None:
    errors = [
        getattr(hephaestus_trio, name)
        for name in hephaestus_trio.__all__
        if isinstance(getattr(hephaestus_trio, name), type)
        and issubclass(getattr(hephaestus_trio, name), BaseException)
    ]
    assert len(errors) >= 10
    for error in errors:
        assert issubclass(error, hephaestus_trio.HephaestusError), error
    assert issubclass(hephaestus_trio.WorkflowDefinitionError, TypeError)
    assert issubclass(hephaestus_trio.InvalidValue, ValueError)
    assert issubclass(hephaestus_trio.WaitTimeout, TimeoutError)


FAILURES_AND_UPGRADES = {
    "DefinitionMismatch",
    "DefinitionShape",
    "EngineStatistics",
    "FAILED_ATTEMPT",
    "InvalidValue",
    "TRACEBACK_FRAMES",
    "TRACEBACK_LIMIT",
    "WaitTimeout",
}
"""Names of failures an operator can act on, safe upgrades and engine statistics."""


def test_failure_and_upgrade_names_are_public_and_documented() -> None:
    assert set(FAILURES_AND_UPGRADES) <= set(hephaestus_trio.__all__)
    for name in FAILURES_AND_UPGRADES:
        value = getattr(hephaestus_trio, name)
        if isinstance(value, type):
            assert value.__doc__, name
    assert hephaestus_trio.FAILED_ATTEMPT == ""
    assert (hephaestus_trio.TRACEBACK_FRAMES, hephaestus_trio.TRACEBACK_LIMIT) == (30, 8192)


def test_importing_the_package_does_not_import_testing_or_hypothesis() -> None:
    code = textwrap.dedent(
        """
        import sys
        import hephaestus_trio
        loaded = sorted(
            m for m in sys.modules
            if m == "hypothesis" or m.startswith(("hypothesis.", "hephaestus_trio.testing"))
            or m in ("pytest", "psycopg", "psycopg_pool", "opentelemetry", "prometheus_client")
        )
        assert loaded == [], loaded
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True)


FINAL = (
    "Complete",
    "Context",
    "DefinitionShape",
    "Edge",
    "Engine",
    "EngineStatistics",
    "ErrorRecord",
    "Event",
    "ExecutionEntry",
    "Fail",
    "Graph",
    "Instance",
    "RestartPolicy",
    "RetryPolicy",
    "SQLiteStorage",
    "Suspend",
    "TimerHandle",
    "TimerRecord",
    "Unique",
)
"""Concrete public classes users use but never subclass (STYLE rule 2). ``Step``,
``Workflow``, the built-in steps, ``MemoryStorage`` (a base for test fakes),
``LoggingHandler`` and the exceptions stay open."""


@pytest.mark.parametrize("name", FINAL)
def test_concrete_public_classes_are_final(name: str) -> None:
    assert getattr(getattr(hephaestus_trio, name), "__final__", False) is True
