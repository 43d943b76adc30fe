"""The instance model: one run of a workflow, as frozen attrs values.

Every change produces a new ``Instance`` (``attrs.evolve``); the pure engine
functions are the only code that builds one from another. Step references are
step keys (strings) everywhere.
"""

from __future__ import annotations

import enum
import traceback
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, final

import attrs

from .._errors import InvalidValue
from ._json import check_json_safe
from ._shape import DefinitionShape

if TYPE_CHECKING:
    from ._workflow import Workflow

__all__ = [
    "FAILED_ATTEMPT",
    "TRACEBACK_FRAMES",
    "TRACEBACK_LIMIT",
    "Context",
    "ErrorRecord",
    "ExecutionEntry",
    "Instance",
    "Status",
    "TimerRecord",
    "check_mapping",
    "format_traceback",
]

FAILED_ATTEMPT = ""
"""``ExecutionEntry.event`` of a failed attempt (its ``error`` is set): no event was emitted."""

TRACEBACK_FRAMES = 30
"""``ErrorRecord.traceback`` keeps the innermost this many frames of each exception."""
TRACEBACK_LIMIT = 8192
"""``ErrorRecord.traceback`` is at most this many characters; longer ones lose their middle."""


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
        # Runs several times per transition. Identity tests against module globals:
        # Enum.__hash__ is Python code, and on 3.11 even ``Status.COMPLETED`` is a
        # slow descriptor lookup.
        return self is _COMPLETED or self is _FAILED or self is _CANCELLED

    @property
    def is_live(self) -> bool:
        """Pending, running or waiting: the run holds its business key."""
        return not (self is _COMPLETED or self is _FAILED or self is _CANCELLED)

    @classmethod
    def coerce(cls, value: Status | str) -> Status:
        """Accept a member or its string value; raise ``InvalidValue`` naming the choices."""
        if isinstance(value, Status):
            return value
        try:
            return cls(value)
        except ValueError:
            raise InvalidValue(
                f"unknown status {value!r}; expected one of {[s.value for s in cls]}"
            ) from None


_COMPLETED, _FAILED, _CANCELLED = Status.COMPLETED, Status.FAILED, Status.CANCELLED


def _utc(value: datetime) -> datetime:
    # Runs on every attrs.evolve of an Instance: keep the common case cheap.
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        raise InvalidValue(
            f"datetimes must be timezone-aware UTC, got naive {value!r}; pass e.g. "
            "datetime.now(UTC)"
        )
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
    """One completed step, or one failed attempt of a step, in the order they happened.

    A *completion* has ``error is None``: the step emitted ``event``. A *failed
    attempt* has ``error`` set (why it failed, with the traceback), its
    ``attempt`` number and ``event == FAILED_ATTEMPT`` (the empty string): the
    step raised or timed out. ``Instance.completions`` keeps only completions.
    """

    step: str
    """Step key."""
    event: str
    """Event the step emitted (or was resumed with); ``""`` for a failed attempt."""
    timestamp: datetime = attrs.field(converter=_utc)
    """When the completion was applied, UTC."""
    context_updates: Mapping[str, Any] | None = None
    """The updates stored at ``context.steps[step]``, if any."""
    attempt: int = 1
    """Which attempt succeeded, or failed (attempts count from 1 and survive restarts)."""
    wakeup: int | None = None
    """``seq`` of the resume or timer wakeup whose delivery completed the step, if any."""
    error: ErrorRecord | None = None
    """For a failed attempt: why (``kind`` ``crash`` or ``timeout``); ``None`` for a completion."""

    @property
    def failed(self) -> bool:
        """Whether this entry is a failed attempt rather than a completion."""
        return self.error is not None


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
    traceback: str | None = None
    """The formatted traceback, for crashes and timeouts (``format_traceback``: the
    innermost ``TRACEBACK_FRAMES`` frames of each chained exception, at most
    ``TRACEBACK_LIMIT`` characters, the middle cut out with a marker line)."""

    @classmethod
    def from_exception(
        cls,
        kind: str,
        step: str | None,
        exc: BaseException,
        attempt: int | None = None,
        *,
        with_traceback: bool = True,
    ) -> ErrorRecord:
        """The record of a failure caused by ``exc``.

        ``message`` is ``str(exc)`` (``repr(exc)`` when that is empty; a
        ``KeyError``'s message is the ``repr`` of its key, so it reads
        ``KeyError: 'missing'`` only together with ``exception_type``),
        ``exception_type`` its class's qualified name: the bare name for
        builtins (``KeyError``), ``module.QualName`` otherwise, and
        ``traceback`` the bounded formatted traceback (``with_traceback=False``
        leaves it out, for errors raised by the library's own checks).
        """
        return cls(
            kind=kind,
            message=str(exc) or repr(exc),
            step=step,
            exception_type=_qualified_name(type(exc)),
            attempt=attempt,
            traceback=format_traceback(exc) if with_traceback else None,
        )

    def __str__(self) -> str:
        where = f" in step {self.step!r}" if self.step else ""
        exc = f" ({self.exception_type})" if self.exception_type else ""
        return f"{self.kind}{where}: {self.message}{exc}"


def format_traceback(exc: BaseException) -> str | None:
    """``exc``'s formatted traceback, bounded so that a run's record stays small.

    ``None`` for an exception that was never raised (it has no frames, and its
    type and message are in the record already).

    Each exception of the chain (``__cause__``/``__context__``) keeps its
    innermost ``TRACEBACK_FRAMES`` frames (a deep recursion still shows where
    it failed); past ``TRACEBACK_LIMIT`` characters the middle is replaced by
    a line saying how much was cut, keeping the outermost and the innermost
    parts, which are the ones a reader needs.
    """
    if exc.__traceback__ is None:
        return None
    text = "".join(traceback.format_exception(exc, limit=-TRACEBACK_FRAMES))
    if len(text) <= TRACEBACK_LIMIT:
        return text
    marker = "\n... [{} characters cut] ...\n"
    room = TRACEBACK_LIMIT - len(marker.format(len(text)))
    head, tail = room // 2, room - room // 2
    return text[:head] + marker.format(len(text) - head - tail) + text[len(text) - tail :]


def check_mapping(argument: str, value: object) -> None:
    """Refuse a ``context``-like argument that is not a mapping, naming it and its type."""
    if value is not None and not isinstance(value, Mapping):
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise TypeError(
            f"{argument} must be a mapping (a dict of JSON-safe values) or None, got "
            f"{type(value).__name__} {shown}"
        )


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
    definition_fingerprint: str | None = None
    """Fingerprint of the workflow definition the run started with
    (``Workflow.definition_fingerprint()``); ``None`` for runs stored before
    fingerprints existed, which are trusted."""
    definition_shape: DefinitionShape | None = None
    """Steps, events and transitions of that definition, so that a mismatch can
    say what changed."""
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
            TypeError: ``context`` (or ``telemetry_metadata``) is not a mapping, or
                not JSON-safe (the message names the argument, or the key path).
        """
        check_mapping("context", context)
        check_mapping("telemetry_metadata", telemetry_metadata)
        initial = dict(context or {})
        check_json_safe(initial, "context")
        telemetry = dict(telemetry_metadata or {})
        check_json_safe(telemetry, "telemetry_metadata")
        shape: DefinitionShape | None = None
        fingerprint: str | None = None
        if isinstance(workflow, str):
            name, wf_version = workflow, version or 1
        else:
            name, wf_version = workflow.name, version or workflow.version
            if not workflow.is_dispatcher():
                shape = workflow.definition_shape()
                fingerprint = workflow.definition_fingerprint()
        stamp = now or datetime.now(UTC)
        return cls(
            id=id,
            run_id=run_id or uuid.uuid4().hex,
            workflow=name,
            workflow_version=wf_version,
            context=Context(initial=initial),
            telemetry_metadata=telemetry,
            definition_fingerprint=fingerprint,
            definition_shape=shape,
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

    @property
    def completions(self) -> tuple[ExecutionEntry, ...]:
        """The completions of ``execution_history`` (failed attempts left out), in order."""
        history = self.execution_history
        if all(entry.error is None for entry in history):
            return history
        return tuple(entry for entry in history if entry.error is None)

    def failed_attempts(self, step: str) -> tuple[ExecutionEntry, ...]:
        """The failed attempts of ``step`` recorded so far, in order.

        A step completes at most once, so these all belong to its one
        activation; the next attempt is ``len(...) + 1``.
        """
        return tuple(e for e in self.execution_history if e.error is not None and e.step == step)
