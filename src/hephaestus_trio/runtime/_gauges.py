"""What a metrics scrape reads from a running engine: the runs it holds and its leases.

Gauges are read at scrape time rather than counted from events, so they can never
drift (a missed event, a handler attached late). The values are those of
``Engine.statistics()``.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["engine_gauges", "gauge_reader"]


def engine_gauges(engine: Engine) -> dict[str, float]:
    """``live``, ``running`` and ``parked`` runs this engine drives, and its ``leases``.

    Read from ``engine.statistics()``: ``live`` counts every run with a driver
    here, ``running`` those with a step executing (backoffs included),
    ``parked`` those whose every active step is parked (a run hibernates right
    after, unless a timer is due), ``leases`` the leases not yet released.
    """
    stats = engine.statistics()
    return {
        "live": float(stats.runs),
        "running": float(stats.running),
        "parked": float(stats.parked),
        "leases": float(stats.leases),
    }


def gauge_reader(engine: Engine) -> Callable[[], dict[str, float] | None]:
    """A reader of ``engine``'s gauges that returns ``None`` once it is closed or gone.

    It holds the engine weakly, so a metrics handler that outlives the engine
    does not keep it (and every run it drove) in memory.
    """
    ref = weakref.ref(engine)

    def read() -> dict[str, float] | None:
        found = ref()
        if found is None or found._closed:
            return None
        return engine_gauges(found)

    return read
