"""Dispatch of events to subscribed handlers.

Handlers run inline, in subscription order, when the event happens. A
handler that raises is logged and detached — exactly as Trio disables a
failing instrument — so observability can never break a workflow.

A handler may also offer two optional hooks, looked up when it is subscribed:

- ``capture_trace_context() -> Mapping[str, str] | None``: the engine asks for
  the caller's trace headers when a run starts or is resumed (and stores them
  with the run or its wakeup). With no such handler nothing is captured, so an
  engine without tracing pays nothing.
- ``attach_engine(engine_id, read_gauges) -> Callable[[], None]``: called by
  ``Engine.subscribe`` with a function that reads the engine's gauges (runs it
  holds, leases) at that moment; the returned callable detaches it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .._errors import InvalidValue
from ._events import EVENT_NAMES, Event

__all__ = ["EventBus", "Handler"]

Handler = Callable[[Event], object]
logger = logging.getLogger("hephaestus_trio.observability")


class EventBus:
    """Holds subscriptions; ``emit`` builds an ``Event`` only if someone listens."""

    def __init__(self) -> None:
        self._subscriptions: list[tuple[Handler, frozenset[str] | None]] = []
        self._capturers: list[tuple[Handler, Callable[[], Mapping[str, str] | None]]] = []
        self._wanted: dict[str, bool] = {}
        """``wants`` answers, asked several times per transition; cleared on every
        change of the subscriptions."""

    def subscribe(
        self, handler: Handler, events: Iterable[str] | None = None
    ) -> Callable[[], None]:
        """Attach ``handler`` to ``events`` (all when ``None``); returns an unsubscribe callable.

        Raises:
            InvalidValue: an unknown event name (the message lists the known ones).
        """
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        wanted: frozenset[str] | None = None
        if events is not None:
            if isinstance(events, str):
                events = [events]
            wanted = frozenset(events)
            unknown = sorted(wanted - set(EVENT_NAMES))
            if unknown:
                raise InvalidValue(f"unknown event name(s) {unknown}; known: {list(EVENT_NAMES)}")
        entry = (handler, wanted)
        self._wanted.clear()
        self._subscriptions.append(entry)
        capture = getattr(handler, "capture_trace_context", None)
        capturer = (handler, capture) if callable(capture) else None
        if capturer is not None:
            self._capturers.append(capturer)

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)
                self._wanted.clear()
            if capturer is not None and capturer in self._capturers:
                self._capturers.remove(capturer)

        return unsubscribe

    def capture_trace_context(self) -> dict[str, str] | None:
        """The caller's trace headers from the first handler that has some, else ``None``.

        Only handlers with a ``capture_trace_context`` hook are asked; with none
        subscribed this is one empty-list test. A hook that raises is logged and
        dropped, like a failing handler.
        """
        if not self._capturers:
            return None
        for capturer in list(self._capturers):
            try:
                found = capturer[1]()
            except Exception:
                logger.exception("trace capture of %r raised; it has been detached", capturer[0])
                if capturer in self._capturers:
                    self._capturers.remove(capturer)
                continue
            if found:
                return {str(k): str(v) for k, v in found.items()}
        return None

    def wants(self, name: str) -> bool:
        """Whether any handler listens to ``name`` (lets callers skip building metadata)."""
        try:
            return self._wanted[name]
        except KeyError:
            answer = self._wanted[name] = any(
                w is None or name in w for _, w in self._subscriptions
            )
            return answer

    def emit(
        self,
        name: str,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Deliver one event to every interested handler."""
        if not self._subscriptions or not self.wants(name):
            return
        event: Event | None = None
        for entry in list(self._subscriptions):
            handler, wanted = entry
            if wanted is not None and name not in wanted:
                continue
            if event is None:
                event = Event(name=name, measurements=measurements or {}, metadata=metadata or {})
            try:
                handler(event)
            except Exception:
                logger.exception(
                    "event handler %r raised on %s; it has been detached", handler, name
                )
                if entry in self._subscriptions:
                    self._subscriptions.remove(entry)
                    self._wanted.clear()
