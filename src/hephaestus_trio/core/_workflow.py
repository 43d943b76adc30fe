"""``Workflow``: a DAG of steps, declared as a class and checked when defined.

A concrete workflow sets ``start_at`` and ``transitions`` (plus ``@route``
functions); a *dispatcher* sets ``versions=`` and ``current=`` and has no steps.
``__init_subclass__`` parses the declarations into a ``Definition`` and runs
every check there and then, so a bad workflow never reaches a running engine.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from .._errors import InvalidValue, UnknownWorkflow, WorkflowDefinitionError
from ._compiled import CompiledWorkflow, compile_definition
from ._facade import FacadeMixin
from ._graph import Definition, Graph, RouteSpec, build_definition, parse_target
from ._json import check_json_safe
from ._render import render_ascii, render_mermaid
from ._shape import DefinitionShape, shape_of
from ._step import Step
from ._unique import Unique, constraint_key

__all__ = ["Workflow", "get_workflow", "route"]

_REGISTRY: weakref.WeakValueDictionary[str, type[Workflow]] = weakref.WeakValueDictionary()


def get_workflow(name: str) -> type[Workflow]:
    """The workflow class registered under ``name`` (the latest definition wins).

    Raises:
        UnknownWorkflow: no live class has that name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownWorkflow(f"no workflow is registered under the name {name!r}") from None


def route(
    source: type[Step], event: str, *, targets: Iterable[Any]
) -> Callable[[Callable[..., Any]], RouteSpec]:
    """Declare a dynamic transition: the decorated ``fn(context)`` picks the target.

    ``targets`` lists every step the function may return (classes or
    ``(Step, config)``); returning anything else fails the run with a clear
    error. The function may return one target or a list of them (a dynamic
    fan-out).

    Synopsis::

        @route(Triage, "routed", targets=[FastTrack, Standard])
        def triage(context):
            return FastTrack if context.initial["priority"] == "high" else Standard
    """

    def decorate(fn: Callable[..., Any]) -> RouteSpec:
        where = f"route {getattr(fn, '__name__', fn)!r}"
        parsed = tuple(parse_target(where, "targets", t) for t in targets)
        if not parsed:
            raise WorkflowDefinitionError(f"{where}: targets must not be empty")
        return RouteSpec(source=source, event=event, targets=parsed, fn=fn)

    return decorate


class Workflow(FacadeMixin):
    """Base class of every workflow.

    Class keyword options: ``unique=Unique(key=..., scope=...)`` (required),
    ``version=1``, ``tags=()``, ``metadata={}``, ``name=`` (registry name,
    default ``module.QualName``), or ``versions={n: Cls}`` with ``current=n``
    for a versioned dispatcher. ``abstract=True`` skips the checks for a base
    class that only shares code.

    Synopsis::

        class OrderFlow(Workflow, unique=Unique(key="orderid")):
            start_at = ValidateOrder
            transitions = {(ValidateOrder, "valid"): Done}
    """

    start_at: ClassVar[Any] = None
    transitions: ClassVar[Mapping[Any, Any]] = {}

    name: ClassVar[str]
    version: ClassVar[int]
    unique: ClassVar[Unique]
    tags: ClassVar[tuple[str, ...]]
    metadata: ClassVar[Mapping[str, Any]]
    versions: ClassVar[Mapping[int, type[Workflow]] | None] = None
    current: ClassVar[int | None] = None
    family: ClassVar[str]
    """Name shared by every version of a workflow (the dispatcher's, if any)."""
    _definition: ClassVar[Definition | None] = None
    _compiled: ClassVar[CompiledWorkflow | None] = None
    _shape: ClassVar[DefinitionShape | None] = None
    _fingerprint: ClassVar[str | None] = None

    def __init_subclass__(
        cls,
        *,
        unique: Unique | None = None,
        version: int | None = None,
        tags: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        name: str | None = None,
        versions: Mapping[int, type[Workflow]] | None = None,
        current: int | None = None,
        abstract: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if abstract:
            return
        cls.name = name or f"{cls.__module__}.{cls.__qualname__}"
        label = cls.__name__
        cls.unique = _check_unique(label, unique)
        cls.tags = _check_tags(label, tags)
        cls.metadata = _check_metadata(label, metadata)
        cls.family = cls.name
        if versions is not None:
            _configure_dispatcher(cls, label, versions, current, version)
        else:
            if current is not None:
                raise WorkflowDefinitionError(
                    f"{label}: current= is only valid together with versions="
                )
            cls.version = _check_version(label, 1 if version is None else version)
            cls.versions = None
            routes = [v for v in vars(cls).values() if isinstance(v, RouteSpec)]
            cls._definition = build_definition(label, cls.start_at, cls.transitions, routes)
            # The tables the pure engine applies per transition (no graph rescans).
            cls._compiled = compile_definition(cls._definition)
            # Once per class: every run started from it records both.
            cls._shape = shape_of(cls._definition)
            cls._fingerprint = cls._shape.fingerprint
        _REGISTRY[cls.name] = cls

    # -- introspection ---------------------------------------------------

    @classmethod
    def definition(cls) -> Definition:
        """The parsed, checked definition (not available on dispatchers)."""
        if cls._definition is None:
            raise TypeError(
                f"{cls.__name__} is a versioned dispatcher with no steps; "
                f"use one of its versions {sorted(cls.versions or {})}"
            )
        return cls._definition

    @classmethod
    def compiled(cls) -> CompiledWorkflow:
        """The definition compiled into lookup tables, built once with the class.

        The pure engine applies a transition through these tables in time
        proportional to the steps it decides, not to the size of the graph.
        """
        if cls._compiled is None:
            cls.definition()  # raises the dispatcher's TypeError
            raise AssertionError("unreachable: a class with a definition is compiled")
        return cls._compiled

    @classmethod
    def definition_shape(cls) -> DefinitionShape:
        """Steps, events and transitions, as recorded with every run (not on dispatchers).

        An engine compares it with a run's own before driving the run, so that a
        workflow edited in place under the same version is refused, not misrun.
        """
        if cls._shape is None:
            cls.definition()  # raises the dispatcher's TypeError
        assert cls._shape is not None
        return cls._shape

    @classmethod
    def definition_fingerprint(cls) -> str:
        """The stable hash of ``definition_shape()`` (``"sha256:..."``), computed once."""
        if cls._fingerprint is None:
            cls.definition()
        assert cls._fingerprint is not None
        return cls._fingerprint

    @classmethod
    def is_dispatcher(cls) -> bool:
        """True for a ``versions=`` class (no steps of its own)."""
        return cls.versions is not None

    @classmethod
    def graph(cls) -> Graph:
        """Nodes (step keys) and edges (source, event, target, dynamic)."""
        return cls.definition().graph()

    @classmethod
    def predecessors(cls, step: type[Step] | str) -> frozenset[str]:
        """Keys of the steps with a transition into ``step`` (a class or a key)."""
        definition = cls.definition()
        key = step if isinstance(step, str) else step.step_key
        if key not in definition.steps:
            raise KeyError(f"{cls.__name__} has no step {key!r}; steps: {list(definition.steps)}")
        return definition.predecessors[key]

    @classmethod
    def step(cls, key: str) -> type[Step]:
        """The step class registered under ``key``."""
        definition = cls.definition()
        try:
            return definition.steps[key]
        except KeyError:
            raise KeyError(
                f"{cls.__name__} has no step {key!r}; steps: {list(definition.steps)}"
            ) from None

    @classmethod
    def to_mermaid(cls) -> str:
        """A Mermaid ``flowchart`` of the workflow (dispatchers show every version)."""
        return render_mermaid(cls)

    @classmethod
    def to_ascii(cls) -> str:
        """A plain-text rendering: each step with its outgoing transitions."""
        return render_ascii(cls)

    # -- versioning ------------------------------------------------------

    @classmethod
    def version_for(
        cls, versions: Mapping[int, type[Workflow]], options: Mapping[str, Any]
    ) -> int | None:
        """Override to pick a version at start; ``None`` falls back to ``current``.

        ``options`` holds ``id`` and ``context`` of the run being started.
        """
        return None

    @classmethod
    def resolve_version(
        cls, version: int | None = None, options: Mapping[str, Any] | None = None
    ) -> type[Workflow]:
        """The class a new run uses: explicit ``version``, then ``version_for``, then ``current``.

        Raises:
            InvalidValue: ``version`` is unknown (the message lists the known ones;
                a ``ValueError``).
        """
        if cls.versions is None:
            if version is not None and version != cls.version:
                raise InvalidValue(
                    f"{cls.__name__} has no version {version!r}; known versions: [{cls.version}]"
                )
            return cls
        chosen = version
        if chosen is None:
            chosen = cls.version_for(cls.versions, options or {})
        if chosen is None:
            chosen = cls.current
        if chosen is None or chosen not in cls.versions:
            raise InvalidValue(
                f"{cls.__name__} has no version {chosen!r}; known versions: {sorted(cls.versions)}"
            )
        return cls.versions[chosen]

    @classmethod
    def constraint_key(cls, instance_id: str) -> str | None:
        """What the storage keeps unique among live runs for ``instance_id``."""
        return constraint_key(cls.unique, cls.family, cls.version, instance_id)


def _check_unique(label: str, unique: Unique | None) -> Unique:
    if unique is None:
        raise WorkflowDefinitionError(
            f"{label}: unique= is required, e.g. class {label}(Workflow, "
            'unique=Unique(key="orderid"))'
        )
    if not isinstance(unique, Unique):
        raise WorkflowDefinitionError(f"{label}: unique must be a Unique(...), got {unique!r}")
    return unique


def _check_version(label: str, version: Any) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise WorkflowDefinitionError(f"{label}: version must be a positive int, got {version!r}")
    return version


def _check_tags(label: str, tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise WorkflowDefinitionError(
            f"{label}: tags must be a tuple of strings, got the string {tags!r}"
        )
    result = tuple(tags)
    for tag in result:
        if not isinstance(tag, str):
            raise WorkflowDefinitionError(f"{label}: tag {tag!r} is not a string")
    return result


def _check_metadata(label: str, metadata: Mapping[str, Any] | None) -> Mapping[str, Any]:
    data = dict(metadata or {})
    try:
        check_json_safe(data, "metadata")
    except TypeError as exc:
        raise WorkflowDefinitionError(f"{label}: {exc}") from None
    return data


def _configure_dispatcher(
    cls: type[Workflow],
    label: str,
    versions: Mapping[int, type[Workflow]],
    current: int | None,
    version: int | None,
) -> None:
    if version is not None:
        raise WorkflowDefinitionError(
            f"{label}: version= cannot be combined with versions=; "
            "each version class carries its own version"
        )
    if "start_at" in vars(cls) or "transitions" in vars(cls):
        raise WorkflowDefinitionError(
            f"{label}: a versioned dispatcher has no steps; move start_at/transitions "
            "into the version classes"
        )
    if not isinstance(versions, Mapping) or not versions:
        raise WorkflowDefinitionError(f"{label}: versions must be a non-empty dict {{n: Cls}}")
    for number, version_cls in versions.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise WorkflowDefinitionError(f"{label}: version key {number!r} must be a positive int")
        if not (isinstance(version_cls, type) and issubclass(version_cls, Workflow)):
            raise WorkflowDefinitionError(
                f"{label}: versions[{number}] must be a Workflow class, got {version_cls!r}"
            )
        if version_cls.versions is not None or version_cls._definition is None:
            raise WorkflowDefinitionError(
                f"{label}: versions[{number}] = {version_cls.__name__} must be a concrete "
                "workflow, not a dispatcher"
            )
        if version_cls.version != number:
            raise WorkflowDefinitionError(
                f"{label}: versions[{number}] = {version_cls.__name__} declares "
                f"version={version_cls.version}; the key and the class version must match"
            )
    if current is None:
        raise WorkflowDefinitionError(
            f"{label}: current= is required with versions= (one of {sorted(versions)})"
        )
    if current not in versions:
        raise WorkflowDefinitionError(
            f"{label}: current={current!r} is not one of the versions {sorted(versions)}"
        )
    cls.versions = dict(versions)
    cls.current = current
    cls.version = current
    cls._definition = None
    cls._compiled = None
    cls._shape = cls._fingerprint = None
    for version_cls in versions.values():
        version_cls.family = cls.name
