"""Workflow and step definitions: the SPEC §2 checks, versioning, introspection.

Every definition check has its own test; each asserts that the class statement
raises ``WorkflowDefinitionError`` and that the message names the culprit.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from typing import Any

import pytest

from hephaestus_trio import (
    Complete,
    Context,
    Done,
    Edge,
    Instance,
    RestartPolicy,
    RetryPolicy,
    Step,
    Suspend,
    Unique,
    Wait,
    WaitForEvent,
    Workflow,
    WorkflowDefinitionError,
    get_workflow,
    route,
    step,
)
from hephaestus_trio.core._step import snake_case
from hephaestus_trio.engine import activate_transitions, advance, complete_step
from hephaestus_trio.steps._wait import wait_seconds

U = Unique(key="test")


def make_step(name: str, *events: str, **namespace: Any) -> type[Step]:
    """A step class named ``name`` declaring ``events`` (never executed here)."""
    return type(name, (Step,), {"events": events, **namespace})


Begin = make_step("Begin", "go")
Middle = make_step("Middle", "next")
Other = make_step("Other", "next")
Join = make_step("Join", "next")
Validate = make_step("Validate", "valid", "invalid")


def raises_definition_error(*names: str) -> Any:
    """``pytest.raises`` for a definition error whose message contains every name."""
    return pytest.raises(
        WorkflowDefinitionError, match=".*".join(re.escape(n) for n in names) or None
    )


def assert_names(exc: pytest.ExceptionInfo[BaseException], *names: str) -> None:
    for name in names:
        assert name in str(exc.value), (name, str(exc.value))


# -- (1) acyclic -------------------------------------------------------------


def test_check_1_cycle_is_rejected_and_spelled_out() -> None:
    LoopA = make_step("LoopA", "go")
    LoopB = make_step("LoopB", "back", "out")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class CycleFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {
                (Begin, "go"): LoopA,
                (LoopA, "go"): LoopB,
                (LoopB, "back"): LoopA,
                (LoopB, "out"): Done,
            }

    assert_names(exc, "CycleFlow", "cycle", "LoopA -> LoopB -> LoopA")


# -- (2) reachable ------------------------------------------------------------


def test_check_2_unreachable_step_is_named() -> None:
    Orphan = make_step("Orphan", "next")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class UnreachableFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): Done, (Orphan, "next"): Done}

    assert_names(exc, "UnreachableFlow", "Orphan", "unreachable", "start Begin")


# -- (3) leaves are Done -----------------------------------------------------------


def test_check_3_leaf_that_is_not_done_is_named() -> None:
    Dangling = make_step("Dangling")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class LeafFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): Dangling}

    assert_names(exc, "LeafFlow", "Dangling", "leaf", "Done")


# -- (4) static fan-out converges before Done ----------------------------------------


def test_check_4_fan_out_that_never_joins_is_named() -> None:
    Left = make_step("Left", "next")
    Right = make_step("Right", "next")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class SplitFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {
                (Begin, "go"): [Left, Right],
                (Left, "next"): Done,
                (Right, "next"): Done,
            }

    assert_names(exc, "SplitFlow", "fan-out of step Begin on 'go'", "Left", "Right", "converge")


def test_check_4_fan_out_that_joins_is_accepted() -> None:
    Left = make_step("Left", "next")
    Right = make_step("Right", "next")

    class JoinedFlow(Workflow, unique=U):
        start_at = Begin
        transitions = {
            (Begin, "go"): [Left, Right],
            (Left, "next"): Join,
            (Right, "next"): Join,
            (Join, "next"): Done,
        }

    assert JoinedFlow.predecessors(Join) == {"left", "right"}


# -- (5) context keys --------------------------------------------------------------


def test_check_5_two_steps_sharing_a_context_key_are_named() -> None:
    Ship = make_step("Ship", "next", step_key="ship")
    ShipAgain = make_step("ShipAgain", "next", step_key="ship")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class SharedKeyFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {
                (Begin, "go"): Ship,
                (Ship, "next"): ShipAgain,
                (ShipAgain, "next"): Done,
            }

    assert_names(exc, "SharedKeyFlow", "Ship", "ShipAgain", "'ship'")


# -- (6) events and transitions agree ------------------------------------------------


def test_check_6_declared_event_without_transition_is_named() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class MissingEventFlow(Workflow, unique=U):
            start_at = Validate
            transitions = {(Validate, "valid"): Done}

    assert_names(exc, "MissingEventFlow", "Validate", "'invalid'", "no transition")


def test_check_6_transition_on_undeclared_event_is_named() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class TypoFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): Done, (Begin, "gone"): Done}

    assert_names(exc, "TypoFlow", "Begin", "'gone'", "does not declare")


def test_check_6_done_has_no_outgoing_transition() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class AfterDoneFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): Done, (Done, "done"): Middle, (Middle, "next"): Done}

    assert_names(exc, "AfterDoneFlow", "terminal step Done", "'done'")


def test_check_6_wait_for_event_with_timeout_needs_a_timeout_transition() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class NoTimeoutFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {
                (Begin, "go"): (WaitForEvent, {"timeout": 5}),
                (WaitForEvent, "received"): Done,
            }

    assert_names(exc, "NoTimeoutFlow", "WaitForEvent", "'timeout'", "no transition")


# -- (7) unique -----------------------------------------------------------------------


def test_check_7_unique_is_required() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class NoUniqueFlow(Workflow):
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "NoUniqueFlow", "unique= is required")


def test_check_7_unique_must_be_a_unique_value() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class DictUniqueFlow(Workflow, unique={"key": "orderid"}):  # type: ignore[arg-type]
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "DictUniqueFlow", "unique must be a Unique", "orderid")


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"key": "Order-ID"}, "'Order-ID'"),
        ({"key": ""}, "''"),
        ({"key": "order_id"}, "'order_id'"),
        ({"key": "orderid", "scope": "tenant"}, "'tenant'"),
    ],
)
def test_check_7_bad_unique_key_or_scope_is_a_definition_error(
    kwargs: dict[str, str], culprit: str
) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadUniqueFlow(Workflow, unique=Unique(**kwargs)):  # type: ignore[arg-type]
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, culprit)
    # Built on its own, a bad Unique is also a ValueError.
    assert isinstance(exc.value, ValueError)


@pytest.mark.parametrize("scope", ["workflow", "version", "global", "none"])
def test_check_7_every_documented_scope_is_accepted(scope: str) -> None:
    class ScopedFlow(Workflow, unique=Unique(key="order1", scope=scope)):  # type: ignore[arg-type]
        start_at = Begin
        transitions = {(Begin, "go"): Done}

    assert ScopedFlow.unique == Unique(key="order1", scope=scope)  # type: ignore[arg-type]


# -- (8) version ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, -1, 1.5, "1", True])
def test_check_8_version_must_be_a_positive_int(version: object) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadVersionFlow(Workflow, unique=U, version=version):  # type: ignore[arg-type]
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "BadVersionFlow", "version must be a positive int", repr(version))


# -- (9) tags, metadata, static Wait config ------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "culprit"), [(("orders", 3), "tag 3"), ("orders", "string 'orders'")]
)
def test_check_9_tags_must_be_strings(tags: Any, culprit: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadTagsFlow(Workflow, unique=U, tags=tags):
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "BadTagsFlow", culprit)


@pytest.mark.parametrize(
    ("metadata", "culprit"),
    [
        ({1: "x"}, "key 1"),
        ({"team": object()}, "metadata['team']"),
        ({"nested": {"ids": (1, 2)}}, "metadata['nested']['ids']"),
        ({"ratio": float("nan")}, "metadata['ratio']"),
    ],
)
def test_check_9_metadata_needs_string_keys_and_json_safe_values(
    metadata: dict[Any, Any], culprit: str
) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadMetadataFlow(Workflow, unique=U, metadata=metadata):
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "BadMetadataFlow", culprit)


@pytest.mark.parametrize(
    ("config", "culprit"),
    [
        ({"duration": 2, "unit": "fortnight"}, "unknown unit 'fortnight'"),
        ({"duration": 0, "unit": "second"}, "duration must be a positive number, got 0"),
        ({"duration": -3}, "got -3"),
        ({"seconds": 0}, "seconds must be a positive number, got 0"),
        ({}, "neither"),
    ],
)
def test_check_9_static_wait_config_is_checked(config: dict[str, Any], culprit: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadWaitFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): (Wait, config), (Wait, "timeout"): Done}

    assert_names(exc, "BadWaitFlow", "step Wait has a bad config", culprit)


def test_check_9_wait_without_config_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BareWaitFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): Wait, (Wait, "timeout"): Done}

    assert_names(exc, "BareWaitFlow", "Wait", "needs a config")


def test_check_9_step_config_must_be_json_safe() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadConfigFlow(Workflow, unique=U):
            start_at = Begin
            transitions = {(Begin, "go"): (Middle, {"ids": {1, 2}}), (Middle, "next"): Done}

    assert_names(exc, "BadConfigFlow", "config of step Middle['ids']")


def test_good_metadata_and_tags_are_kept() -> None:
    class TaggedFlow(Workflow, unique=U, tags=("orders", "eu"), metadata={"team": "payments"}):
        start_at = Begin
        transitions = {(Begin, "go"): Done}

    assert TaggedFlow.tags == ("orders", "eu")
    assert TaggedFlow.metadata == {"team": "payments"}
    assert TaggedFlow.version == 1


def test_wait_config_may_be_given_after_wait_appears_as_a_source() -> None:
    # Dict order must not matter: Wait is a source before it is a configured target.
    class SourceFirstFlow(Workflow, unique=U):
        start_at = Begin
        transitions = {(Wait, "timeout"): Done, (Begin, "go"): (Wait, {"seconds": 2})}

    assert SourceFirstFlow.definition().configs["wait"] == {"seconds": 2}


def test_a_step_has_one_config() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class TwoConfigsFlow(Workflow, unique=U):
            start_at = Validate
            transitions = {
                (Validate, "valid"): (Wait, {"seconds": 1}),
                (Validate, "invalid"): (Wait, {"seconds": 2}),
                (Wait, "timeout"): Done,
            }

    assert_names(exc, "TwoConfigsFlow", "Wait", "two different configs")


# -- (10) dynamic routes are checked at run time ------------------------------------------


Triage = make_step("Triage", "routed")
FastTrack = make_step("FastTrack", "next")
Standard = make_step("Standard", "next")
Rogue = make_step("Rogue", "next")


def test_check_10_route_returning_an_undeclared_target_is_rejected() -> None:
    class RogueRouteFlow(Workflow, unique=U):
        start_at = Triage
        transitions = {(FastTrack, "next"): Done, (Standard, "next"): Done}

        @route(Triage, "routed", targets=[FastTrack, Standard])
        def triage(context: Context) -> Any:
            return Rogue

    inst = advance(Instance.new(RogueRouteFlow, {}, id="test::1", run_id="r1"))
    done = complete_step(inst, "triage", "routed")
    with pytest.raises(WorkflowDefinitionError) as exc:
        activate_transitions(done, "triage", "routed")
    assert_names(exc, "RogueRouteFlow", "route triage", "Rogue", "FastTrack", "Standard")


def test_route_targets_are_checked_at_definition_time_too() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class EmptyRouteFlow(Workflow, unique=U):
            start_at = Triage

            @route(Triage, "routed", targets=[])
            def triage(context: Context) -> Any:
                return None

    assert_names(exc, "route 'triage'", "targets must not be empty")


def test_route_and_static_transition_on_one_event_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class DoubleFlow(Workflow, unique=U):
            start_at = Triage
            transitions = {
                (Triage, "routed"): FastTrack,
                (FastTrack, "next"): Done,
                (Standard, "next"): Done,
            }

            @route(Triage, "routed", targets=[FastTrack, Standard])
            def triage(context: Context) -> Any:
                return Standard

    assert_names(exc, "DoubleFlow", "Triage", "'routed'", "already has a transition")


# -- step class checks -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("namespace", "culprit"),
    [
        ({"events": "done"}, "events must be a tuple"),
        ({"events": ("done", "done")}, "duplicates"),
        ({"events": ("has space",)}, "'has space'"),
        ({"events": ("ok",), "step_key": "Bad-Key"}, "'Bad-Key'"),
        ({"events": ("ok",), "retry": 3}, "retry must be a RetryPolicy"),
        ({"events": ("ok",), "timeout": 0}, "timeout must be a positive number"),
    ],
)
def test_bad_step_classes_are_rejected(namespace: dict[str, Any], culprit: str) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:
        type("BrokenStep", (Step,), namespace)
    assert_names(exc, "BrokenStep", culprit)


# -- versioning -----------------------------------------------------------------------------


class OrderV1(Workflow, unique=Unique(key="order"), version=1):
    start_at = Begin
    transitions = {(Begin, "go"): Done}


class OrderV2(Workflow, unique=Unique(key="order"), version=2):
    start_at = Begin
    transitions = {(Begin, "go"): Middle, (Middle, "next"): Done}


class Order(Workflow, unique=Unique(key="order"), versions={1: OrderV1, 2: OrderV2}, current=2):
    @classmethod
    def version_for(
        cls, versions: Mapping[int, type[Workflow]], options: Mapping[str, Any]
    ) -> int | None:
        context = options.get("context") or {}
        return 1 if context.get("legacy") else None


def test_dispatcher_exposes_its_versions() -> None:
    assert Order.is_dispatcher()
    assert Order.versions == {1: OrderV1, 2: OrderV2}
    assert Order.current == 2
    assert Order.version == 2
    # Every version belongs to the dispatcher's family.
    assert OrderV1.family == OrderV2.family == Order.name
    with pytest.raises(TypeError, match="dispatcher"):
        Order.definition()


def test_resolution_order_is_explicit_then_version_for_then_current() -> None:
    assert Order.resolve_version() is OrderV2
    assert Order.resolve_version(options={"context": {"legacy": False}}) is OrderV2
    assert Order.resolve_version(options={"context": {"legacy": True}}) is OrderV1
    assert Order.resolve_version(2, {"context": {"legacy": True}}) is OrderV2
    assert Order.resolve_version(1) is OrderV1


def test_unknown_version_names_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"no version 7.*known versions: \[1, 2\]"):
        Order.resolve_version(7)
    with pytest.raises(ValueError, match=r"no version 3.*known versions: \[1\]"):
        OrderV1.resolve_version(3)
    assert OrderV1.resolve_version(1) is OrderV1


def test_version_for_returning_an_unknown_version_is_a_value_error() -> None:
    class Picky(Workflow, unique=Unique(key="order"), versions={1: OrderV1, 2: OrderV2}, current=2):
        @classmethod
        def version_for(
            cls, versions: Mapping[int, type[Workflow]], options: Mapping[str, Any]
        ) -> int | None:
            return 9

    with pytest.raises(ValueError, match=r"no version 9.*\[1, 2\]"):
        Picky.resolve_version()


@pytest.mark.parametrize("key", [0, -2, "1", True])
def test_version_keys_must_be_positive_ints(key: Any) -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class BadKeys(Workflow, unique=U, versions={key: OrderV1}, current=key):
            pass

    assert_names(exc, "BadKeys", f"version key {key!r}")


def test_current_is_required_with_versions() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class NoCurrent(Workflow, unique=U, versions={1: OrderV1}):
            pass

    assert_names(exc, "NoCurrent", "current= is required", "[1]")


def test_current_must_be_one_of_the_versions() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class WrongCurrent(Workflow, unique=U, versions={1: OrderV1, 2: OrderV2}, current=3):
            pass

    assert_names(exc, "WrongCurrent", "current=3", "[1, 2]")


def test_current_without_versions_is_rejected() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class StrayCurrent(Workflow, unique=U, current=1):
            start_at = Begin
            transitions = {(Begin, "go"): Done}

    assert_names(exc, "StrayCurrent", "current=")


def test_version_class_version_must_equal_its_key() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class Mismatch(Workflow, unique=U, versions={2: OrderV1}, current=2):
            pass

    assert_names(exc, "Mismatch", "versions[2] = OrderV1", "version=1")


def test_version_and_versions_cannot_be_combined() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class Both(Workflow, unique=U, version=1, versions={1: OrderV1}, current=1):
            pass

    assert_names(exc, "Both", "version= cannot be combined with versions=")


def test_dispatcher_has_no_steps_of_its_own() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class StepsToo(Workflow, unique=U, versions={1: OrderV1}, current=1):
            start_at = Begin

    assert_names(exc, "StepsToo", "no steps")


def test_versions_must_be_concrete_workflows() -> None:
    with pytest.raises(WorkflowDefinitionError) as exc:

        class Nested(Workflow, unique=U, versions={2: Order}, current=2):
            pass

    assert_names(exc, "Nested", "versions[2] = Order", "not a dispatcher")
    with pytest.raises(WorkflowDefinitionError) as exc:

        class NotAWorkflow(Workflow, unique=U, versions={1: Begin}, current=1):  # type: ignore[dict-item]
            pass

    assert_names(exc, "NotAWorkflow", "versions[1] must be a Workflow class")


# -- introspection ------------------------------------------------------------------------


Triage2 = make_step("Triage2", "routed", step_key="triage")


class ShopFlow(Workflow, unique=Unique(key="shop")):
    start_at = Validate
    transitions = {
        (Validate, "valid"): [Middle, Other],
        (Validate, "invalid"): Done,
        (Middle, "next"): Join,
        (Other, "next"): Join,
        (Join, "next"): Triage2,
        (FastTrack, "next"): Done,
        (Standard, "next"): Done,
    }

    @route(Triage2, "routed", targets=[FastTrack, (Standard, {"tier": 2})])
    def pick(context: Context) -> Any:
        return FastTrack


def test_name_defaults_to_module_and_qualname() -> None:
    assert ShopFlow.name == f"{__name__}.ShopFlow"
    assert get_workflow(ShopFlow.name) is ShopFlow

    class Inner(Workflow, unique=U):
        start_at = Begin
        transitions = {(Begin, "go"): Done}

    assert Inner.name == f"{__name__}.{Inner.__qualname__}"
    assert "<locals>" in Inner.name


def test_name_can_be_given() -> None:
    class Named(Workflow, unique=U, name="billing.refunds"):
        start_at = Begin
        transitions = {(Begin, "go"): Done}

    assert Named.name == "billing.refunds"
    assert get_workflow("billing.refunds") is Named


def test_graph_lists_nodes_and_edges_with_events() -> None:
    graph = ShopFlow.graph()
    assert set(graph.nodes) == {
        "validate",
        "middle",
        "other",
        "join",
        "triage",
        "fast_track",
        "standard",
        "done",
    }
    assert graph.nodes[0] == "validate"
    assert set(graph.edges) == {
        Edge("validate", "valid", "middle"),
        Edge("validate", "valid", "other"),
        Edge("validate", "invalid", "done"),
        Edge("middle", "next", "join"),
        Edge("other", "next", "join"),
        Edge("join", "next", "triage"),
        Edge("fast_track", "next", "done"),
        Edge("standard", "next", "done"),
        Edge("triage", "routed", "fast_track", dynamic=True),
        Edge("triage", "routed", "standard", dynamic=True),
    }


def test_predecessors_take_a_class_or_a_key() -> None:
    assert ShopFlow.predecessors(Join) == {"middle", "other"}
    assert ShopFlow.predecessors("join") == {"middle", "other"}
    assert ShopFlow.predecessors(Done) == {"validate", "fast_track", "standard"}
    assert ShopFlow.predecessors("standard") == {"triage"}
    assert ShopFlow.predecessors(Validate) == frozenset()
    with pytest.raises(KeyError, match="nowhere"):
        ShopFlow.predecessors("nowhere")


def test_step_returns_the_class_for_a_key() -> None:
    assert ShopFlow.step("join") is Join
    assert ShopFlow.step("triage") is Triage2
    assert ShopFlow.step("done") is Done
    with pytest.raises(KeyError, match=r"nowhere.*validate"):
        ShopFlow.step("nowhere")


def test_route_target_config_is_part_of_the_definition() -> None:
    assert ShopFlow.definition().configs["standard"] == {"tier": 2}


def test_to_mermaid_draws_steps_and_edges() -> None:
    text = ShopFlow.to_mermaid()
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    assert '    validate["Validate"]' in lines
    assert '    done(["Done"])' in lines
    assert "    validate -->|valid| middle" in lines
    assert "    validate -->|invalid| done" in lines
    assert "    triage -.->|routed| standard" in lines


def test_to_mermaid_of_a_dispatcher_has_one_subgraph_per_version() -> None:
    text = Order.to_mermaid()
    assert 'subgraph v1["OrderV1 v1"]' in text
    assert 'subgraph v2["OrderV2 v2"]' in text
    assert "v2_begin -->|go| v2_middle" in text


def test_to_ascii_lists_each_step_and_its_transitions() -> None:
    text = ShopFlow.to_ascii()
    lines = text.splitlines()
    assert lines[0] == "ShopFlow (version 1, start: validate)"
    at = lines.index("  [validate] Validate")
    assert lines[at + 1 : at + 4] == [
        "      --valid--> middle",
        "      --valid--> other",
        "      --invalid--> done",
    ]
    assert "      ~~routed~~> fast_track" in lines
    at = lines.index("  [done] Done")
    assert lines[at + 1] == "      (end)"
    assert lines.count("      (end)") == 1


# -- steps ------------------------------------------------------------------------------


def test_step_key_defaults_to_snake_case_of_the_class_name() -> None:
    assert make_step("ValidateOrder", "ok").step_key == "validate_order"
    assert make_step("HTTPCall", "ok").step_key == "http_call"
    assert make_step("Charge2Card", "ok").step_key == "charge2_card"
    assert make_step("Custom", "ok", step_key="mine").step_key == "mine"
    assert snake_case("ProcessPayment") == "process_payment"
    assert Done.step_key == "done"
    assert Wait.step_key == "wait"
    assert WaitForEvent.step_key == "wait_for_event"


async def test_step_decorator_on_an_async_function() -> None:
    @step(events=("charged", "declined"), retry=RetryPolicy(max_attempts=3), timeout=2.0)
    async def charge_card(instance: Instance, config: Any, context: Context) -> Any:
        return Complete("charged", updates={"amount": context.initial["amount"]})

    assert issubclass(charge_card, Step)
    assert charge_card.step_key == "charge_card"
    assert charge_card.events == ("charged", "declined")
    assert charge_card.retry == RetryPolicy(max_attempts=3)
    assert charge_card.timeout == 2.0
    assert charge_card.is_async()
    inst = Instance.new("anything", {"amount": 5}, id="x::1", run_id="r")
    result = await charge_card().execute(inst, None, inst.context)  # type: ignore[misc]
    assert result == Complete("charged", updates={"amount": 5})


def test_step_decorator_on_a_plain_function() -> None:
    @step(events=("done",))
    def reserve_stock(instance: Instance, config: Any, context: Context) -> Any:
        return "done" if config == {"sku": "a"} else "wrong"

    assert reserve_stock.step_key == "reserve_stock"
    assert not reserve_stock.is_async()
    assert reserve_stock.retry == RetryPolicy()
    assert reserve_stock.timeout is None
    inst = Instance.new("anything", {}, id="x::1", run_id="r")
    assert reserve_stock().execute(inst, {"sku": "a"}, inst.context) == "done"


def test_step_decorated_functions_work_in_a_workflow() -> None:
    @step(events=("done",))
    async def pack(instance: Instance, config: Any, context: Context) -> str:
        return "done"

    class PackFlow(Workflow, unique=U):
        start_at = pack
        transitions = {(pack, "done"): Done}

    assert PackFlow.step("pack") is pack
    assert PackFlow.graph().edges == (Edge("pack", "done", "done"),)


def test_is_async_tells_sync_steps_apart() -> None:
    class SyncStep(Step):
        events = ("ok",)

        def execute(self, instance: Instance, config: Any, context: Context) -> str:
            return "ok"

    assert not SyncStep.is_async()
    assert Done.is_async()


@pytest.mark.parametrize(
    ("config", "seconds"),
    [
        ({"duration": 30, "unit": "second"}, 30.0),
        ({"duration": 30}, 30.0),
        ({"duration": 2, "unit": "minute"}, 120.0),
        ({"duration": 2, "unit": "minutes"}, 120.0),
        ({"duration": 3, "unit": "hour"}, 10800.0),
        ({"duration": 1, "unit": "day"}, 86400.0),
        ({"duration": 0.5, "unit": "minute"}, 30.0),
        ({"seconds": 1.5}, 1.5),
    ],
)
async def test_wait_converts_its_config_to_seconds(config: dict[str, Any], seconds: float) -> None:
    assert wait_seconds(config) == seconds
    inst = Instance.new("anything", {}, id="x::1", run_id="r")
    assert await Wait().execute(inst, config, inst.context) == Suspend(
        after=seconds, event="timeout"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (None, "needs a config"),
        ({"seconds": 1, "duration": 1}, "not both"),
        ({"duration": 1, "unit": "week"}, "unknown unit 'week'"),
        ({"duration": 1, "unit": 3}, "unknown unit 3"),
        ({"seconds": -1}, "got -1"),
        ({"seconds": True}, "got True"),
        ({"duration": "5"}, "got '5'"),
        ({"timeout": 5}, "neither"),
    ],
)
def test_wait_rejects_bad_configs(config: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        wait_seconds(config)


async def test_wait_for_event_declares_timeout_only_with_a_timeout() -> None:
    assert WaitForEvent.declared_events(None) == ("received",)
    assert WaitForEvent.declared_events({"event_name": "paid"}) == ("received",)
    assert WaitForEvent.declared_events({"timeout": 10}) == ("received", "timeout")
    inst = Instance.new("anything", {}, id="x::1", run_id="r")
    assert await WaitForEvent().execute(inst, None, inst.context) == Suspend()
    assert await WaitForEvent().execute(inst, {"timeout": 10}, inst.context) == Suspend(
        after=10.0, event="timeout"
    )


def test_wait_for_event_maps_its_event_name_to_received() -> None:
    config = {"event_name": "payment_confirmed"}
    assert WaitForEvent.resume_event(config, "payment_confirmed") == "received"
    assert WaitForEvent.resume_event(config, "received") == "received"
    assert WaitForEvent.resume_event(config, "payment_failed") is None
    assert WaitForEvent.resume_event(config, "timeout") is None
    assert WaitForEvent.resume_event({"timeout": 3}, "timeout") == "timeout"


@pytest.mark.parametrize(
    ("config", "message"),
    [({"timeout": 0}, "timeout must be a positive"), ({"event_name": ""}, "event_name")],
)
def test_wait_for_event_rejects_bad_configs(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WaitForEvent.validate_config(config)


def test_suspend_after_must_be_non_negative_seconds() -> None:
    assert Suspend(after=0).after == 0
    with pytest.raises(ValueError, match="-1"):
        Suspend(after=-1)


# -- policies ------------------------------------------------------------------------------


def test_constant_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, backoff="constant", base=0.5)
    assert [policy.delay(k) for k in range(1, 5)] == [0.5, 0.5, 0.5, 0.5]


def test_linear_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, backoff="linear", base=0.5)
    assert [policy.delay(k) for k in range(1, 5)] == [0.5, 1.0, 1.5, 2.0]


def test_exponential_backoff() -> None:
    policy = RetryPolicy(max_attempts=5, backoff="exponential", base=0.25)
    assert [policy.delay(k) for k in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 4.0]


@pytest.mark.parametrize("backoff", ["constant", "linear", "exponential"])
def test_every_backoff_is_capped_by_max_backoff(backoff: Any) -> None:
    policy = RetryPolicy(max_attempts=9, backoff=backoff, base=2.0, max_backoff=3.0)
    delays = [policy.delay(k) for k in range(1, 9)]
    assert max(delays) <= 3.0
    assert delays[0] == 2.0
    if backoff != "constant":
        assert delays[-1] == 3.0


def test_jitter_uses_the_injected_random() -> None:
    policy = RetryPolicy(backoff="constant", base=2.0, jitter=True)
    first = [policy.delay(1, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    assert 1.0 <= first[0] <= 2.0
    assert RetryPolicy(backoff="constant", base=2.0).delay(1, random.Random(7)) == 2.0


def test_jitter_without_an_rng_is_refused_rather_than_made_up() -> None:
    with pytest.raises(ValueError, match="rng"):
        RetryPolicy(jitter=True).delay(1)


def test_should_retry_counts_attempts_from_one() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert [policy.should_retry(k) for k in (1, 2, 3)] == [True, True, False]
    assert not RetryPolicy().should_retry(1)


@pytest.mark.parametrize(
    "kwargs", [{"max_attempts": 0}, {"backoff": "quadratic"}, {"base": -1}, {"max_backoff": -1}]
)
def test_bad_retry_policies_are_rejected(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        RetryPolicy(**kwargs)


def test_restart_policy_counts_restarts_inside_the_window() -> None:
    policy = RestartPolicy(max_restarts=2, within=5.0)
    assert policy.should_restart([], 0.0)
    assert policy.should_restart([0.0], 1.0)
    assert not policy.should_restart([0.0, 1.0], 2.0)
    # Restarts older than the window no longer count.
    assert policy.should_restart([0.0, 1.0], 5.5)
    assert policy.should_restart([0.0, 1.0], 6.0)


@pytest.mark.parametrize("max_restarts", [0, 1, 3])
def test_an_always_crashing_instance_runs_max_restarts_plus_one_times(max_restarts: int) -> None:
    policy = RestartPolicy(max_restarts=max_restarts, within=5.0)
    restarts: list[float] = []
    runs, now = 1, 10.0
    while policy.should_restart(restarts, now):
        restarts.append(now)
        runs += 1
        now += 0.1
    assert runs == max_restarts + 1
