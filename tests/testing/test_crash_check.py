"""``check_crash_safety`` on the signup example, used exactly as a user's test would use it.

The first tests import only public names (``hephaestus_trio``,
``hephaestus_trio.testing``) and the example workflow from ``examples/``.
A copy of the workflow with one deliberately broken step (it asks billing
for an invoice without an idempotency key) must be caught, with a minimal,
readable report. The later tests cover the argument checks and the audit.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from typing import Any

import pytest
import trio

from hephaestus_trio import Complete, Done, SQLiteStorage, Status, Step, Unique, Workflow
from hephaestus_trio.testing import (
    Advance,
    Crash,
    CrashCheckError,
    CrashSafetyViolation,
    CrashWhere,
    Resume,
    check_crash_safety,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "signup_flow.py"


def _load_example() -> Any:
    spec = importlib.util.spec_from_file_location("signup_flow", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["signup_flow"] = module
    spec.loader.exec_module(module)
    return module


signup = _load_example()
SignupFlow = signup.SignupFlow
BILLING = signup.BILLING
CONFIRMED = [Resume("email_confirmed")]


# -- as a user writes it -----------------------------------------------------------------


def test_the_signup_flow_is_crash_safe() -> None:
    final = check_crash_safety(
        SignupFlow,
        {"email": "ada@example.com", "plan": "pro"},
        script=CONFIRMED,
        before_each=BILLING.reset,
    )
    assert final.status is Status.COMPLETED
    assert final.context.steps["create_invoice"] == {"invoice": 1, "amount": 20.0}
    assert final.context.steps["activate_account"] == {"account": "ada"}


def test_the_confirmation_timeout_path_is_crash_safe() -> None:
    final = check_crash_safety(
        SignupFlow,
        {"email": "bob@example.com"},
        script=[Advance(signup.CONFIRMATION_TIMEOUT + 60)],
        before_each=BILLING.reset,
        examples=50,
    )
    assert final.status is Status.COMPLETED
    assert [e.event for e in final.execution_history][-2:] == ["timeout", "done"]
    assert "activate_account" not in final.completed_steps


def test_a_declined_card_fails_the_same_way_after_crashes() -> None:
    final = check_crash_safety(
        SignupFlow,
        {"email": "eve@example.com", "card": "declined"},
        before_each=BILLING.reset,
        examples=30,
    )
    assert final.status is Status.FAILED


def test_on_sqlite_a_new_storage_object_per_engine(tmp_path: Path) -> None:
    paths = iter(range(10_000))
    current: list[Path] = []

    def fresh() -> None:
        # Each play starts from an empty file; each engine of a play reopens it.
        BILLING.reset()
        current[:] = [tmp_path / f"play-{next(paths)}.db"]

    final = check_crash_safety(
        SignupFlow,
        {"email": "ada@example.com"},
        script=CONFIRMED,
        storage=lambda: SQLiteStorage(current[0]),
        before_each=fresh,
        examples=10,
    )
    assert final.status is Status.COMPLETED


class CreateInvoice(Step):
    """BROKEN on purpose: no idempotency key, so a re-run after a crash gets a new number."""

    events = ("invoiced",)

    async def execute(self, instance, config, context):
        await trio.sleep(0.05)
        return Complete("invoiced", {"invoice": BILLING.create_invoice(5.0), "amount": 5.0})


class BrokenSignupFlow(Workflow, unique=Unique(key="brokensignup")):
    start_at = signup.ValidateSignup
    transitions = {
        **{
            edge: target
            for edge, target in SignupFlow.transitions.items()
            if edge[0] is not signup.CreateInvoice
        },
        (signup.ValidateSignup, "valid"): CreateInvoice,
        (CreateInvoice, "invoiced"): signup.ChargeCard,
    }


def test_a_step_without_an_idempotency_key_is_caught() -> None:
    with pytest.raises(CrashSafetyViolation) as caught:
        check_crash_safety(
            BrokenSignupFlow,
            {"email": "ada@example.com"},
            script=CONFIRMED,
            before_each=BILLING.reset,
        )
    violation = caught.value
    # Shrunk to the one crash that matters: after the invoice step ran, before its
    # result was saved (inside the step, or just before that write).
    assert len(violation.plan) == 1
    message = str(violation)
    # A finished run is read back from its JSON text: its mappings in key order.
    assert "context.steps['create_invoice'] is {'amount': 5.0, 'invoice': 2}" in message
    assert "the crash-free run has {'amount': 5.0, 'invoice': 1}" in message
    events = violation.events
    [crash] = [i for i, e in enumerate(events) if e.startswith("CRASH")]
    assert events[:crash].count("step 'create_invoice' runs") == 1
    assert "create_invoice" in events[crash] or events[crash - 1] == "step 'create_invoice' runs"
    assert events[crash + 1] == "a new engine opens on the same storage"
    assert events[crash + 1 :].count("step 'create_invoice' runs") == 1
    assert BrokenSignupFlow.definition().steps["create_invoice"].execute is CreateInvoice.execute


# -- what the check refuses ------------------------------------------------------------


class Roll(Step):
    events = ("rolled",)

    async def execute(self, instance, config, context):
        return Complete("rolled", {"value": random.random()})


class DiceFlow(Workflow, unique=Unique(key="dice")):
    start_at = Roll
    transitions = {(Roll, "rolled"): Done}


def test_a_nondeterministic_workflow_is_refused_with_the_reason() -> None:
    with pytest.raises(CrashCheckError, match="two crash-free runs of DiceFlow ended differently"):
        check_crash_safety(DiceFlow)


def test_a_script_the_clean_run_refuses_is_reported() -> None:
    with pytest.raises(CrashCheckError, match="refused") as caught:
        check_crash_safety(
            SignupFlow,
            {"email": "ada@example.com"},
            script=[Resume("no_such_event")],
            before_each=BILLING.reset,
        )
    assert "no_such_event" in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"examples": 0}, "examples must be a positive int"),
        ({"max_crashes": True}, "max_crashes must be a positive int"),
        ({"script": ["email_confirmed"]}, r"script action 1 is 'email_confirmed'; use Resume"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(CrashCheckError, match=match):
        check_crash_safety(SignupFlow, {}, **kwargs)


def test_the_workflow_must_be_a_class() -> None:
    with pytest.raises(CrashCheckError, match="must be a Workflow subclass"):
        check_crash_safety(SignupFlow(), {})  # type: ignore[arg-type]


def test_advance_needs_seconds() -> None:
    with pytest.raises(CrashCheckError, match=r"Advance\(-1\)"):
        Advance(-1)


async def test_it_cannot_run_inside_trio() -> None:
    with pytest.raises(CrashCheckError, match="call it from a plain"):
        check_crash_safety(SignupFlow, {})


def test_the_steps_are_restored_afterwards() -> None:
    before = {cls: cls.__dict__.get("execute") for cls in SignupFlow.definition().steps.values()}
    check_crash_safety(
        SignupFlow, {"email": "x@example.com"}, before_each=BILLING.reset, examples=3
    )
    after = {cls: cls.__dict__.get("execute") for cls in SignupFlow.definition().steps.values()}
    assert after == before


def test_descriptions_read_well() -> None:
    assert str(Crash(CrashWhere.BEFORE_WRITE, 1)) == "before the 1st write"
    assert str(Crash(CrashWhere.AFTER_WRITE, 2)) == "after the 2nd write"
    assert str(Crash(CrashWhere.IN_STEP, 11)) == "inside the 11th step execution"
    assert str(Crash(CrashWhere.IN_STEP, 23)) == "inside the 23rd step execution"
    assert (
        str(Resume("ok", {"a": 1}, step="s")) == "resume with 'ok' to step 's' and payload {'a': 1}"
    )
    assert str(Advance(90)) == "let 90 s pass"
