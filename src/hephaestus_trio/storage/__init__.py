"""Storage backends behind one domain-level protocol."""

from ._memory import MemoryStorage as MemoryStorage
from ._postgres import PostgresStorage as PostgresStorage
from ._protocol import Advance as Advance
from ._protocol import Advancer as Advancer
from ._protocol import ClaimedRun as ClaimedRun
from ._protocol import EngineRecord as EngineRecord
from ._protocol import Lease as Lease
from ._protocol import NewWakeup as NewWakeup
from ._protocol import RunSummary as RunSummary
from ._protocol import Storage as Storage
from ._protocol import UniqueViolation as UniqueViolation
from ._protocol import WaitingRun as WaitingRun
from ._protocol import Wakeup as Wakeup
from ._protocol import WakeupGone as WakeupGone
from ._protocol import WakeupKind as WakeupKind
from ._protocol import WakeupRefused as WakeupRefused
from ._protocol import WorkflowKey as WorkflowKey
from ._sqlite import SQLiteStorage as SQLiteStorage
from ._urls import storage_from_url as storage_from_url

__all__ = [
    "Advance",
    "Advancer",
    "ClaimedRun",
    "EngineRecord",
    "Lease",
    "MemoryStorage",
    "NewWakeup",
    "PostgresStorage",
    "RunSummary",
    "SQLiteStorage",
    "Storage",
    "UniqueViolation",
    "WaitingRun",
    "Wakeup",
    "WakeupGone",
    "WakeupKind",
    "WakeupRefused",
    "WorkflowKey",
    "storage_from_url",
]
