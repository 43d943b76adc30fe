"""``DefinitionShape``: what a run must find again to be driven safely, and its fingerprint.

A run is driven by the workflow class registered under its name and version.
If that class was edited in place while the run was in flight, the run's
state may name steps that no longer exist, or wait on a transition that is
gone: driving it would fail with a bare ``KeyError`` deep in the engine, or,
worse, silently take another path. So a run records the *shape* of its
definition when it starts: its step keys, the events each step declares and
every transition (static edges and the declared targets of ``@route``
functions), plus a stable fingerprint of that shape. An engine compares the
registered class's fingerprint with the run's before it touches the run, and
names the differences (``DefinitionShape.changes_from``) when they differ.

What is not part of the shape, on purpose: step code, retry policies,
timeouts, static configs and route functions' bodies. Changing those is a
code deploy, not a change of the graph; the run's state stays meaningful.
"""

from __future__ import annotations

import hashlib
import json
from typing import final

import attrs

from ._graph import Definition

__all__ = ["DefinitionShape", "shape_of"]


@final
@attrs.frozen(kw_only=True)
class DefinitionShape:
    """The steps, events and transitions of a workflow definition, sorted.

    Stored with every run (``Instance.definition_shape``); compact by design:
    a few strings per step and per edge.
    """

    start: str
    """Key of the start step."""
    steps: tuple[str, ...]
    """Every step key, sorted."""
    events: tuple[tuple[str, str], ...]
    """``(step, event)`` for every event each step declares with its static config, sorted."""
    transitions: tuple[tuple[str, str, str], ...]
    """``(source, event, target)`` for every static transition and every declared
    target of a ``@route``, sorted."""

    @property
    def fingerprint(self) -> str:
        """``sha256:`` and the hex digest of the shape's canonical JSON (stable across runs
        and processes: it only depends on the sorted strings)."""
        text = json.dumps(
            [self.start, self.steps, self.events, self.transitions],
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

    def changes_from(self, old: DefinitionShape) -> tuple[str, ...]:
        """What differs in this (registered) shape from ``old`` (the run's), one phrase each.

        ``missing`` means the run's definition had it and this one has not;
        ``added`` the other way round.
        """
        changes: list[str] = []
        if old.start != self.start:
            changes.append(f"start step changed from {old.start!r} to {self.start!r}")

        def diff(kind: str, before: set[str], after: set[str]) -> None:
            changes.extend(f"missing {kind} {item}" for item in sorted(before - after))
            changes.extend(f"added {kind} {item}" for item in sorted(after - before))

        diff("step", {repr(s) for s in old.steps}, {repr(s) for s in self.steps})
        diff(
            "event",
            {f"{e!r} of step {s!r}" for s, e in old.events},
            {f"{e!r} of step {s!r}" for s, e in self.events},
        )
        diff(
            "transition",
            {f"{s!r} --{e}--> {t!r}" for s, e, t in old.transitions},
            {f"{s!r} --{e}--> {t!r}" for s, e, t in self.transitions},
        )
        return tuple(changes)


def shape_of(definition: Definition) -> DefinitionShape:
    """The shape of a parsed definition (computed once per class, at definition time)."""
    edges = {(edge.source, edge.event, edge.target) for edge in definition.graph().edges}
    return DefinitionShape(
        start=definition.start,
        steps=tuple(sorted(definition.steps)),
        events=tuple(
            sorted(
                (key, event)
                for key in definition.steps
                for event in set(definition.declared_events(key))
            )
        ),
        transitions=tuple(sorted(edges)),
    )
