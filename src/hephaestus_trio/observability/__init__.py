"""Events, their bus and the built-in handlers. Depends on nothing but the stdlib.

``OpenTelemetryHandler`` and ``PrometheusHandler`` import their optional
packages only when created, so importing this package never needs the extras.
"""

from ._bus import EventBus as EventBus
from ._bus import Handler as Handler
from ._events import EVENT_NAMES as EVENT_NAMES
from ._events import Event as Event
from ._logging import DEFAULT_LEVELS as DEFAULT_LEVELS
from ._logging import LoggingHandler as LoggingHandler
from ._otel import SPAN_ATTRIBUTES as SPAN_ATTRIBUTES
from ._otel import SPAN_NAMES as SPAN_NAMES
from ._otel import OpenTelemetryHandler as OpenTelemetryHandler
from ._prometheus import METRICS as METRICS
from ._prometheus import PrometheusHandler as PrometheusHandler

__all__ = [
    "DEFAULT_LEVELS",
    "EVENT_NAMES",
    "METRICS",
    "SPAN_ATTRIBUTES",
    "SPAN_NAMES",
    "Event",
    "EventBus",
    "Handler",
    "LoggingHandler",
    "OpenTelemetryHandler",
    "PrometheusHandler",
]
