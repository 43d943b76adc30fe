"""Retry and restart policies: frozen data plus the pure arithmetic over it.

The runtime sleeps; these functions only decide how long and whether.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, final

import attrs

from .._errors import InvalidValue

if TYPE_CHECKING:
    import random

__all__ = ["RestartPolicy", "RetryPolicy"]

Backoff = Literal["constant", "linear", "exponential"]
_BACKOFFS = ("constant", "linear", "exponential")


def _positive_int(instance: object, attribute: attrs.Attribute[Any], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidValue(f"{attribute.name} must be a positive int (1, 2, ...), got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidValue(
            f"{attribute.name} must be a number of seconds >= 0 (an int or a float), got {value!r}"
        )


def _backoff_kind(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in _BACKOFFS:
        raise InvalidValue(f"backoff must be one of {list(_BACKOFFS)}, got {value!r}")


def _exception_types(value: Any) -> tuple[type[BaseException], ...]:
    """A tuple of exception classes (a single class is accepted and wrapped)."""
    if isinstance(value, type):
        value = (value,)
    if not isinstance(value, tuple | list):
        raise InvalidValue(
            f"expected a tuple of exception classes, got {value!r}; e.g. "
            "retry_on=(ConnectionError, TimeoutError)"
        )
    result = tuple(value)
    for item in result:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise InvalidValue(
                f"{item!r} is not an exception class; retry_on and give_up_on hold "
                "exception classes such as KeyError or ConnectionError"
            )
    return result


@final
@attrs.frozen(kw_only=True)
class RetryPolicy:
    """How a step is retried after a crash (an exception or a timeout).

    A business ``Fail`` is never retried. After failed attempt *k* (attempts
    count from 1) the runtime waits ``delay(k)`` on Trio's clock.
    """

    max_attempts: int = attrs.field(default=1, validator=_positive_int)
    """Total attempts, the first included; 1 means no retry."""
    backoff: Backoff = attrs.field(default="exponential", validator=_backoff_kind)
    """``constant`` waits ``base``; ``linear`` ``base*k``; ``exponential`` ``base*2**(k-1)``."""
    base: float = attrs.field(default=0.1, validator=_non_negative)
    """Seconds; the unit of every backoff shape."""
    max_backoff: float = attrs.field(default=30.0, validator=_non_negative)
    """Upper bound of any single wait, seconds."""
    jitter: bool = False
    """Multiply each wait by a uniform factor in [0.5, 1.0] (off by default for determinism)."""
    retry_on: tuple[type[BaseException], ...] = attrs.field(
        default=(Exception,), converter=_exception_types
    )
    """Exceptions worth another attempt (``isinstance``); others fail the step at once.
    A timed-out attempt (``Step.timeout``) is retried while the budget lasts, whatever
    this says."""
    give_up_on: tuple[type[BaseException], ...] = attrs.field(
        default=(), converter=_exception_types
    )
    """Exceptions that fail the step at once, even if ``retry_on`` covers them
    (``give_up_on`` wins): bugs such as ``KeyError`` or ``TypeError`` that no retry fixes."""

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` before the next one.

        ``rng`` is only consulted when ``jitter`` is on; the runtime passes its own
        injected ``random.Random`` so tests can make it deterministic. The core
        never makes randomness itself.

        Raises:
            InvalidValue: ``jitter`` is on and no ``rng`` was given.
        """
        if self.backoff == "constant":
            raw = self.base
        elif self.backoff == "linear":
            raw = self.base * attempt
        else:
            raw = self.base * 2 ** (attempt - 1)
        wait = min(raw, self.max_backoff)
        if self.jitter:
            if rng is None:
                raise InvalidValue(
                    "RetryPolicy(jitter=True).delay() needs an rng: pass a random.Random"
                )
            wait *= rng.uniform(0.5, 1.0)
        return float(wait)

    def should_retry(self, attempt: int, exc: BaseException | None = None) -> bool:
        """Whether failed attempt ``attempt`` (raising ``exc``) leaves another try.

        ``exc`` is ``None`` for a timed-out attempt, which is retried while the
        budget lasts. An exception is retried when it is an instance of
        ``retry_on`` and not of ``give_up_on``.
        """
        if attempt >= self.max_attempts:
            return False
        return exc is None or self.retries(exc)

    def retries(self, exc: BaseException) -> bool:
        """Whether ``exc`` is worth retrying at all, budget aside (``give_up_on`` wins)."""
        if self.give_up_on and isinstance(exc, self.give_up_on):
            return False
        return isinstance(exc, self.retry_on)


@final
@attrs.frozen(kw_only=True)
class RestartPolicy:
    """OTP-style restart intensity for instance tasks (the *transient* strategy).

    With ``max_restarts=n`` within ``within`` seconds, an instance whose task
    always crashes runs ``n + 1`` times before it is marked failed.
    """

    max_restarts: int = attrs.field(default=3, validator=_non_negative)
    """Restarts allowed inside the sliding window."""
    within: float = attrs.field(default=5.0, validator=_non_negative)
    """Width of the sliding window, seconds of Trio's clock."""

    def should_restart(self, restarts: Sequence[float], now: float) -> bool:
        """Whether one more restart at ``now`` stays within the intensity.

        ``restarts`` holds the clock times of earlier restarts of this instance.
        """
        recent = [t for t in restarts if now - t < self.within]
        return len(recent) < self.max_restarts
