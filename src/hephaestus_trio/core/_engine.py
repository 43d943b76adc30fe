"""The pure engine: functions from an ``Instance`` (and an input) to a new ``Instance``.

No I/O, no Trio, no clock: the runtime passes ``at=`` (the wall-clock time of
the change) and executes whatever these functions leave in
``running_steps``. Every function leaves its argument untouched; a function
that raises has changed nothing.

Join rule (dead-path elimination). An edge ``P -> S`` is *taken* when ``P``
completed and its transition chose ``S``; it is *dead* when ``P`` completed
and chose something else, or when ``P`` itself is dead; ``S`` is dead when
every edge into it is dead. A step activates when at least one edge into it
is taken and every edge into it is decided (taken or dead). So a join waits
for every predecessor that can still run, and a branch that was not taken
never blocks it.

It stays one module (a little over the house aim of 400 lines) because the
functions are the engine's one vocabulary: each is short, and they share the
private status and stamping helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs

from .._errors import (
    HephaestusError,
    InvalidResume,
    NotCancellable,
    UndeclaredEvent,
    WorkflowDefinitionError,
)
from ._compiled import CompiledTransition, CompiledWorkflow, dead_checker, newly_ready
from ._graph import Definition, Target
from ._instance import Context, ErrorRecord, ExecutionEntry, Instance, Status, TimerRecord
from ._json import check_json_safe
from ._step import Step
from ._workflow import Workflow, get_workflow

__all__ = [
    "StepNotActive",
    "activate_transitions",
    "add_timer",
    "advance",
    "cancel",
    "check_completion",
    "complete_step",
    "fail",
    "park",
    "ready_steps",
    "remove_timer",
    "resume_step",
]


class StepNotActive(HephaestusError):
    """A pure engine function was asked to act on a step that is not active."""

    def __init__(self, instance_id: str, step: str, reason: str) -> None:
        self.instance_id = instance_id
        self.step = step
        super().__init__(f"{instance_id}: step {step!r} {reason}")


def _definition(inst: Instance, workflow: type[Workflow] | None) -> Definition:
    return (workflow or get_workflow(inst.workflow)).definition()


def _compiled(inst: Instance, workflow: type[Workflow] | None) -> CompiledWorkflow:
    return (workflow or get_workflow(inst.workflow)).compiled()


def _stamp(inst: Instance, at: datetime | None, **changes: Any) -> Instance:
    if at is not None:
        changes["updated_at"] = at
    return attrs.evolve(inst, **changes)


def _settled_status(active: frozenset[str], waiting: frozenset[str]) -> Status:
    if active and active <= waiting:
        return Status.WAITING
    return Status.RUNNING


def _require_live(inst: Instance, action: str) -> None:
    if inst.status.is_terminal:
        raise StepNotActive(inst.id, action, f"cannot run: the instance is {inst.status.value}")


def advance(
    inst: Instance, *, workflow: type[Workflow] | None = None, at: datetime | None = None
) -> Instance:
    """Move a run forward without input.

    A pending run activates its start step and becomes running; a live run
    gets its status settled and its completion checked; a terminal run is
    returned unchanged.
    """
    if inst.status.is_terminal:
        return inst
    if inst.status is Status.PENDING:
        definition = _definition(inst, workflow)
        start = definition.start
        configs = dict(inst.step_configs)
        if definition.configs.get(start) is not None:
            configs[start] = dict(definition.configs[start] or {})
        return _stamp(
            inst,
            at,
            status=Status.RUNNING,
            active_steps=frozenset({start}),
            step_configs=configs,
        )
    return check_completion(
        _stamp(inst, at, status=_settled_status(inst.active_steps, inst.waiting_steps)),
        workflow=workflow,
    )


def complete_step(
    inst: Instance,
    step: str,
    event: str,
    updates: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
    attempt: int = 1,
    wakeup: int | None = None,
    workflow: type[Workflow] | None = None,
) -> Instance:
    """Record that active ``step`` finished with ``event``; does not activate transitions.

    ``attempt`` and ``wakeup`` (the ``seq`` of the resume or timer wakeup
    whose delivery completed the step) are stored in the history entry.

    Raises:
        StepNotActive: the step is not active (or the run is terminal).
        UndeclaredEvent: the step does not declare ``event`` (with its config).
        TypeError: ``updates`` or ``metadata`` is not JSON-safe.
    """
    _require_live(inst, step)
    if step not in inst.active_steps:
        raise StepNotActive(inst.id, step, "is not active")
    definition = _definition(inst, workflow)
    config = inst.step_configs.get(step)
    declared = definition.steps[step].declared_events(config)
    if event not in declared:
        raise UndeclaredEvent(step, event, declared)
    context_steps = dict(inst.context.steps)
    if updates is not None:
        updates = dict(updates)
        check_json_safe(updates, f"updates of step {step!r}")
        context_steps[step] = updates
    runtime_metadata = dict(inst.runtime_metadata)
    if metadata:
        check_json_safe(dict(metadata), f"metadata of step {step!r}")
        runtime_metadata.update(metadata)
    entry = ExecutionEntry(
        step=step,
        event=event,
        timestamp=at or inst.updated_at,
        context_updates=updates,
        attempt=attempt,
        wakeup=wakeup,
    )
    configs = {k: v for k, v in inst.step_configs.items() if k != step}
    active = inst.active_steps - {step}
    waiting = inst.waiting_steps - {step}
    return _stamp(
        inst,
        at,
        status=_settled_status(active, waiting),
        context=Context(initial=inst.context.initial, steps=context_steps),
        runtime_metadata=runtime_metadata,
        step_configs=configs,
        active_steps=active,
        waiting_steps=waiting,
        completed_steps=inst.completed_steps | {step},
        execution_history=(*inst.execution_history, entry),
        timers=tuple(t for t in inst.timers if t.step != step),
    )


def _transition(
    inst: Instance,
    step: str,
    event: str,
    updates: Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
    *,
    at: datetime | None = None,
    attempt: int = 1,
    wakeup: int | None = None,
    workflow: type[Workflow] | None = None,
) -> Instance:
    """``complete_step``, then ``activate_transitions``, then ``check_completion``, fused.

    The same result and the same exceptions as calling the three in turn, but
    one new ``Instance`` instead of three or four: this is the runtime's hot
    path, applied once per step result or resume.

    Raises:
        StepNotActive: the step is not active (or the run is terminal).
        UndeclaredEvent: the step does not declare ``event`` (with its config).
        TypeError: ``updates`` or ``metadata`` is not JSON-safe.
        WorkflowDefinitionError: a route returned a target it did not declare.
    """
    _require_live(inst, step)
    if step not in inst.active_steps:
        raise StepNotActive(inst.id, step, "is not active")
    wf = workflow or get_workflow(inst.workflow)
    compiled = wf.compiled()
    config = inst.step_configs.get(step)
    declared = (
        compiled.static_events[step]
        if config is None and compiled.static_configs.get(step) is None
        else wf.definition().steps[step].declared_events(config)
    )
    if event not in declared:
        raise UndeclaredEvent(step, event, declared)
    context = inst.context
    if updates is not None:
        updates = dict(updates)
        check_json_safe(updates, f"updates of step {step!r}")
        context = Context(initial=context.initial, steps={**context.steps, step: updates})
    runtime_metadata = inst.runtime_metadata
    if metadata:
        check_json_safe(dict(metadata), f"metadata of step {step!r}")
        runtime_metadata = {**runtime_metadata, **metadata}
    entry = ExecutionEntry(
        step=step,
        event=event,
        timestamp=at or inst.updated_at,
        context_updates=updates,
        attempt=attempt,
        wakeup=wakeup,
    )
    configs = {k: v for k, v in inst.step_configs.items() if k != step}
    completed = inst.completed_steps | {step}
    active = inst.active_steps - {step}
    waiting = inst.waiting_steps - {step}
    timers = tuple(t for t in inst.timers if t.step != step)
    taken, active = _take(
        compiled,
        wf.definition().name,
        context,
        inst.taken_edges,
        step,
        event,
        completed,
        active,
        configs,
    )
    changes: dict[str, Any] = {
        "context": context,
        "runtime_metadata": runtime_metadata,
        "completed_steps": completed,
        "execution_history": (*inst.execution_history, entry),
        "taken_edges": taken,
    }
    if active:
        status = _settled_status(active, waiting)
    elif not compiled.terminal.isdisjoint(completed):
        status, timers = Status.COMPLETED, ()
    else:
        status, timers = Status.FAILED, ()
        changes["error"] = ErrorRecord(
            kind="stalled", message="no step is active and Done never completed"
        )
        configs, waiting = {}, frozenset()
    changes.update(
        status=status,
        step_configs=configs,
        active_steps=active,
        waiting_steps=waiting,
        timers=timers,
    )
    return _stamp(inst, at, **changes)


def _route_targets(name: str, entry: CompiledTransition, context: Context) -> tuple[Target, ...]:
    route = entry.route
    assert route is not None
    result = route.fn(context)
    chosen = (
        result if isinstance(result, list | tuple) and not _is_target_pair(result) else [result]
    )
    declared = entry.declared
    targets: list[Target] = []
    for item in chosen:
        key = _target_key(item)
        if key is None or key not in declared:
            names = [t.step.__name__ for t in route.targets]
            raise WorkflowDefinitionError(
                f"{name}: route {route.name} returned {item!r}, which is not one "
                f"of its declared targets {names}"
            )
        targets.append(declared[key])
    if not targets:
        raise WorkflowDefinitionError(f"{name}: route {route.name} returned no target")
    return tuple(targets)


def _take(
    compiled: CompiledWorkflow,
    name: str,
    context: Context,
    taken_edges: frozenset[tuple[str, str]],
    step: str,
    event: str,
    completed: frozenset[str],
    active: frozenset[str],
    configs: dict[str, Any],
) -> tuple[frozenset[tuple[str, str]], frozenset[str]]:
    """Take the transitions of completed ``step`` on ``event`` through the tables.

    Returns the new taken edges and active steps; ``configs`` receives the
    config of every step that activates; a route is evaluated on ``context``.
    """
    entry = compiled.transitions.get((step, event))
    if entry is None:
        keys: tuple[str, ...] = ()
        configs_of: Mapping[str, Mapping[str, Any] | None] = {}
    elif entry.route is not None:
        targets = _route_targets(name, entry, context)
        keys = tuple(t.step.step_key for t in targets)
        configs_of = {t.step.step_key: t.config for t in targets}
    else:
        keys = entry.targets
        configs_of = entry.configs
    taken = taken_edges | {(step, k) for k in keys}
    ready = newly_ready(compiled, step, completed, active, taken)
    if not ready:
        return taken, active
    for key in ready:
        config = configs_of[key] if key in configs_of else compiled.static_configs.get(key)
        if config is not None:
            configs[key] = dict(config)
    return taken, active | ready


def _is_target_pair(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) == 2
        and isinstance(value[0], type)
        and (value[1] is None or isinstance(value[1], Mapping))
    )


def _target_key(item: Any) -> str | None:
    if isinstance(item, str):
        return item
    if isinstance(item, type) and issubclass(item, Step):
        return item.step_key
    if _is_target_pair(item) and issubclass(item[0], Step):
        return str(item[0].step_key)
    return None


def activate_transitions(
    inst: Instance,
    step: str,
    event: str,
    *,
    at: datetime | None = None,
    workflow: type[Workflow] | None = None,
) -> Instance:
    """Take the transitions of completed ``step`` on ``event`` and activate ready steps.

    Taking them may also decide edges elsewhere (a branch not taken is dead),
    so every step reached through a newly decided edge is re-examined, not
    only the targets; the workflow's compiled tables make that proportional
    to the steps decided. A dynamic route is evaluated here, on the run's
    context.

    Raises:
        StepNotActive: ``step`` has not completed.
        WorkflowDefinitionError: a route returned a target it did not declare.
    """
    _require_live(inst, step)
    if step not in inst.completed_steps:
        raise StepNotActive(inst.id, step, "has not completed; complete it first")
    wf = workflow or get_workflow(inst.workflow)
    configs = dict(inst.step_configs)
    taken, active = _take(
        wf.compiled(),
        wf.definition().name,
        inst.context,
        inst.taken_edges,
        step,
        event,
        inst.completed_steps,
        inst.active_steps,
        configs,
    )
    return _stamp(
        inst,
        at,
        taken_edges=taken,
        status=_settled_status(active, inst.waiting_steps),
        active_steps=active,
        step_configs=configs,
    )


def _dead_checker(inst: Instance, definition: Definition) -> Callable[[str], bool]:
    """A memoized ``is_dead(step_key)`` under the join rule (see the module docstring).

    Shared by ``ready_steps``, the decision functions' ``can_still_run`` and
    the incremental path of ``activate_transitions``, so they can never
    disagree on which branches are dead.
    """
    return dead_checker(
        definition.start,
        definition.predecessors,
        inst.completed_steps,
        inst.active_steps,
        inst.taken_edges,
    )


def ready_steps(inst: Instance, definition: Definition) -> frozenset[str]:
    """Steps that may activate now under the join rule (see the module docstring)."""
    is_dead = _dead_checker(inst, definition)

    def edge_decided(pred: str, key: str) -> bool:
        return pred in inst.completed_steps or is_dead(pred)

    candidates = {target for _, target in inst.taken_edges}
    ready = set()
    for key in candidates:
        if key in inst.completed_steps or key in inst.active_steps:
            continue
        if all(edge_decided(p, key) for p in definition.predecessors[key]):
            ready.add(key)
    return frozenset(ready)


def park(
    inst: Instance,
    step: str,
    *,
    timer: TimerRecord | None = None,
    at: datetime | None = None,
) -> Instance:
    """Mark active ``step`` as parked (it returned ``Suspend``), optionally with a timer.

    Raises:
        StepNotActive: the step is not active or already parked.
    """
    _require_live(inst, step)
    if step not in inst.active_steps:
        raise StepNotActive(inst.id, step, "is not active, so it cannot park")
    waiting = inst.waiting_steps | {step}
    timers = inst.timers
    if timer is not None:
        timers = (*timers, timer)
    return _stamp(
        inst,
        at,
        status=_settled_status(inst.active_steps, waiting),
        waiting_steps=waiting,
        timers=timers,
    )


def add_timer(inst: Instance, timer: TimerRecord, *, at: datetime | None = None) -> Instance:
    """Arm a durable timer for parked ``timer.step``.

    Raises:
        InvalidResume: the step is not parked (a timer could never be delivered).
    """
    if inst.status.is_terminal or timer.step not in inst.waiting_steps:
        raise InvalidResume(
            inst.id, timer.event, f"step {timer.step!r} is not parked; no timer can resume it"
        )
    return _stamp(inst, at, timers=(*inst.timers, timer))


def remove_timer(inst: Instance, timer: TimerRecord, *, at: datetime | None = None) -> Instance:
    """Drop one timer record (fired or cancelled); absent records are ignored."""
    timers = list(inst.timers)
    if timer in timers:
        timers.remove(timer)
    return _stamp(inst, at, timers=tuple(timers))


def resume_step(
    inst: Instance,
    step: str,
    event: str,
    *,
    at: datetime | None = None,
    workflow: type[Workflow] | None = None,
) -> Instance:
    """Deliver ``event`` to parked ``step``: complete it, take its transitions, settle.

    ``WaitForEvent`` with ``event_name`` accepts that name and delivers ``"received"``.

    Raises:
        InvalidResume: the run is terminal or ``step`` is not parked.
        UndeclaredEvent: the parked step does not accept ``event``.
    """
    if inst.status.is_terminal:
        raise InvalidResume(inst.id, event, f"the instance is {inst.status.value}")
    if step not in inst.waiting_steps:
        raise InvalidResume(inst.id, event, f"step {step!r} is not parked")
    definition = _definition(inst, workflow)
    config = inst.step_configs.get(step)
    step_cls = definition.steps[step]
    delivered = step_cls.resume_event(config, event)
    if delivered is None:
        raise UndeclaredEvent(step, event, step_cls.declared_events(config))
    return _transition(inst, step, delivered, at=at, workflow=workflow)


def check_completion(
    inst: Instance, *, workflow: type[Workflow] | None = None, at: datetime | None = None
) -> Instance:
    """Complete the run when nothing is active and its terminal step has completed.

    A live run with nothing active whose terminal step never ran cannot move
    again; it is failed (``kind="stalled"``) rather than left hanging.
    """
    if inst.status.is_terminal or inst.status is Status.PENDING or inst.active_steps:
        return inst
    if not _compiled(inst, workflow).terminal.isdisjoint(inst.completed_steps):
        return _stamp(inst, at, status=Status.COMPLETED, timers=())
    return fail(
        inst,
        ErrorRecord(kind="stalled", message="no step is active and Done never completed"),
        at=at,
    )


def fail(
    inst: Instance,
    reason: str | ErrorRecord,
    *,
    step: str | None = None,
    at: datetime | None = None,
) -> Instance:
    """Mark the run ``failed`` with ``reason``; nothing stays active or armed.

    A run that is already terminal is returned unchanged: the first terminal
    status wins (a cancel racing a failure keeps ``cancelled``).
    """
    if inst.status.is_terminal:
        return inst
    error = (
        reason
        if isinstance(reason, ErrorRecord)
        else ErrorRecord(kind="failure", message=reason, step=step)
    )
    return _stamp(
        inst,
        at,
        status=Status.FAILED,
        error=error,
        active_steps=frozenset(),
        waiting_steps=frozenset(),
        step_configs={},
        timers=(),
    )


def cancel(inst: Instance, *, at: datetime | None = None) -> Instance:
    """Mark the run ``cancelled``; nothing stays active or armed.

    Raises:
        NotCancellable: the run is completed, failed or cancelled already.
    """
    if inst.status.is_terminal:
        raise NotCancellable(inst.id, inst.status.value)
    return _stamp(
        inst,
        at,
        status=Status.CANCELLED,
        active_steps=frozenset(),
        waiting_steps=frozenset(),
        step_configs={},
        timers=(),
    )
