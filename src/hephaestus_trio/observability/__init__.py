"""Events, their bus and the built-in handlers. Depends on nothing but the stdlib."""

from ._bus import EventBus as EventBus
from ._bus import Handler as Handler
from ._events import EVENT_NAMES as EVENT_NAMES
from ._events import Event as Event
from ._logging import DEFAULT_LEVELS as DEFAULT_LEVELS
from ._logging import LoggingHandler as LoggingHandler

__all__ = ["DEFAULT_LEVELS", "EVENT_NAMES", "Event", "EventBus", "Handler", "LoggingHandler"]
