"""Steps: the unit of work of a workflow, and the values ``execute`` returns.

A step class declares every event it can emit. ``execute`` returns a result
value; the runtime turns it into pure engine calls. Raising is a *crash*
(retried by the step's ``RetryPolicy``); returning ``Fail`` is a business
failure (never retried).
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias, final

import attrs

from .._errors import InvalidValue, WorkflowDefinitionError
from ._policies import RetryPolicy

if TYPE_CHECKING:
    from ._instance import Context, Instance

__all__ = [
    "Complete",
    "Fail",
    "Step",
    "StepResult",
    "Suspend",
    "snake_case",
    "step",
]

Config: TypeAlias = "Mapping[str, Any] | None"


@final
@attrs.frozen(kw_only=True)
class Complete:
    """The step finished and emits ``event``."""

    event: str = attrs.field(kw_only=False)
    """One of the step's declared events."""
    updates: Mapping[str, Any] | None = attrs.field(default=None, kw_only=False)
    """Stored at ``context.steps[step_key]``; must be JSON-safe."""
    metadata: Mapping[str, Any] | None = None
    """Merged into ``instance.runtime_metadata``; must be JSON-safe."""


@final
@attrs.frozen(kw_only=True)
class Suspend:
    """Park the step until a resume (or a timer) delivers one of its events.

    With ``after`` set, the runtime also arms a durable timer that delivers
    ``event`` after that many seconds unless a resume arrives first. The
    built-in ``Wait`` and ``WaitForEvent`` use this.
    """

    after: float | None = None
    """Seconds until the timer fires, or ``None`` for no timer."""
    event: str = "timeout"
    """Event the timer delivers."""

    def __attrs_post_init__(self) -> None:
        if self.after is not None and (
            isinstance(self.after, bool)
            or not isinstance(self.after, int | float)
            or not self.after >= 0
        ):
            raise InvalidValue(
                f"Suspend(after=...) must be a number of seconds >= 0 (or None for no "
                f"timer), got {self.after!r}"
            )


@final
@attrs.frozen(kw_only=True)
class Fail:
    """Business failure: the instance becomes ``failed`` and nothing is retried."""

    reason: str = attrs.field(kw_only=False)
    """Human-readable reason; ``str(instance.error)`` contains it."""


StepResult: TypeAlias = "str | Complete | Suspend | Fail"

_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_EVENT_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")


def snake_case(name: str) -> str:
    """``ValidateOrder`` -> ``validate_order``; ``HTTPCall`` -> ``http_call``."""
    return _CAMEL.sub("_", name).lower()


_ASYNC_EXECUTE: weakref.WeakKeyDictionary[Callable[..., Any], bool] = weakref.WeakKeyDictionary()
"""``Step.is_async`` answers, per ``execute`` function."""


class Step:
    """Base class of every step.

    Subclasses set ``events`` (every event ``execute`` may emit) and implement
    ``execute(instance, config, context)``, async or plain (a plain ``def`` runs
    in a worker thread). Optional class attributes: ``step_key`` (default: the
    class name in snake_case), ``retry`` (a ``RetryPolicy``), ``timeout`` (seconds
    per attempt).

    Synopsis::

        class Charge(Step):
            events = ("done",)
            retry = RetryPolicy(max_attempts=3, backoff="exponential", base=0.5)

            async def execute(self, instance, config, context):
                await payments.charge(context.initial["order"])
                return Complete("done", updates={"charged": True})
    """

    events: ClassVar[tuple[str, ...]] = ()
    step_key: ClassVar[str] = ""
    retry: ClassVar[RetryPolicy] = RetryPolicy()
    timeout: ClassVar[float | None] = None
    terminal: ClassVar[bool] = False
    """True only for ``Done``: a leaf whose completion can complete the run."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "step_key" not in cls.__dict__ or not cls.__dict__["step_key"]:
            cls.step_key = snake_case(cls.__name__)
        _check_step_class(cls)

    def execute(
        self, instance: Instance, config: Config, context: Context
    ) -> StepResult | Awaitable[StepResult]:
        """Do the work; return an event, ``Complete``, ``Suspend`` or ``Fail``."""
        raise NotImplementedError(f"{type(self).__name__}.execute is not implemented")

    # Hooks the built-ins override; user steps rarely need them.

    @classmethod
    def declared_events(cls, config: Config) -> tuple[str, ...]:
        """Events this step can emit with ``config`` (default: ``events``)."""
        return cls.events

    @classmethod
    def validate_config(cls, config: Config) -> None:
        """Reject a bad static config at definition time (raise ``ValueError``)."""

    @classmethod
    def resume_event(cls, config: Config, event: str) -> str | None:
        """Map an event offered by ``resume`` to the event delivered, or ``None`` to refuse."""
        return event if event in cls.declared_events(config) else None

    @classmethod
    def is_async(cls) -> bool:
        """Whether ``execute`` is a coroutine function (else it runs in a thread).

        Asked once per attempt on the hot path, and ``inspect`` is slow at it, so
        the answer is kept per function object (a class whose ``execute`` is
        replaced gets a fresh answer; a discarded class does not stay alive).
        """
        execute = cls.execute
        try:
            return _ASYNC_EXECUTE[execute]
        except (KeyError, TypeError):
            answer = inspect.iscoroutinefunction(execute)
        try:
            _ASYNC_EXECUTE[execute] = answer
        except TypeError:
            pass  # not weak-referenceable: answered, just not kept
        return answer


def _check_step_class(cls: type[Step]) -> None:
    events = cls.__dict__.get("events", cls.events)
    if isinstance(events, str) or not isinstance(events, tuple | list):
        raise WorkflowDefinitionError(
            f"step {cls.__name__}: events must be a tuple of event names, got {events!r}"
        )
    for event in events:
        if not isinstance(event, str) or not _EVENT_RE.match(event):
            raise WorkflowDefinitionError(
                f"step {cls.__name__}: event {event!r} must be a non-empty string of "
                "letters, digits, '_', '.', ':' or '-'"
            )
    if len(set(events)) != len(events):
        raise WorkflowDefinitionError(f"step {cls.__name__}: events {events!r} has duplicates")
    cls.events = tuple(events)
    if not isinstance(cls.step_key, str) or not re.match(r"^[a-z0-9_]+$", cls.step_key):
        raise WorkflowDefinitionError(
            f"step {cls.__name__}: step_key {cls.step_key!r} must match [a-z0-9_]+"
        )
    if not isinstance(cls.retry, RetryPolicy):
        raise WorkflowDefinitionError(
            f"step {cls.__name__}: retry must be a RetryPolicy, got {cls.retry!r}"
        )
    timeout = cls.timeout
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0
    ):
        raise WorkflowDefinitionError(
            f"step {cls.__name__}: timeout must be a positive number of seconds, got {timeout!r}"
        )


StepFunction: TypeAlias = Callable[..., Any]


def step(
    *,
    events: tuple[str, ...],
    retry: RetryPolicy | None = None,
    timeout: float | None = None,
    step_key: str | None = None,
) -> Callable[[StepFunction], type[Step]]:
    """Make a ``Step`` class from a function ``fn(instance, config, context)``.

    The step key is the function's name. The function may be ``async`` or plain.

    Synopsis::

        @step(events=("done",))
        async def charge(instance, config, context):
            return "done"
    """

    def decorate(fn: StepFunction) -> type[Step]:
        namespace: dict[str, Any] = {
            "events": tuple(events),
            "step_key": step_key or fn.__name__,
            "__module__": fn.__module__,
            "__qualname__": fn.__qualname__,
            "__doc__": fn.__doc__,
        }
        if retry is not None:
            namespace["retry"] = retry
        if timeout is not None:
            namespace["timeout"] = timeout
        if inspect.iscoroutinefunction(fn):

            async def execute_async(
                self: Step, instance: Instance, config: Config, context: Context
            ) -> StepResult:
                result: StepResult = await fn(instance, config, context)
                return result

            namespace["execute"] = execute_async
        else:

            def execute_sync(
                self: Step, instance: Instance, config: Config, context: Context
            ) -> StepResult:
                result: StepResult = fn(instance, config, context)
                return result

            namespace["execute"] = execute_sync
        cls = type(fn.__name__, (Step,), namespace)
        return cls

    return decorate
