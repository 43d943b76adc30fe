"""Storage backends behind one domain-level protocol."""

from ._memory import MemoryStorage as MemoryStorage
from ._protocol import ResumeRecord as ResumeRecord
from ._protocol import Storage as Storage
from ._protocol import UniqueViolation as UniqueViolation

__all__ = ["MemoryStorage", "ResumeRecord", "Storage", "UniqueViolation"]
