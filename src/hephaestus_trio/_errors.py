"""Every error the library raises, under one root.

Each class says who caused it and when it is raised; the structured fields are
attributes so callers can branch on them without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "AmbiguousInstance",
    "Backpressure",
    "DefinitionMismatch",
    "EngineClosed",
    "HephaestusError",
    "InstanceNotFound",
    "InstanceRestarted",
    "InvalidArgument",
    "InvalidResume",
    "InvalidValue",
    "LeaseLost",
    "NotCancellable",
    "StorageError",
    "UndeclaredEvent",
    "UnknownWorkflow",
    "WaitTimeout",
    "WorkflowDefinitionError",
]


class HephaestusError(Exception):
    """Root of every error raised by hephaestus-trio."""


class WorkflowDefinitionError(HephaestusError, TypeError):
    """A workflow or step class is malformed.

    Raised while the class statement runs, so a bad definition never reaches a
    running engine. The message names the workflow, the steps and the events
    involved. It is also a ``TypeError`` because a bad class *is* a type error
    of the program, as Hypothesis' ``InvalidDefinition`` is.
    """


class UndeclaredEvent(HephaestusError):
    """A step emitted (or was resumed with) an event it does not declare."""

    def __init__(self, step: str, event: str, declared: tuple[str, ...]) -> None:
        self.step = step
        self.event = event
        self.declared = declared
        super().__init__(
            f"step {step!r} emitted undeclared event {event!r}; it declares {list(declared)}"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.step, self.event, self.declared))


class InvalidResume(HephaestusError):
    """A resume was refused: the run is not parked on a step that accepts the event."""

    def __init__(self, instance_id: str, event: str, reason: str) -> None:
        self.instance_id = instance_id
        self.event = event
        self.reason = reason
        super().__init__(f"cannot resume {instance_id!r} with {event!r}: {reason}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.event, self.reason))


class InstanceNotFound(HephaestusError, LookupError):
    """No run with this id exists in the storage."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"no workflow instance with id {instance_id!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id,))


class AmbiguousInstance(HephaestusError, LookupError):
    """Several live runs share this business id; pass ``workflow=`` to choose one."""

    def __init__(self, instance_id: str, workflows: tuple[str, ...]) -> None:
        self.instance_id = instance_id
        self.workflows = workflows
        super().__init__(
            f"{len(workflows)} live runs share id {instance_id!r} "
            f"(workflows {list(workflows)}); pass workflow= to choose one"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.workflows))


class Backpressure(HephaestusError):
    """The instance's inbox is full; the refused resume had no effect. Retry later."""

    def __init__(self, instance_id: str, capacity: int) -> None:
        self.instance_id = instance_id
        self.capacity = capacity
        super().__init__(
            f"inbox of {instance_id!r} is full ({capacity} pending resumes); "
            "the resume was not accepted, retry later"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.capacity))


class AlreadyRunning(HephaestusError):
    """A live run already holds this business key in the workflow's uniqueness scope."""

    def __init__(self, instance_id: str, workflow: str, scope: str) -> None:
        self.instance_id = instance_id
        self.workflow = workflow
        self.scope = scope
        super().__init__(
            f"{workflow}: a live run with id {instance_id!r} already exists (scope {scope!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.workflow, self.scope))


class NotCancellable(HephaestusError):
    """The run is already completed, failed or cancelled; nothing was changed."""

    def __init__(self, instance_id: str, status: str) -> None:
        self.instance_id = instance_id
        self.status = status
        super().__init__(f"cannot cancel {instance_id!r}: it is already {status}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.status))


class UnknownWorkflow(HephaestusError, LookupError):
    """An instance names a workflow (or version) the running engine was not given."""


class StorageError(HephaestusError):
    """The storage cannot be used: corrupt or foreign file, newer schema, closed storage."""


class EngineClosed(HephaestusError):
    """The running engine has been closed (or no engine is open for the facade)."""


class InstanceRestarted(HephaestusError):
    """The run's task restarted while a call was waiting on it; the call had no effect.

    No call raises it any more: engine calls only add wakeup rows and never wait
    on a run's task. It stays importable for code that catches it.
    """

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"{instance_id!r} restarted before the call was handled; retry it")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id,))


class LeaseLost(HephaestusError):
    """A write was refused: the engine no longer owns the run (another engine claimed it).

    Raised by a storage's fenced ``write``, ``renew`` and ``release``
    paths. The runtime stops the run locally at once; it is not a crash (no
    restart, no failure written), because the new owner drives the run now.
    """

    def __init__(self, run_id: str, owner: str, epoch: int) -> None:
        self.run_id = run_id
        self.owner = owner
        self.epoch = epoch
        super().__init__(
            f"run {run_id!r}: lease (owner {owner}, epoch {epoch}) is no longer held; "
            "another engine owns the run now"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.owner, self.epoch))


class InvalidValue(HephaestusError, ValueError):
    """A value given to the library is out of range or of the wrong kind.

    Raised at once, where the value is given (a ``RetryPolicy`` field, a
    ``Unique`` scope, a delay, a timeout, an option of ``open_engine``), so a
    bad value never reaches a run. The message names the value, says what is
    allowed and what to change. It is also a ``ValueError``, so code written
    with ``except ValueError`` keeps working.
    """


class InvalidArgument(InvalidValue):
    """A value the caller passed cannot be used; nothing was read or changed.

    Raised for bad storage query arguments (``limit``, ``after``,
    ``created_after``) and bad command-line options (``--status``, ``--since``,
    ``--after``). An ``InvalidValue`` (so also a ``ValueError``) with the parts
    of its message as attributes: ``name`` is the argument or option, ``value``
    what was given and ``allowed`` what would have been accepted, so the
    message tells the caller what to do instead.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}: {value!r} is not allowed; expected {allowed}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.value, self.allowed))


class WaitTimeout(HephaestusError, TimeoutError):
    """``engine.wait(..., timeout=...)`` gave up before the run ended; the run goes on.

    ``status`` is the run's status when the wait gave up (``running``,
    ``waiting``...): waiting does not change the run, so wait again, or
    inspect it with ``engine.get``. It is also a ``TimeoutError``.
    """

    def __init__(self, instance_id: str, run_id: str, status: str, timeout: float) -> None:
        self.instance_id = instance_id
        self.run_id = run_id
        self.status = status
        self.timeout = timeout
        super().__init__(
            f"run {instance_id!r} (run_id {run_id}) did not end within {timeout}s; it is "
            f"still {status}: wait again or inspect it with engine.get({instance_id!r})"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.run_id, self.status, self.timeout))


class DefinitionMismatch(HephaestusError):
    """A run's workflow was changed in place: the registered definition is not the run's.

    A run records a fingerprint and a summary of its workflow's definition
    (steps, events, transitions) when it starts. An engine whose class under
    the same name and version has another definition refuses to drive the
    run: driving it could activate steps that do not exist or skip ones that
    do. The run is left untouched. The fix is never to edit a version with
    runs in flight: restore the old definition as its own version and
    register it beside the new one (see ``docs/upgrading.md``).

    ``changes`` lists what differs, e.g. ``"missing step 'ship'"`` (the run's
    definition had it, the registered one has not) or ``"added transition
    'pack' --ok--> 'ship'"``.
    """

    def __init__(
        self, instance_id: str, workflow: str, version: int, changes: tuple[str, ...]
    ) -> None:
        self.instance_id = instance_id
        self.workflow = workflow
        self.version = version
        self.changes = changes
        super().__init__(
            f"run {instance_id!r} started with another definition of workflow {workflow!r} "
            f"version {version} than the one registered now ({'; '.join(changes)}); the run "
            "was left untouched: register the old definition as its own version beside the "
            "new one (versions={...}) so that runs in flight keep their definition"
        )

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.instance_id, self.workflow, self.version, self.changes))
