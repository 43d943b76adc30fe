"""The static shape of a workflow and the definition-time checks over it.

``Definition`` is built once per workflow class from its ``start_at``,
``transitions`` and ``@route`` functions. Each SPEC check is a small function
that raises ``WorkflowDefinitionError`` naming the workflow, steps and events.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, final

import attrs

from .._errors import WorkflowDefinitionError
from ._json import check_json_safe
from ._step import Step

__all__ = ["Definition", "Edge", "Graph", "RouteSpec", "Target"]


@attrs.frozen
class Target:
    """A transition target: a step class and the static config it runs with."""

    step: type[Step]
    config: Mapping[str, Any] | None = None


@attrs.frozen(eq=False)
class RouteSpec:
    """A dynamic transition declared with ``@route``: ``fn(context)`` picks targets."""

    source: type[Step]
    event: str
    targets: tuple[Target, ...]
    fn: Callable[..., Any]

    @property
    def name(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


@final
@attrs.frozen
class Edge:
    """One transition of the graph: ``source --event--> target``."""

    source: str
    event: str
    target: str
    dynamic: bool = False
    """True for a declared target of a ``@route`` (chosen at run time)."""


@final
@attrs.frozen
class Graph:
    """Nodes (step keys, definition order) and edges of a workflow."""

    nodes: tuple[str, ...]
    edges: tuple[Edge, ...]


def _err(workflow: str, message: str) -> WorkflowDefinitionError:
    return WorkflowDefinitionError(f"{workflow}: {message}")


def parse_target(workflow: str, where: str, value: Any) -> Target:
    """``Step`` or ``(Step, {config})`` -> ``Target``; anything else is a definition error."""
    if isinstance(value, type) and issubclass(value, Step):
        return Target(value)
    if (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], type)
        and issubclass(value[0], Step)
        and (value[1] is None or isinstance(value[1], Mapping))
    ):
        config = None if value[1] is None else dict(value[1])
        return Target(value[0], config)
    raise _err(
        workflow,
        f"{where}: expected a Step subclass or (Step, {{config}}), got {value!r}",
    )


def parse_targets(workflow: str, where: str, value: Any) -> tuple[Target, ...]:
    if isinstance(value, list):
        if not value:
            raise _err(workflow, f"{where}: an empty target list leads nowhere")
        return tuple(parse_target(workflow, where, item) for item in value)
    return (parse_target(workflow, where, value),)


@attrs.frozen(eq=False)
class Definition:
    """Everything the pure engine needs to know about one workflow class."""

    name: str
    start: str
    steps: Mapping[str, type[Step]]
    """step key -> class, in definition order."""
    configs: Mapping[str, Mapping[str, Any] | None]
    """step key -> static config (or None)."""
    transitions: Mapping[tuple[str, str], tuple[str, ...]]
    """(source key, event) -> target keys, static transitions."""
    routes: Mapping[tuple[str, str], RouteSpec]
    """(source key, event) -> dynamic route."""
    predecessors: Mapping[str, frozenset[str]]
    """step key -> keys of every step with a transition (static or dynamic) into it."""

    def successors(self, key: str) -> frozenset[str]:
        out: set[str] = set()
        for (source, _), targets in self.transitions.items():
            if source == key:
                out.update(targets)
        for (source, _), route in self.routes.items():
            if source == key:
                out.update(t.step.step_key for t in route.targets)
        return frozenset(out)

    def declared_events(self, key: str) -> tuple[str, ...]:
        return self.steps[key].declared_events(self.configs.get(key))

    def graph(self) -> Graph:
        edges: list[Edge] = []
        for (source, event), targets in self.transitions.items():
            edges.extend(Edge(source, event, t) for t in targets)
        for (source, event), route in self.routes.items():
            edges.extend(Edge(source, event, t.step.step_key, True) for t in route.targets)
        return Graph(tuple(self.steps), tuple(edges))


def build_definition(
    workflow: str,
    start_at: Any,
    transitions: Any,
    routes: list[RouteSpec],
) -> Definition:
    """Parse the class body's declarations, then run every graph check."""
    steps: dict[str, type[Step]] = {}
    configs: dict[str, Mapping[str, Any] | None] = {}
    # Keys seen only as a transition *source* so far: a source carries no
    # config, so the first target occurrence (in any dict order) sets it.
    unconfigured: set[str] = set()

    def register(target: Target, where: str, *, source: bool = False) -> str:
        key = target.step.step_key
        known = steps.get(key)
        if known is not None and known is not target.step:
            # check (5): the step key is the context key
            raise _err(
                workflow,
                f"steps {known.__name__} and {target.step.__name__} share the context key "
                f"{key!r}; give one of them another step_key",
            )
        if source:
            if known is None:
                steps[key] = target.step
                configs[key] = None
                unconfigured.add(key)
            return key
        if key in unconfigured:
            unconfigured.discard(key)
            configs[key] = target.config
            return key
        if known is not None and configs[key] != target.config:
            raise _err(
                workflow,
                f"step {target.step.__name__} is given two different configs "
                f"({configs[key]!r} and {target.config!r}, at {where}); a step has one config",
            )
        if known is None:
            steps[key] = target.step
            configs[key] = target.config
        return key

    if start_at is None:
        raise _err(workflow, "start_at is missing; set it to the first step class")
    start = register(parse_target(workflow, "start_at", start_at), "start_at")

    if not isinstance(transitions, Mapping):
        raise _err(
            workflow,
            f"transitions must be a dict {{(Step, 'event'): Target}}, got {transitions!r}",
        )
    static: dict[tuple[str, str], tuple[str, ...]] = {}
    for raw_key, raw_value in transitions.items():
        if not (
            isinstance(raw_key, tuple)
            and len(raw_key) == 2
            and isinstance(raw_key[0], type)
            and issubclass(raw_key[0], Step)
            and isinstance(raw_key[1], str)
        ):
            raise _err(
                workflow, f"transition key {raw_key!r} must be a (Step subclass, 'event') tuple"
            )
        source_cls, event = raw_key
        where = f"transition ({source_cls.__name__}, {event!r})"
        source = register(Target(source_cls), where, source=True)
        keys = tuple(register(t, where) for t in parse_targets(workflow, where, raw_value))
        if len(set(keys)) != len(keys):
            raise _err(workflow, f"{where} lists the same target twice: {list(keys)}")
        static[(source, event)] = keys

    dynamic: dict[tuple[str, str], RouteSpec] = {}
    for route in routes:
        where = f"route {route.name} ({route.source.__name__}, {route.event!r})"
        source = register(Target(route.source), where, source=True)
        for target in route.targets:
            register(target, where)
        if (source, route.event) in static or (source, route.event) in dynamic:
            raise _err(
                workflow,
                f"{where}: step {route.source.__name__} event {route.event!r} already has "
                "a transition; an event has one transition (static or routed)",
            )
        dynamic[(source, route.event)] = route

    predecessors: dict[str, set[str]] = {key: set() for key in steps}
    for (source, _), targets in static.items():
        for target_key in targets:
            predecessors[target_key].add(source)
    for (source, _), route in dynamic.items():
        for t in route.targets:
            predecessors[t.step.step_key].add(source)

    definition = Definition(
        name=workflow,
        start=start,
        steps=steps,
        configs=configs,
        transitions=static,
        routes=dynamic,
        predecessors={k: frozenset(v) for k, v in predecessors.items()},
    )
    check_configs(definition)
    check_events(definition)
    check_acyclic(definition)
    check_reachable(definition)
    check_leaves(definition)
    check_fan_out_converges(definition)
    return definition


def _name(definition: Definition, key: str) -> str:
    return definition.steps[key].__name__


def check_configs(definition: Definition) -> None:
    """Check (9), static part: each step accepts its static config (e.g. ``Wait``)."""
    for key, cls in definition.steps.items():
        config = definition.configs[key]
        if config is not None:
            try:
                check_json_safe(dict(config), f"config of step {cls.__name__}")
            except TypeError as exc:
                raise _err(definition.name, str(exc)) from None
        try:
            cls.validate_config(config)
        except (ValueError, TypeError) as exc:
            raise _err(definition.name, f"step {cls.__name__} has a bad config: {exc}") from None


def check_events(definition: Definition) -> None:
    """Check (6): declared events have transitions and transitions use declared events."""
    handled: dict[str, set[str]] = {key: set() for key in definition.steps}
    for source, event in [*definition.transitions, *definition.routes]:
        handled[source].add(event)
    for key, cls in definition.steps.items():
        declared = definition.declared_events(key)
        for event in sorted(handled[key] - set(declared)):
            raise _err(
                definition.name,
                f"transition on step {cls.__name__} event {event!r}, but {cls.__name__} "
                f"does not declare {event!r} (it declares {list(declared)})",
            )
        if getattr(cls, "terminal", False):
            if handled[key]:
                raise _err(
                    definition.name,
                    f"terminal step {cls.__name__} must not have outgoing transitions "
                    f"(found events {sorted(handled[key])})",
                )
            continue
        missing = [e for e in declared if e not in handled[key]]
        if missing:
            raise _err(
                definition.name,
                f"step {cls.__name__} declares event(s) {missing} with no transition; "
                "add a transition for each",
            )


def check_acyclic(definition: Definition) -> None:
    """Check (1): the graph is a DAG; the message spells out one cycle."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(definition.steps, white)
    stack: list[str] = []

    def visit(key: str) -> None:
        color[key] = grey
        stack.append(key)
        for nxt in sorted(definition.successors(key)):
            if color[nxt] == grey:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise _err(
                    definition.name,
                    "transitions form a cycle: " + " -> ".join(_name(definition, k) for k in cycle),
                )
            if color[nxt] == white:
                visit(nxt)
        stack.pop()
        color[key] = black

    for key in definition.steps:
        if color[key] == white:
            visit(key)


def descendants(definition: Definition, key: str) -> set[str]:
    """Every step reachable from ``key``, ``key`` included."""
    seen = {key}
    todo = [key]
    while todo:
        for nxt in definition.successors(todo.pop()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def check_reachable(definition: Definition) -> None:
    """Check (2): every step is reachable from ``start_at``."""
    reachable = descendants(definition, definition.start)
    unreachable = [k for k in definition.steps if k not in reachable]
    if unreachable:
        names = ", ".join(_name(definition, k) for k in unreachable)
        raise _err(
            definition.name,
            f"step(s) {names} are unreachable from start {_name(definition, definition.start)}",
        )


def check_leaves(definition: Definition) -> None:
    """Check (3): every leaf is ``Done`` (a terminal step)."""
    for key, cls in definition.steps.items():
        if not definition.successors(key) and not getattr(cls, "terminal", False):
            raise _err(
                definition.name,
                f"step {cls.__name__} is a leaf (no outgoing transition) but not Done; "
                "every path must end in Done",
            )


def check_fan_out_converges(definition: Definition) -> None:
    """Check (4): the branches of each static fan-out meet at a step before ``Done``."""
    for (source, event), targets in definition.transitions.items():
        if len(targets) < 2:
            continue
        common: set[str] | None = None
        for target in targets:
            below = {
                k
                for k in descendants(definition, target)
                if not getattr(definition.steps[k], "terminal", False)
            }
            common = below if common is None else common & below
        if not common:
            names = ", ".join(_name(definition, t) for t in targets)
            raise _err(
                definition.name,
                f"fan-out of step {_name(definition, source)} on {event!r} to [{names}] "
                "never converges before Done; join the branches at a common step",
            )
