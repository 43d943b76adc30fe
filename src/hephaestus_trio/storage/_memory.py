"""``MemoryStorage``: the default, non-durable backend (like the original's ETS).

It is also the reference every other backend is compared with. Every method
checkpoints, so code tested against it yields to Trio as it would against a
real database. Uniqueness is checked and claimed without an ``await`` in
between, which makes it atomic under Trio's cooperative scheduling.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

import trio

from ..core._instance import Instance, Status
from ._protocol import ResumeRecord, UniqueViolation
from ._query import matches, normalize_filters

__all__ = ["MemoryStorage"]


class MemoryStorage:
    """In-process storage: fast, and gone when the process ends."""

    durable = False

    def __init__(self) -> None:
        self._runs: dict[str, Instance] = {}
        # id -> run_ids: resume/get look runs up by business id on every call.
        self._by_id: dict[str, set[str]] = {}
        self._holders: dict[str, str] = {}
        self._resumes: dict[int, ResumeRecord] = {}
        self._seq = itertools.count(1)

    async def __aenter__(self) -> MemoryStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()

    async def get(self, run_id: str) -> Instance | None:
        await trio.lowlevel.checkpoint()
        return self._runs.get(run_id)

    async def put(self, instance: Instance, *, consume: Sequence[int] = ()) -> None:
        key = instance.unique_key
        if key is not None and instance.status.is_live:
            holder = self._holders.get(key)
            if holder is not None and holder != instance.run_id:
                existing = self._runs[holder]
                raise UniqueViolation(key, holder, existing.id)
        previous = self._runs.get(instance.run_id)
        if previous is not None and previous.unique_key is not None:
            if self._holders.get(previous.unique_key) == instance.run_id:
                del self._holders[previous.unique_key]
        self._runs[instance.run_id] = instance
        self._by_id.setdefault(instance.id, set()).add(instance.run_id)
        if key is not None and instance.status.is_live:
            self._holders[key] = instance.run_id
        for seq in consume:
            self._resumes.pop(seq, None)
        await trio.lowlevel.checkpoint()

    async def delete(self, run_id: str) -> None:
        instance = self._runs.pop(run_id, None)
        if instance is not None:
            runs = self._by_id.get(instance.id, set())
            runs.discard(run_id)
            if not runs:
                self._by_id.pop(instance.id, None)
        if instance is not None and instance.unique_key is not None:
            if self._holders.get(instance.unique_key) == run_id:
                del self._holders[instance.unique_key]
        for seq in [s for s, r in self._resumes.items() if r.run_id == run_id]:
            del self._resumes[seq]
        await trio.lowlevel.checkpoint()

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
    ) -> list[Instance]:
        filters = normalize_filters(status, status_in, workflow, workflow_version, id)
        await trio.lowlevel.checkpoint()
        if id is not None:
            candidates = [self._runs[r] for r in self._by_id.get(id, ())]
        else:
            candidates = list(self._runs.values())
        found = [inst for inst in candidates if matches(inst, filters)]
        found.sort(key=lambda inst: (inst.created_at, inst.run_id))
        return found

    async def add_resume(self, run_id: str, step: str, event: str, at: datetime) -> ResumeRecord:
        record = ResumeRecord(
            seq=next(self._seq), run_id=run_id, step=step, event=event, accepted_at=at
        )
        self._resumes[record.seq] = record
        await trio.lowlevel.checkpoint()
        return record

    async def pending_resumes(self, run_id: str | None = None) -> list[ResumeRecord]:
        await trio.lowlevel.checkpoint()
        return sorted(
            (r for r in self._resumes.values() if run_id is None or r.run_id == run_id),
            key=lambda r: r.seq,
        )

    async def delete_resume(self, seq: int) -> None:
        self._resumes.pop(seq, None)
        await trio.lowlevel.checkpoint()

    async def purge(self, older_than: datetime) -> int:
        doomed = [
            run_id
            for run_id, inst in self._runs.items()
            if inst.status.is_terminal and inst.updated_at < older_than
        ]
        for run_id in doomed:
            await self.delete(run_id)
        await trio.lowlevel.checkpoint()
        return len(doomed)
