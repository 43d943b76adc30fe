"""A workflow compiled into lookup tables, once, when its class is defined.

The pure engine used to answer "what does ``(step, event)`` lead to" and
"which steps are ready now" by rescanning the ``Definition`` (and every taken
edge of the run) on each transition. ``CompiledWorkflow`` holds the answers
that depend only on the graph, so a transition costs a few dictionary lookups
plus work proportional to the steps it actually decides:

* ``transitions[(step, event)]``: the targets (static keys with their configs,
  or the ``@route`` to evaluate with its declared targets by key);
* ``successors`` / ``predecessors`` of every step and its join count (how many
  edges come into it), which drive the dead-path rules incrementally: a
  completed step decides exactly its outgoing edges; a step that becomes dead
  decides its own outgoing edges in turn; only steps reached that way can
  become ready.

It is built from the checked ``Definition`` and never changes (frozen, read-only
mappings), so it is safe to share between every run of the class.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from types import MappingProxyType
from typing import Any, final

import attrs

from ._graph import Definition, RouteSpec, Target

__all__ = ["CompiledTransition", "CompiledWorkflow", "compile_definition", "dead_checker"]


@final
@attrs.frozen(eq=False)
class CompiledTransition:
    """The table entry of one ``(step, event)``: where it leads."""

    targets: tuple[str, ...]
    """Static target keys (empty for a route: its targets are chosen at run time)."""
    configs: Mapping[str, Mapping[str, Any] | None]
    """Target key -> the config it starts with (static targets, or a route's declared ones)."""
    route: RouteSpec | None = None
    """The ``@route`` to evaluate on the run's context, if the transition is dynamic."""
    declared: Mapping[str, Target] = attrs.field(factory=dict)
    """For a route: declared target key -> ``Target``."""


@final
@attrs.frozen(eq=False)
class CompiledWorkflow:
    """The graph of one workflow class as tables (see the module docstring)."""

    start: str
    transitions: Mapping[tuple[str, str], CompiledTransition]
    successors: Mapping[str, frozenset[str]]
    predecessors: Mapping[str, frozenset[str]]
    join_counts: Mapping[str, int]
    """Step key -> number of steps with an edge into it (a join when > 1)."""
    terminal: frozenset[str]
    """Keys of the terminal (``Done``) steps."""
    static_configs: Mapping[str, Mapping[str, Any] | None]
    """Step key -> its static config (or None)."""
    static_events: Mapping[str, tuple[str, ...]]
    """Step key -> events it declares under its static config."""


def compile_definition(definition: Definition) -> CompiledWorkflow:
    """Build the tables of a checked ``Definition`` (once per workflow class)."""
    table: dict[tuple[str, str], CompiledTransition] = {}
    for key, targets in definition.transitions.items():
        table[key] = CompiledTransition(
            targets=targets,
            configs=MappingProxyType({t: definition.configs.get(t) for t in targets}),
        )
    for key, route in definition.routes.items():
        declared = {t.step.step_key: t for t in route.targets}
        table[key] = CompiledTransition(
            targets=(),
            configs=MappingProxyType({k: t.config for k, t in declared.items()}),
            route=route,
            declared=MappingProxyType(declared),
        )
    return CompiledWorkflow(
        start=definition.start,
        transitions=MappingProxyType(table),
        successors=MappingProxyType({k: definition.successors(k) for k in definition.steps}),
        predecessors=MappingProxyType(dict(definition.predecessors)),
        join_counts=MappingProxyType({k: len(p) for k, p in definition.predecessors.items()}),
        terminal=frozenset(k for k, cls in definition.steps.items() if cls.terminal),
        static_configs=MappingProxyType(dict(definition.configs)),
        static_events=MappingProxyType(
            {k: definition.declared_events(k) for k in definition.steps}
        ),
    )


def dead_checker(
    start: str,
    predecessors: Mapping[str, Collection[str]],
    completed: Collection[str],
    active: Collection[str],
    taken: Collection[tuple[str, str]],
) -> Callable[[str], bool]:
    """A memoized ``is_dead(step_key)`` under the join rule of the pure engine.

    The start step and completed or active steps are never dead; any other
    step is dead when every edge into it is dead (its source completed and
    chose something else, or its source is dead). The one definition both the
    full scan (``ready_steps``, ``can_still_run``) and the incremental path use,
    so they can never disagree.
    """
    return _DeadChecker(start, predecessors, completed, active, taken)


class _DeadChecker:
    """``dead_checker``'s answer: an object, not two closures calling each other.

    Mutually recursive closures form a reference cycle (each holds the other's
    cell), so every transition through a join would leave cyclic garbage for
    the collector; an instance is freed by reference counting the moment the
    transition is decided.
    """

    __slots__ = ("_active", "_completed", "_dead", "_predecessors", "_start", "_taken")

    def __init__(
        self,
        start: str,
        predecessors: Mapping[str, Collection[str]],
        completed: Collection[str],
        active: Collection[str],
        taken: Collection[tuple[str, str]],
    ) -> None:
        self._start = start
        self._predecessors = predecessors
        self._completed = completed
        self._active = active
        self._taken = taken
        self._dead: dict[str, bool] = {}

    def __call__(self, key: str) -> bool:
        known = self._dead.get(key)
        if known is None:
            if key == self._start or key in self._completed or key in self._active:
                known = False
            else:
                known = all(self._edge_dead(p, key) for p in self._predecessors[key])
            self._dead[key] = known
        return known

    def _edge_dead(self, pred: str, key: str) -> bool:
        if pred in self._completed:
            return (pred, key) not in self._taken
        return self(pred)


def newly_ready(
    compiled: CompiledWorkflow,
    step: str,
    completed: Collection[str],
    active: Collection[str],
    taken: Collection[tuple[str, str]],
) -> set[str]:
    """Steps that became ready because completed ``step`` decided its outgoing edges.

    Only steps reached through an edge decided by this transition are
    examined: the successors of ``step``, and, through every step that became
    dead, the successors of that step. Any other step's edges are as they
    were, so it is exactly as ready as before (and a ready step is always
    activated at once). ``completed`` and ``taken`` already include ``step``
    and its taken edges.
    """
    successors = compiled.successors
    predecessors = compiled.predecessors
    ready: set[str] = set()
    is_dead: Callable[[str], bool] | None = None
    frontier = list(successors[step])
    seen: set[str] = set()
    while frontier:
        key = frontier.pop()
        if key in seen or key in completed or key in active:
            continue
        seen.add(key)
        preds = predecessors[key]
        if compiled.join_counts[key] == 1:
            # One way in, and it was just decided: taken -> ready, else dead.
            if (step, key) in taken:
                ready.add(key)
            else:
                frontier.extend(successors[key])
            continue
        if is_dead is None:
            is_dead = dead_checker(compiled.start, predecessors, completed, active, taken)
        if any((p, key) in taken for p in preds if p in completed):
            if all(p in completed or is_dead(p) for p in preds):
                ready.add(key)
        elif is_dead(key):
            frontier.extend(successors[key])
    return ready
