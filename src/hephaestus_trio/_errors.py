"""Every error the library raises, under one root.

Each class says who caused it and when it is raised; the structured fields are
attributes so callers can branch on them without parsing messages.
"""

from __future__ import annotations

__all__ = [
    "AlreadyRunning",
    "AmbiguousInstance",
    "Backpressure",
    "EngineClosed",
    "HephaestusError",
    "InstanceNotFound",
    "InstanceRestarted",
    "InvalidArgument",
    "InvalidResume",
    "LeaseLost",
    "NotCancellable",
    "StorageError",
    "UndeclaredEvent",
    "UnknownWorkflow",
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


class InvalidArgument(HephaestusError, ValueError):
    """A value the caller passed cannot be used; nothing was read or changed.

    Raised for bad storage query arguments (``limit``, ``after``,
    ``created_after``) and bad command-line options (``--status``, ``--since``,
    ``--after``). It is also a ``ValueError``, so callers that catch that keep
    working. ``name`` is the argument or option, ``value`` what was given and
    ``allowed`` what would have been accepted, so the message tells the caller
    what to do instead.
    """

    def __init__(self, name: str, value: object, allowed: str) -> None:
        self.name = name
        self.value = value
        self.allowed = allowed
        super().__init__(f"{name}: {value!r} is not allowed; expected {allowed}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.name, self.value, self.allowed))


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
