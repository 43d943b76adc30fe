"""Hypothesis strategies: random *valid* workflows and outcome scripts for them.

``workflow_specs()`` draws a ``WorkflowSpec``, plain data describing a DAG that
passes every definition check by construction; ``build_workflow`` turns one
into a real ``Workflow`` class, and ``workflows()`` does both. Generated
classes get unique registry names from a counter, so the global workflow
registry never collides across examples.

How a valid DAG is drawn: nodes ``s0 .. s{n-1}`` are in topological order and
``done`` comes last. Nodes are generated from the last to the first, so when
node *i* picks its targets the descendants of every later node are known:

* an event of a task goes to one later node (``done`` included): several
  events of one task are *exclusive branches*;
* or, for a task, a *static fan-out* to 2-3 later nodes that all reach one
  common join node, so the branches converge before ``Done`` (check 4);
* ``Wait`` nodes have the single event ``timeout``; ``WaitForEvent`` nodes
  ``received`` (plus ``timeout`` when their config has one);
* every node has an outgoing transition and every path ends in ``done``
  (check 3); a node that nothing reaches gets a new exclusive event from an
  earlier reachable task (check 2). ``s0`` is always a task.
"""

from __future__ import annotations

import itertools
import types
from collections.abc import Mapping
from typing import Any, Literal

import attrs
from hypothesis import strategies as st

from ..core._instance import Context, Instance
from ..core._step import Step
from ..core._unique import Unique
from ..core._workflow import Workflow
from ..steps import Done, Wait, WaitForEvent
from ._driver import Outcome, OutcomeScript, scripted_result

__all__ = [
    "DONE",
    "NodeSpec",
    "TransitionSpec",
    "WorkflowSpec",
    "build_workflow",
    "outcome_scripts",
    "workflow_specs",
    "workflows",
]

DONE = "done"
"""Step key of the ``Done`` node of every generated workflow."""

NodeKind = Literal["task", "wait", "wait_for_event"]
_COUNTER = itertools.count(1)
# One step in ten fails when failures are on; it shrinks towards "no failure".
_FAIL_ODDS = (False,) * 9 + (True,)


@attrs.frozen(kw_only=True)
class NodeSpec:
    """One non-terminal step of a generated workflow."""

    key: str
    """Step key (``s0``, ``s1``, ...)."""
    kind: NodeKind
    """A plain task, a ``Wait`` or a ``WaitForEvent``."""
    events: tuple[str, ...]
    """Events the step declares."""
    config: Mapping[str, Any] | None = None
    """Static config given wherever the step is a target."""


@attrs.frozen(kw_only=True)
class TransitionSpec:
    """``(source, event) -> targets``; several targets is a static fan-out."""

    source: str
    event: str
    targets: tuple[str, ...]


@attrs.frozen(kw_only=True)
class WorkflowSpec:
    """Plain-data description of a workflow; ``build_workflow`` makes the class."""

    nodes: tuple[NodeSpec, ...]
    """Non-terminal steps in topological order; ``nodes[0]`` is the start."""
    transitions: tuple[TransitionSpec, ...]
    """Every transition; targets may be ``DONE``."""

    def node(self, key: str) -> NodeSpec:
        """The node with step key ``key``."""
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(key)


def _task_class(name: str, key: str, events: tuple[str, ...]) -> type[Step]:
    async def execute(self: Step, instance: Instance, config: Any, context: Context) -> Any:
        return scripted_result(key, events, context)

    namespace = {
        "events": events,
        "step_key": key,
        "execute": execute,
        "__module__": __name__,
        "__qualname__": name,
    }
    return type(name, (Step,), namespace)


def _step_class(label: str, node: NodeSpec) -> type[Step]:
    name = f"{label}_{node.key}"
    if node.kind == "task":
        return _task_class(name, node.key, node.events)
    base: type[Step] = Wait if node.kind == "wait" else WaitForEvent
    namespace = {"step_key": node.key, "__module__": __name__, "__qualname__": name}
    return type(name, (base,), namespace)


def build_workflow(spec: WorkflowSpec, *, name: str | None = None) -> type[Workflow]:
    """Make the ``Workflow`` class ``spec`` describes (the definition checks run here).

    Each call makes fresh step classes and a class named ``GeneratedN`` with a
    counter ``N``, registered as ``hephaestus_trio.testing.GeneratedN`` unless
    ``name`` is given.

    Raises:
        WorkflowDefinitionError: the spec does not describe a valid workflow.
    """
    label = f"Generated{next(_COUNTER)}"
    classes: dict[str, type[Step]] = {DONE: Done}
    configs: dict[str, Mapping[str, Any] | None] = {DONE: None}
    for node in spec.nodes:
        classes[node.key] = _step_class(label, node)
        configs[node.key] = node.config

    def target(key: str) -> Any:
        config = configs[key]
        return classes[key] if config is None else (classes[key], dict(config))

    transitions: dict[Any, Any] = {}
    for t in spec.transitions:
        targets = [target(k) for k in t.targets]
        transitions[(classes[t.source], t.event)] = targets[0] if len(targets) == 1 else targets
    body = {
        "start_at": target(spec.nodes[0].key),
        "transitions": transitions,
        "__module__": __name__,
        "__qualname__": label,
    }
    options = {
        "unique": Unique(key="generated", scope="workflow"),
        "name": name or f"hephaestus_trio.testing.{label}",
    }
    cls = types.new_class(label, (Workflow,), options, lambda ns: ns.update(body))
    return cls


def _descendants(
    transitions: list[TransitionSpec], key: str, memo: dict[str, frozenset[str]]
) -> frozenset[str]:
    if key not in memo:
        found = {key}
        for t in transitions:
            if t.source == key:
                for target in t.targets:
                    found |= _descendants(transitions, target, memo)
        memo[key] = frozenset(found)
    return memo[key]


@st.composite
def _node(draw: st.DrawFn, key: str, *, allow_waits: bool) -> NodeSpec:
    kinds: list[NodeKind] = ["task", "wait", "wait_for_event"] if allow_waits else ["task"]
    kind = draw(st.sampled_from(kinds))
    if kind == "wait":
        config: dict[str, Any] = draw(
            st.one_of(
                st.builds(lambda s: {"seconds": s}, st.sampled_from([0.5, 1, 2.5, 30])),
                st.builds(
                    lambda d, u: {"duration": d, "unit": u},
                    st.integers(1, 5),
                    st.sampled_from(["second", "minute", "hour", "day"]),
                ),
            )
        )
        return NodeSpec(key=key, kind=kind, events=("timeout",), config=config)
    if kind == "wait_for_event":
        config = {}
        if draw(st.booleans()):
            config["event_name"] = f"signal_{key}"
        if draw(st.booleans()):
            config["timeout"] = draw(st.sampled_from([1, 5, 60]))
        events = ("received", "timeout") if "timeout" in config else ("received",)
        return NodeSpec(key=key, kind=kind, events=events, config=config or None)
    count = draw(st.integers(1, 3))
    return NodeSpec(key=key, kind=kind, events=tuple(f"e{i}" for i in range(count)))


@st.composite
def workflow_specs(
    draw: st.DrawFn,
    *,
    max_steps: int = 6,
    allow_waits: bool = True,
    allow_fan_out: bool = True,
) -> WorkflowSpec:
    """Specs of valid workflows with 1 to ``max_steps`` steps before ``Done``.

    Exclusive branching (a task with several events going to different
    targets), static fan-outs with joins, and (with ``allow_waits``) ``Wait``
    and ``WaitForEvent`` steps; every path ends in ``Done``.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    count = draw(st.integers(1, max_steps))
    keys = [f"s{i}" for i in range(count)]
    nodes: list[NodeSpec] = [
        draw(_node(key, allow_waits=allow_waits and i > 0)) for i, key in enumerate(keys)
    ]
    transitions: list[TransitionSpec] = []
    memo: dict[str, frozenset[str]] = {DONE: frozenset({DONE})}
    for i in reversed(range(count)):
        node = nodes[i]
        later = keys[i + 1 :]
        for event in node.events:
            fan_out: tuple[str, ...] = ()
            if node.kind == "task" and allow_fan_out and len(later) >= 2 and draw(st.booleans()):
                # Joins: later nodes that at least two later nodes (themselves included) reach.
                joins = [
                    j
                    for j in later
                    if sum(j in _descendants(transitions, k, memo) for k in later) >= 2
                ]
                if joins:
                    join = draw(st.sampled_from(joins))
                    feeders = [k for k in later if join in _descendants(transitions, k, memo)]
                    fan_out = tuple(
                        draw(
                            st.lists(
                                st.sampled_from(feeders),
                                min_size=2,
                                max_size=min(3, len(feeders)),
                                unique=True,
                            )
                        )
                    )
            targets = fan_out or (draw(st.sampled_from([*later, DONE])),)
            transitions.append(TransitionSpec(source=node.key, event=event, targets=targets))
    # Reachability: a node nothing reaches gets a new exclusive event from an
    # earlier task (every earlier node is reachable by then; s0 is a task).
    # Earlier-to-later edges keep the graph acyclic, and a single target
    # needs no join.
    reached = {keys[0]}
    for i, key in enumerate(keys):
        if key not in reached:
            source = draw(st.sampled_from([n for n in nodes[:i] if n.kind == "task"]))
            event = f"e{len(source.events)}"
            nodes[keys.index(source.key)] = attrs.evolve(source, events=(*source.events, event))
            transitions.append(TransitionSpec(source=source.key, event=event, targets=(key,)))
        for t in transitions:
            if t.source == key:
                reached.update(t.targets)
    transitions.sort(key=lambda t: (keys.index(t.source), t.event))
    return WorkflowSpec(nodes=tuple(nodes), transitions=tuple(transitions))


def workflows(
    *, max_steps: int = 6, allow_waits: bool = True, allow_fan_out: bool = True
) -> st.SearchStrategy[type[Workflow]]:
    """Valid random ``Workflow`` classes (see ``workflow_specs`` for the shapes).

    Synopsis::

        @given(workflows(max_steps=4))
        def test_renders(wf):
            assert "flowchart" in wf.to_mermaid()
    """
    return workflow_specs(
        max_steps=max_steps, allow_waits=allow_waits, allow_fan_out=allow_fan_out
    ).map(build_workflow)


@st.composite
def outcome_scripts(
    draw: st.DrawFn, workflow: type[Workflow], *, failures: bool = True
) -> OutcomeScript:
    """Scripts for ``workflow``: per step, the event it emits and whether it parks first.

    ``Done`` completes with ``"done"``; a ``Wait`` parks and is resumed with
    ``"timeout"``; a ``WaitForEvent`` parks and is resumed with one of its
    events (or its ``event_name``, delivered as ``"received"``); any other step
    emits one of its declared events, parks first or not, and (with
    ``failures``) sometimes fails. The scheduling choices decide which active
    step moves next. Play a script with ``run_script``.
    """
    definition = workflow.definition()
    outcomes: dict[str, Outcome] = {}
    for key, cls in definition.steps.items():
        declared = definition.declared_events(key)
        config = definition.configs.get(key) or {}
        if cls.terminal:
            outcomes[key] = Outcome(event=declared[0])
        elif issubclass(cls, Wait):
            outcomes[key] = Outcome(event="timeout", suspend=True)
        elif issubclass(cls, WaitForEvent):
            event = draw(st.sampled_from(declared))
            offered = None
            if event == "received" and config.get("event_name"):
                offered = draw(st.sampled_from([None, str(config["event_name"])]))
            outcomes[key] = Outcome(event=event, suspend=True, resume_with=offered)
        else:
            outcomes[key] = Outcome(
                event=draw(st.sampled_from(declared)),
                suspend=draw(st.booleans()),
                fail=failures and draw(st.sampled_from(_FAIL_ODDS)),
            )
    choices = tuple(draw(st.lists(st.integers(0, 3), max_size=2 * len(definition.steps))))
    return OutcomeScript(outcomes=outcomes, choices=choices)
