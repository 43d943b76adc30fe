"""The claim index of ``MemoryStorage``: which live runs need a driver, and from when.

Why it exists: ``claim``, ``next_wake`` and ``owned_wakeups`` run every time
the engine's claim loop wakes, which is after every resume, release and
cancel request. Scanning every live run there made each of those O(live
runs): with 20,000 runs parked on events, one resume walked all 20,000
three times, and resuming them all was quadratic. A hibernated run with no
timer (the bulk of a large deployment) needs no driver until something
happens to it, so it is in no index at all; the index holds, per holder
and workflow, the runs that do need one, ordered by when they become
claimable. The SQL backends get the same from their indexes.

A run is claimable at ``ready_at``: its ``wake_at`` if nobody holds it,
else the later of ``wake_at`` and its lease's expiry. Each heap entry is
``(ready_at, created_at, run_id, ticket)``; a run's ``filed`` holds the
ticket of its one valid entry, so re-filing a run (its lease moved, renewed
or ended) just pushes a new entry and the old one is dropped when it
surfaces. An entry names its run rather than holding it: a stale entry of a
run that finished lingers until it surfaces (a held run's entry surfaces
when its lease would have expired), and holding the run would keep its whole
last document alive, for the collector to walk, that long. Stale entries
are also swept out whenever they outnumber the valid ones, so renewals
cannot grow the heaps without bound. For runs
nobody holds the entry's order is the order ``claim`` takes runs in (oldest
``wake_at`` first, then creation), so a claim of ``limit`` runs pops at most
``limit`` entries from such a heap, however many runs are due.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._memory import _Run
    from ._protocol import WorkflowKey

__all__ = ["ClaimIndex"]

_Key = tuple["str | None", "WorkflowKey"]
_Entry = tuple[datetime, datetime, str, int]

_SWEEP_AT = 4096
"""Stale entries tolerated before a sweep is considered (below it, sweeping costs more)."""


def ready_at(run: _Run) -> datetime | None:
    """When ``run`` becomes claimable; ``None`` while it needs no driver."""
    at = run.wake_at
    if at is None or run.owner is None or run.expires_at is None:
        return at
    return max(at, run.expires_at)


class ClaimIndex:
    """Heaps of runs by when they become claimable, one per (holder, workflow)."""

    def __init__(self, runs: Mapping[str, _Run]) -> None:
        self._runs = runs
        """The storage's live runs by run id (entries name runs; this finds them)."""
        self._heaps: dict[_Key, list[_Entry]] = {}
        self._tickets = itertools.count(1)
        self._entries = 0
        self._stale = 0

    def file(self, run: _Run) -> None:
        """(Re-)file ``run`` after its ``wake_at`` or lease changed."""
        if run.filed:
            self._stale += 1
        at = ready_at(run)
        if at is None:
            run.filed = 0
            self._sweep_if_due()
            return
        run.filed = ticket = next(self._tickets)
        doc = run.doc
        key = (run.owner, (doc.workflow, doc.workflow_version))
        heapq.heappush(self._heaps.setdefault(key, []), (at, doc.created_at, doc.run_id, ticket))
        self._entries += 1
        self._sweep_if_due()

    def drop(self, run: _Run) -> None:
        """``run`` left the live table: its entry is stale from now on."""
        if run.filed:
            self._stale += 1
            run.filed = 0
            self._sweep_if_due()

    def _valid(self, entry: _Entry) -> _Run | None:
        run = self._runs.get(entry[2])
        return run if run is not None and run.filed == entry[3] else None

    def _pop(self, heap: list[_Entry]) -> None:
        heapq.heappop(heap)
        self._entries -= 1

    def _sweep_if_due(self) -> None:
        """Rebuild the heaps without their stale entries once those are the majority."""
        if self._stale < _SWEEP_AT or 2 * self._stale < self._entries:
            return
        for key, heap in list(self._heaps.items()):
            kept = [entry for entry in heap if self._valid(entry) is not None]
            if kept:
                heapq.heapify(kept)
                self._heaps[key] = kept
            else:
                del self._heaps[key]
        self._entries = sum(len(heap) for heap in self._heaps.values())
        self._stale = 0

    def _wanted(
        self, workflows: frozenset[WorkflowKey] | None
    ) -> Iterator[tuple[_Key, list[_Entry]]]:
        for key, heap in list(self._heaps.items()):
            if workflows is None or key[1] in workflows:
                yield key, heap

    def _top(self, key: _Key, heap: list[_Entry]) -> _Entry | None:
        """The heap's earliest valid entry, stale ones popped on the way."""
        while heap:
            entry = heap[0]
            if self._valid(entry) is not None:
                return entry
            self._pop(heap)
            self._stale -= 1
        del self._heaps[key]
        return None

    def take_due(
        self, now: datetime, workflows: frozenset[WorkflowKey] | None, limit: int
    ) -> list[_Run]:
        """Remove and return the runs claimable at ``now`` among which ``claim``
        chooses ``limit``: from each heap of runs nobody holds, its first ``limit``
        due ones (its order is the claim's); every due run whose lease lapsed.

        The caller claims some and must ``file`` every one of them again.
        """
        due: list[_Run] = []
        for key, heap in self._wanted(workflows):
            left = limit if key[0] is None else -1
            while left != 0 and (entry := self._top(key, heap)) is not None and entry[0] <= now:
                self._pop(heap)
                run = self._runs[entry[2]]
                run.filed = 0
                due.append(run)
                left -= 1
        return due

    def earliest(
        self, *, besides: str, workflows: frozenset[WorkflowKey] | None
    ) -> datetime | None:
        """The earliest ``ready_at`` of runs of ``workflows`` not held by ``besides``."""
        found: datetime | None = None
        for key, heap in self._wanted(workflows):
            if key[0] == besides:
                continue
            entry = self._top(key, heap)
            if entry is not None and (found is None or entry[0] < found):
                found = entry[0]
        return found
