"""Storage backends behind one domain-level protocol."""

from ._memory import MemoryStorage as MemoryStorage
from ._protocol import ResumeRecord as ResumeRecord
from ._protocol import Storage as Storage
from ._protocol import UniqueViolation as UniqueViolation
from ._sqlite import SQLiteStorage as SQLiteStorage
from ._urls import storage_from_url as storage_from_url

__all__ = [
    "MemoryStorage",
    "ResumeRecord",
    "SQLiteStorage",
    "Storage",
    "UniqueViolation",
    "storage_from_url",
]
