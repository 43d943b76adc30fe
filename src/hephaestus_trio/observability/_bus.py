"""Dispatch of events to subscribed handlers.

Handlers run inline, in subscription order, when the event happens. A
handler that raises is logged and detached — exactly as Trio disables a
failing instrument — so observability can never break a workflow.
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
        self._subscriptions.append(entry)

        def unsubscribe() -> None:
            if entry in self._subscriptions:
                self._subscriptions.remove(entry)

        return unsubscribe

    def wants(self, name: str) -> bool:
        """Whether any handler listens to ``name`` (lets callers skip building metadata)."""
        return any(w is None or name in w for _, w in self._subscriptions)

    def emit(
        self,
        name: str,
        measurements: Mapping[str, float] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Deliver one event to every interested handler."""
        if not self._subscriptions:
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
