"""The Trio runtime: the only layer that opens nurseries, channels, scopes and timers."""

from ._clock import trio_wall_clock as trio_wall_clock
from ._open_engine import Engine as Engine
from ._open_engine import open_engine as open_engine
from ._statistics import EngineStatistics as EngineStatistics
from ._timers import TimerHandle as TimerHandle

__all__ = ["Engine", "EngineStatistics", "TimerHandle", "open_engine", "trio_wall_clock"]
