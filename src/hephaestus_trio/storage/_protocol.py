"""The storage protocol: what the running engine needs, in domain terms.

Every backend implements ``Storage`` and passes the one conformance suite
(``tests/storage/test_conformance.py``). Methods are coroutines; a storage is
created unopened and used inside ``async with storage:`` (``open_engine`` does
that for you).

Capabilities a backend states with class attributes:

- ``durable``: state survives the process (``MemoryStorage`` is not durable).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from ..core._instance import Instance, Status

__all__ = ["ResumeRecord", "Storage", "UniqueViolation"]


@attrs.frozen(kw_only=True)
class ResumeRecord:
    """A resume accepted by ``engine.resume`` and not yet applied.

    It is stored before ``resume`` returns (durably, on a durable backend) and
    deleted in the same write that applies it, so it is applied exactly once.
    """

    seq: int
    """Storage-assigned, increasing: resumes of a run apply in ``seq`` order."""
    run_id: str
    """Run the resume is for."""
    step: str
    """Parked step it completes."""
    event: str
    """Event as offered by the caller (the step maps it, e.g. ``event_name``)."""
    accepted_at: datetime
    """When it was accepted, UTC."""


class UniqueViolation(Exception):
    """Internal: a write would give two live runs the same ``unique_key``.

    The running engine translates it into the public ``AlreadyRunning``.
    """

    def __init__(self, unique_key: str, existing_run_id: str, existing_id: str) -> None:
        self.unique_key = unique_key
        self.existing_run_id = existing_run_id
        self.existing_id = existing_id
        super().__init__(f"unique key {unique_key!r} is held by live run {existing_run_id!r}")


@runtime_checkable
class Storage(Protocol):
    """Where runs live. Instances are keyed by ``run_id``.

    Edge cases every backend honours:

    - ``get`` of an unknown run returns ``None``; ``delete`` of one is a no-op.
    - ``put`` of a live run whose ``unique_key`` is held by *another* live run
      raises ``UniqueViolation`` and writes nothing. Terminal runs hold no key.
    - ``put(..., consume=seqs)`` deletes those resume records in the same
      atomic write (missing ones are ignored).
    - ``query`` returns runs ordered by ``created_at`` then ``run_id``; its
      filters combine with AND and accept ``Status`` members or their values.
    """

    durable: bool

    async def __aenter__(self) -> Storage: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def open(self) -> None:
        """Open connections, create or migrate the schema. Idempotent."""
        ...

    async def close(self) -> None:
        """Flush and release everything. Idempotent."""
        ...

    async def get(self, run_id: str) -> Instance | None:
        """The run with ``run_id``, or ``None``."""
        ...

    async def put(self, instance: Instance, *, consume: Sequence[int] = ()) -> None:
        """Insert or replace ``instance`` (and delete the ``consume``d resumes) atomically.

        Raises:
            UniqueViolation: another live run holds ``instance.unique_key``.
        """
        ...

    async def delete(self, run_id: str) -> None:
        """Remove a run and its pending resumes; unknown ids are ignored."""
        ...

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
    ) -> list[Instance]:
        """Runs matching every given filter."""
        ...

    async def add_resume(self, run_id: str, step: str, event: str, at: datetime) -> ResumeRecord:
        """Record an accepted resume; durable before it returns on a durable backend."""
        ...

    async def pending_resumes(self, run_id: str | None = None) -> list[ResumeRecord]:
        """Unapplied resumes (of one run, or of all), in ``seq`` order."""
        ...

    async def delete_resume(self, seq: int) -> None:
        """Drop one resume record (used when a resume is refused after recording)."""
        ...

    async def purge(self, older_than: datetime) -> int:
        """Delete terminal runs last updated before ``older_than``; returns how many."""
        ...
