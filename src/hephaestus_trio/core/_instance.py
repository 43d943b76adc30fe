"""The instance model: one run of a workflow, as frozen attrs values.

Every change produces a new ``Instance`` (``attrs.evolve``); the pure engine
functions are the only code that builds one from another. Step references are
step keys (strings) everywhere.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import attrs

from ._json import check_json_safe

if TYPE_CHECKING:
    from ._workflow import Workflow

__all__ = [
    "Context",
    "ErrorRecord",
    "ExecutionEntry",
    "Instance",
    "Status",
    "TimerRecord",
]


class Status(enum.Enum):
    """Lifecycle of a run. ``WAITING`` exactly when every active step is parked."""

    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed or cancelled: the run will never change again."""
        # Identity tests: Enum.__hash__ is Python code, and this runs on every transition.
        return self is Status.COMPLETED or self is Status.FAILED or self is Status.CANCELLED

    @property
    def is_live(self) -> bool:
        """Pending, running or waiting: the run holds its business key."""
        return not self.is_terminal

    @classmethod
    def coerce(cls, value: Status | str) -> Status:
        """Accept a member or its string value; raise ``ValueError`` naming the choices."""
        if isinstance(value, Status):
            return value
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"unknown status {value!r}; expected one of {[s.value for s in cls]}"
            ) from None


def _utc(value: datetime) -> datetime:
    # Runs on every attrs.evolve of an Instance: keep the common case cheap.
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise ValueError(f"datetimes must be timezone-aware UTC, got naive {value!r}")
    return value.astimezone(UTC)


@final
@attrs.frozen(kw_only=True)
class Context:
    """What steps read: the caller's ``initial`` data and each step's ``updates``."""

    initial: Mapping[str, Any] = attrs.field(factory=dict)
    """The JSON-safe dict given at start; never changes."""
    steps: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """``step_key -> updates`` of every step that completed with updates."""


@final
@attrs.frozen(kw_only=True)
class ExecutionEntry:
    """One completed step, in the order completions happened."""

    step: str
    """Step key."""
    event: str
    """Event the step emitted (or was resumed with)."""
    timestamp: datetime = attrs.field(converter=_utc)
    """When the completion was applied, UTC."""
    context_updates: Mapping[str, Any] | None = None
    """The updates stored at ``context.steps[step]``, if any."""
    attempt: int = 1
    """Which attempt succeeded (1 unless retried)."""
    wakeup: int | None = None
    """``seq`` of the resume or timer wakeup whose delivery completed the step, if any."""


@final
@attrs.frozen(kw_only=True)
class TimerRecord:
    """A durable timer: deliver ``event`` to parked ``step`` at ``fire_at``."""

    step: str
    """Step key the timer resumes."""
    event: str
    """Event delivered when it fires."""
    fire_at: datetime = attrs.field(converter=_utc)
    """Wall-clock UTC deadline; on recovery the remaining time is ``fire_at - now``."""


@final
@attrs.frozen(kw_only=True)
class ErrorRecord:
    """Why a run failed. ``str()`` gives the reason or the exception message."""

    kind: str
    """``failure`` (a step returned ``Fail``), ``crash`` (exceptions past the retry
    budget, or a deterministic error applying a result), ``timeout`` (attempts
    timed out past the budget), ``undeclared_event`` (a step emitted, or was
    resumed with, an event it does not declare), ``restart_limit`` (the
    instance task crashed past its restart intensity), ``definition`` (a route
    or the workflow definition misbehaved at run time) or ``stalled`` (nothing
    active and ``Done`` never completed)."""
    message: str
    """The failure reason or the exception message."""
    step: str | None = None
    """Step key involved, if any."""
    exception_type: str | None = None
    """Qualified name of the exception class, for crashes."""
    attempt: int | None = None
    """The last attempt made, for step crashes."""

    @classmethod
    def from_exception(
        cls, kind: str, step: str | None, exc: BaseException, attempt: int | None = None
    ) -> ErrorRecord:
        """The record of a failure caused by ``exc``.

        ``message`` is ``str(exc)`` (``repr(exc)`` when that is empty) and
        ``exception_type`` its class's qualified name: the bare name for
        builtins (``KeyError``), ``module.QualName`` otherwise.
        """
        return cls(
            kind=kind,
            message=str(exc) or repr(exc),
            step=step,
            exception_type=_qualified_name(type(exc)),
            attempt=attempt,
        )

    def __str__(self) -> str:
        where = f" in step {self.step!r}" if self.step else ""
        exc = f" ({self.exception_type})" if self.exception_type else ""
        return f"{self.kind}{where}: {self.message}{exc}"


def _qualified_name(cls: type) -> str:
    """``cls.__qualname__`` for builtins, else ``module.qualname``."""
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _frozen_strs(value: Any) -> frozenset[str]:
    if type(value) is frozenset:
        return value
    return frozenset(value)


@final
@attrs.frozen(kw_only=True)
class Instance:
    """One run of a workflow: its status, its context and everything it did.

    Build a new run with ``Instance.new``; change one only through the pure
    engine functions (``hephaestus_trio.engine``).
    """

    id: str
    """Business id, ``"key::value"`` (several runs may share it over time)."""
    run_id: str
    """Unique id of this run; the storage's primary key."""
    workflow: str
    """Registry name of the workflow (of the version class, for versioned workflows)."""
    workflow_version: int = 1
    """Version the run started with; kept for its whole life."""
    status: Status = Status.PENDING
    """Where the run is in its lifecycle."""
    context: Context = attrs.field(factory=Context)
    """Initial data plus step updates."""
    step_configs: Mapping[str, Mapping[str, Any]] = attrs.field(factory=dict)
    """Config of each active step that has one; dropped when the step completes."""
    active_steps: frozenset[str] = attrs.field(factory=frozenset, converter=_frozen_strs)
    """Steps activated and not yet completed (running or parked)."""
    waiting_steps: frozenset[str] = attrs.field(factory=frozenset, converter=_frozen_strs)
    """The parked subset of ``active_steps``."""
    completed_steps: frozenset[str] = attrs.field(factory=frozenset, converter=_frozen_strs)
    """Steps that completed; a step completes at most once."""
    taken_edges: frozenset[tuple[str, str]] = attrs.field(factory=frozenset)
    """``(from_step, to_step)`` transitions that were taken; the join rule reads it."""
    runtime_metadata: Mapping[str, Any] = attrs.field(factory=dict)
    """Merged ``metadata`` of every ``Complete``."""
    telemetry_metadata: Mapping[str, Any] = attrs.field(factory=dict)
    """Caller data copied into every observability event of this run."""
    trace_context: Mapping[str, str] | None = None
    """W3C trace headers (``traceparent``, ``tracestate``) of the code that started the
    run, captured only when a tracing handler asks for them, so the run's spans join
    the caller's trace in whichever engine drives it, even after a restart."""
    execution_history: tuple[ExecutionEntry, ...] = ()
    """One entry per completion, in order."""
    timers: tuple[TimerRecord, ...] = ()
    """Durable timers currently armed."""
    error: ErrorRecord | None = None
    """Why the run failed, when it did."""
    unique_key: str | None = None
    """Constraint key the storage keeps unique among live runs (None: no constraint)."""
    created_at: datetime = attrs.field(converter=_utc)
    """When the run was created, UTC."""
    updated_at: datetime = attrs.field(converter=_utc)
    """When the run last changed, UTC."""

    @classmethod
    def new(
        cls,
        workflow: type[Workflow] | str,
        context: Mapping[str, Any] | None = None,
        *,
        id: str,
        version: int | None = None,
        run_id: str | None = None,
        now: datetime | None = None,
        telemetry_metadata: Mapping[str, Any] | None = None,
        unique_key: str | None = None,
    ) -> Instance:
        """Build a pending run.

        ``workflow`` is a workflow class or its registry name. ``now`` and
        ``run_id`` default to the current UTC time and a fresh UUID: this is the
        one place the core reads a clock or makes an id, and callers that need
        determinism pass both.

        Raises:
            TypeError: ``context`` is not JSON-safe (the message names the key path).
        """
        initial = dict(context or {})
        check_json_safe(initial, "context")
        telemetry = dict(telemetry_metadata or {})
        check_json_safe(telemetry, "telemetry_metadata")
        if isinstance(workflow, str):
            name, wf_version = workflow, version or 1
        else:
            name, wf_version = workflow.name, version or workflow.version
        stamp = now or datetime.now(UTC)
        return cls(
            id=id,
            run_id=run_id or uuid.uuid4().hex,
            workflow=name,
            workflow_version=wf_version,
            context=Context(initial=initial),
            telemetry_metadata=telemetry,
            unique_key=unique_key,
            created_at=stamp,
            updated_at=stamp,
        )

    @property
    def is_terminal(self) -> bool:
        """Shortcut for ``status.is_terminal``."""
        return self.status.is_terminal

    @property
    def running_steps(self) -> frozenset[str]:
        """Active steps that are not parked: the ones a runtime must execute."""
        return self.active_steps - self.waiting_steps
