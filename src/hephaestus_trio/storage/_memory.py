"""``MemoryStorage``: the default, non-durable backend, with leases emulated in memory.

Why it is a trustworthy fake: it passes the very conformance suite every
durable backend passes (``hephaestus_trio.testing.check_storage``), so code
tested against it meets the same leases, fencing, wakeup and uniqueness rules
it will meet on SQLite, only faster and without a file.

How it keeps the protocol's promises:

- Every method checkpoints first, then does all its checks and mutations with
  no ``await`` in between. Trio is cooperative, so each call is atomic: two
  concurrent claims of one run, or two creates of one unique key, can never
  interleave inside a method. A call cancelled at its checkpoint changed
  nothing.
- A run is a ``_Run`` row: the document (stored with ``timers=()``) plus the
  lease fields ``owner``, ``epoch`` and ``expires_at`` and ``wake_at``, the
  time it next needs a driver. Timers live only as ``TIMER`` wakeups; ``get``
  and ``query`` put them back into ``Instance.timers``.
- Time is whatever ``now`` the caller passes (normalised to UTC); the storage
  never reads a clock, so leases expire in the caller's time (virtual time
  under ``trio.testing.MockClock``).
- One object is one "database": there is no second object on the same data,
  so it is tested with a single object (``durable = False``). Closing keeps
  the data and opening again resumes with it.
- A run that ends is kept compactly, as its ``dumps`` text and the few
  columns queries filter on, in a plain tuple of strings, numbers and
  datetimes (``_Finished``), decoded again on ``get``/``query``. A
  long-running process accumulates finished runs, and kept as ``Instance``
  graphs (dozens of objects each) they made every full pass of the cyclic
  garbage collector walk all of them: a tuple of atoms is not tracked by the
  collector at all. Live runs stay objects, in their own table, so that
  claims and wake-ups scan only them.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import attrs
import trio

from .._errors import LeaseLost, StorageError
from ..core._instance import Instance, Status, TimerRecord
from ..core._serialization import dumps, loads
from ._advance import checked_advance, logger
from ._memory_index import ClaimIndex, ready_at
from ._protocol import (
    Advancer,
    ClaimedRun,
    EngineRecord,
    Lease,
    NewWakeup,
    RunSummary,
    UniqueViolation,
    WaitingRun,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
    WorkflowKey,
)
from ._query import (
    Filters,
    Page,
    matches,
    normalize_filters,
    normalize_now,
    normalize_page,
    on_page,
)

__all__ = ["MemoryStorage"]


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got naive {value!r}")
    return value if value.tzinfo is UTC else value.astimezone(UTC)


_Finished = tuple[
    str | Instance, str, str, int, str, str, str | None, datetime, datetime, tuple[str, ...] | None
]
"""A finished run: ``(document, status value, workflow, workflow_version, id, run_id,
unique_key, created_at, updated_at, dedup keys)``. The document is its ``dumps`` text, or
the ``Instance`` itself for the rare one ``dumps`` cannot write (a value that is not
JSON-safe, in an instance built by hand): it is given back as it was written."""

_DOC: Final = 0
_STATUS: Final = 1
_WORKFLOW: Final = 2
_VERSION: Final = 3
_ID: Final = 4
_RUN_ID: Final = 5
_UNIQUE_KEY: Final = 6
_CREATED_AT: Final = 7
_UPDATED_AT: Final = 8
_DEDUP_KEYS: Final = 9

_STATUS_BY_VALUE: Final = {status.value: status for status in Status}


def _finish(doc: Instance, dedup_keys: set[str] | None) -> _Finished:
    try:
        document: str | Instance = dumps(doc)
    except Exception:
        document = doc
    return (
        document,
        doc.status.value,
        doc.workflow,
        doc.workflow_version,
        doc.id,
        doc.run_id,
        doc.unique_key,
        doc.created_at,
        doc.updated_at,
        None if dedup_keys is None else tuple(sorted(dedup_keys)),
    )


def _thaw(record: _Finished) -> Instance:
    document = record[_DOC]
    return document if isinstance(document, Instance) else loads(document)


@attrs.define(kw_only=True)
class _Run:
    """One live run row: the document (without timers) and its lease columns."""

    doc: Instance
    owner: str | None = None
    epoch: int = 0
    expires_at: datetime | None = None
    wake_at: datetime | None = None
    wakeups: dict[int, Wakeup] = attrs.field(factory=dict)
    """Pending wakeups by seq; insertion order is seq order (seqs only grow)."""
    dedup_keys: set[str] | None = None
    """Every resume dedup key ever recorded for the run (until it is deleted); made
    on first use, since most runs never see one and a parked run should stay small."""
    filed: int = 0
    """The ticket of the run's entry in the claim index; 0 while it has none."""

    def held_by(self, lease: Lease) -> bool:
        return self.doc.status.is_live and self.owner == lease.owner and self.epoch == lease.epoch

    def lease(self) -> Lease:
        assert self.owner is not None
        assert self.expires_at is not None
        return Lease(
            run_id=self.doc.run_id, owner=self.owner, epoch=self.epoch, expires_at=self.expires_at
        )


class MemoryStorage:
    """In-process storage: fast, and gone when the process ends."""

    durable = False

    def __init__(self) -> None:
        self._state = "new"  # "new" -> "open" <-> "closed"
        self._runs: dict[str, _Run] = {}  # live runs only
        self._finished: dict[str, _Finished] = {}
        # id -> run_id, or the set of them when several runs share the id: the facade
        # looks runs up by business id on every call (a set per id would be one more
        # object per finished run for the garbage collector).
        self._by_id: dict[str, str | set[str]] = {}
        self._holders: dict[str, str] = {}  # live unique_key -> run_id
        # The runs needing a driver, by when; and each engine's runs: claims and
        # pokes look at these, never at the (mostly hibernated) rest.
        self._claimable = ClaimIndex(self._runs)
        self._held: dict[str, dict[str, _Run]] = {}
        self._seq = itertools.count(1)
        # engine_id -> [started_at, info, last_heartbeat]
        self._engines: dict[str, list[Any]] = {}
        self._changes = 0
        self._changed = trio.Event()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def __aenter__(self) -> MemoryStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        await trio.lowlevel.checkpoint()
        self._state = "open"

    async def close(self) -> None:
        await trio.lowlevel.checkpoint()
        if self._state == "open":
            self._state = "closed"
            # Waiters in wait_for_change wake up and find the storage closed.
            self._changed.set()
            self._changed = trio.Event()

    def _check_open(self) -> None:
        if self._state == "open":
            return
        if self._state == "closed":
            raise StorageError(f"{self!r} is closed")
        raise StorageError(
            f"{self!r} is not open: use 'async with storage:' or 'await storage.open()' first"
        )

    async def _enter(self) -> None:
        await trio.lowlevel.checkpoint()
        self._check_open()

    def _bump(self) -> None:
        self._changes += 1
        self._changed.set()
        self._changed = trio.Event()

    def _hold(self, run: _Run, owner: str | None, expires_at: datetime | None) -> None:
        """Set the run's holder (``None``: nobody), keeping ``_held`` in step."""
        run_id = run.doc.run_id
        if run.owner is not None and run.owner != owner:
            held = self._held[run.owner]
            del held[run_id]
            if not held:
                del self._held[run.owner]
        if owner is not None:
            self._held.setdefault(owner, {})[run_id] = run
        run.owner, run.expires_at = owner, expires_at

    def _retire(self, run: _Run) -> None:
        """``run`` leaves the live table (finished or deleted)."""
        self._hold(run, None, None)
        self._claimable.drop(run)

    # -- runs --------------------------------------------------------------------

    def _read(self, run: _Run) -> Instance:
        timers = tuple(w.timer_record() for w in run.wakeups.values() if w.kind is WakeupKind.TIMER)
        if not timers:
            return run.doc
        return attrs.evolve(run.doc, timers=timers)

    async def get(self, run_id: str) -> Instance | None:
        await self._enter()
        run = self._runs.get(run_id)
        if run is not None:
            return self._read(run)
        record = self._finished.get(run_id)
        return None if record is None else _thaw(record)

    def _index(self, id: str, run_id: str) -> None:
        runs = self._by_id.get(id)
        if runs is None:
            self._by_id[id] = run_id
        elif isinstance(runs, str):
            self._by_id[id] = {runs, run_id}
        else:
            runs.add(run_id)

    def _unindex(self, id: str, run_id: str) -> None:
        runs = self._by_id.get(id)
        if runs == run_id:
            del self._by_id[id]
        elif isinstance(runs, set):
            runs.discard(run_id)
            if len(runs) == 1:
                self._by_id[id] = next(iter(runs))

    def _ids(self, id: str) -> Collection[str]:
        runs = self._by_id.get(id, ())
        return (runs,) if isinstance(runs, str) else runs

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
        created_after: datetime | None = None,
        limit: int | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[Instance]:
        await self._enter()
        filters = normalize_filters(status, status_in, workflow, workflow_version, id)
        page = normalize_page(created_after, limit, after)
        if id is not None:
            wanted = self._ids(id)
            live = [self._runs[r] for r in wanted if r in self._runs]
            finished = [self._finished[r] for r in wanted if r in self._finished]
        else:
            live, finished = list(self._runs.values()), list(self._finished.values())
        found: list[tuple[datetime, str, _Run | _Finished]] = [
            (run.doc.created_at, run.doc.run_id, run)
            for run in live
            if matches(run.doc, filters) and on_page(run.doc, page)
        ]
        found.extend(
            (record[_CREATED_AT], record[_RUN_ID], record)
            for record in finished
            if self._finished_matches(record, filters, page)
        )
        found.sort(key=lambda row: (row[0], row[1]))
        if page.limit is not None:
            del found[page.limit :]
        return [self._read(row) if isinstance(row, _Run) else _thaw(row) for _, _, row in found]

    @staticmethod
    def _finished_matches(record: _Finished, filters: Filters, page: Page) -> bool:
        """``matches`` and ``on_page`` on a finished run's columns."""
        statuses = filters.statuses
        if statuses is not None and _STATUS_BY_VALUE[record[_STATUS]] not in statuses:
            return False
        if filters.workflow is not None and record[_WORKFLOW] != filters.workflow:
            return False
        if filters.workflow_version is not None and record[_VERSION] != filters.workflow_version:
            return False
        if filters.id is not None and record[_ID] != filters.id:
            return False
        created_at = record[_CREATED_AT]
        if page.created_after is not None and created_at < page.created_after:
            return False
        return page.after is None or (created_at, record[_RUN_ID]) > page.after

    async def summary(self, *, now: datetime) -> RunSummary:
        await self._enter()
        now = normalize_now(now)
        counts: dict[tuple[str, Status], int] = {}
        oldest: Instance | None = None
        due = 0
        oldest_due: datetime | None = None
        upcoming: datetime | None = None
        for record in self._finished.values():
            key = (record[_WORKFLOW], _STATUS_BY_VALUE[record[_STATUS]])
            counts[key] = counts.get(key, 0) + 1
        for run in self._runs.values():
            doc = run.doc
            key = (doc.workflow, doc.status)
            counts[key] = counts.get(key, 0) + 1
            if doc.status is Status.WAITING and (
                oldest is None or (doc.created_at, doc.run_id) < (oldest.created_at, oldest.run_id)
            ):
                oldest = doc
            for wakeup in run.wakeups.values():
                if wakeup.kind is not WakeupKind.TIMER:
                    continue
                at = wakeup.due_at
                if at <= now:
                    due += 1
                    oldest_due = at if oldest_due is None else min(oldest_due, at)
                else:
                    upcoming = at if upcoming is None else min(upcoming, at)
        return RunSummary(
            counts=counts,
            oldest_waiting=None
            if oldest is None
            else WaitingRun(
                run_id=oldest.run_id,
                id=oldest.id,
                workflow=oldest.workflow,
                created_at=oldest.created_at,
                updated_at=oldest.updated_at,
            ),
            due_timers=due,
            oldest_due_timer_at=oldest_due,
            next_timer_at=upcoming,
        )

    def _new_wakeup(
        self,
        run: _Run,
        *,
        kind: WakeupKind,
        step: str | None,
        event: str | None,
        payload: Mapping[str, Any] | None,
        dedup_key: str | None,
        due_at: datetime,
        now: datetime,
        trace_context: Mapping[str, str] | None = None,
    ) -> Wakeup:
        wakeup = Wakeup(
            seq=next(self._seq),
            run_id=run.doc.run_id,
            kind=kind,
            step=step,
            event=event,
            payload=payload,
            dedup_key=dedup_key,
            due_at=due_at,
            created_at=now,
            trace_context=None if trace_context is None else dict(trace_context),
        )
        run.wakeups[wakeup.seq] = wakeup
        return wakeup

    def _add_timers(self, run: _Run, timers: Iterable[TimerRecord], now: datetime) -> list[Wakeup]:
        return [
            self._new_wakeup(
                run,
                kind=WakeupKind.TIMER,
                step=t.step,
                event=t.event,
                payload=None,
                dedup_key=None,
                due_at=t.fire_at,
                now=now,
            )
            for t in timers
        ]

    async def create(
        self, instance: Instance, *, now: datetime, owner: str | None = None, ttl: float = 30.0
    ) -> Lease | None:
        await self._enter()
        now = _utc(now, "now")
        run_id = instance.run_id
        if not instance.status.is_live:
            raise ValueError(
                f"run {run_id!r}: create takes a live run, got status {instance.status.value!r}"
            )
        if run_id in self._runs or run_id in self._finished:
            raise ValueError(f"run {run_id!r} exists already")
        key = instance.unique_key
        if key is not None:
            holder = self._holders.get(key)
            if holder is not None:
                raise UniqueViolation(key, holder, self._runs[holder].doc.id)
            self._holders[key] = run_id
        run = _Run(doc=attrs.evolve(instance, timers=()) if instance.timers else instance)
        run.wake_at = now
        if owner is not None:
            run.epoch = 1
            self._hold(run, owner, now + timedelta(seconds=ttl))
        self._runs[run_id] = run
        self._claimable.file(run)
        self._index(instance.id, run_id)
        self._add_timers(run, instance.timers, now)
        if owner is None:
            self._bump()
            return None
        return run.lease()

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        await self._enter()
        now = _utc(now, "now")
        run_id = lease.run_id
        if instance.run_id != run_id:
            raise ValueError(f"lease of run {run_id!r} cannot write run {instance.run_id!r}")
        run = self._runs.get(run_id)
        if run is None or not run.held_by(lease):
            raise LeaseLost(run_id, lease.owner, lease.epoch)
        if (instance.id, instance.workflow, instance.workflow_version) != (
            run.doc.id,
            run.doc.workflow,
            run.doc.workflow_version,
        ):
            raise ValueError(
                f"run {run_id!r}: its id, workflow and version are fixed at create; "
                "a write cannot change them"
            )
        if instance.unique_key != run.doc.unique_key:
            raise ValueError(
                f"run {run_id!r}: unique_key is fixed at create "
                f"({run.doc.unique_key!r}), cannot become {instance.unique_key!r}"
            )
        for seq in consume:
            if seq not in run.wakeups:
                raise WakeupGone(run_id, seq)
        # Checks done: from here on everything happens, with no await.
        if instance.id != run.doc.id:
            self._unindex(run.doc.id, run_id)
            self._index(instance.id, run_id)
        run.doc = attrs.evolve(instance, timers=()) if instance.timers else instance
        for seq in consume:
            run.wakeups.pop(seq, None)
        if instance.status.is_terminal:
            # The run will never change again: from now on it is a compact record.
            del self._runs[run_id]
            self._retire(run)
            self._finished[run_id] = _finish(run.doc, run.dedup_keys)
            key = instance.unique_key
            if key is not None and self._holders.get(key) == run_id:
                del self._holders[key]
            return []
        waiting = instance.waiting_steps
        for seq in [
            s
            for s, w in run.wakeups.items()
            if w.kind is WakeupKind.TIMER and w.step not in waiting
        ]:
            del run.wakeups[seq]
        # wake_at keeps the claim's value: once the lease lapses the run is
        # claimable, whatever its owner last wrote.
        return self._add_timers(run, add_timers, now)

    def _forget(self, run_id: str) -> None:
        record = self._finished.pop(run_id, None)
        if record is not None:
            self._unindex(record[_ID], run_id)
            return
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        self._retire(run)
        doc = run.doc
        self._unindex(doc.id, run_id)
        if doc.unique_key is not None and self._holders.get(doc.unique_key) == run_id:
            del self._holders[doc.unique_key]

    async def delete(self, run_id: str) -> None:
        await self._enter()
        self._forget(run_id)

    async def purge(self, older_than: datetime) -> int:
        await self._enter()
        older_than = _utc(older_than, "older_than")
        doomed = [
            run_id for run_id, record in self._finished.items() if record[_UPDATED_AT] < older_than
        ]
        for run_id in doomed:
            self._forget(run_id)
        return len(doomed)

    # -- leases ------------------------------------------------------------------

    @staticmethod
    def _of(run: _Run, workflows: frozenset[WorkflowKey] | None) -> bool:
        return workflows is None or (run.doc.workflow, run.doc.workflow_version) in workflows

    async def claim(
        self,
        owner: str,
        *,
        now: datetime,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        limit: int,
        run_ids: Collection[str] | None = None,
    ) -> list[Lease]:
        await self._enter()
        now = _utc(now, "now")
        wanted = None if workflows is None else frozenset(workflows)
        return self._claim(owner, now, ttl, wanted, limit, run_ids)

    def _claim(
        self,
        owner: str,
        now: datetime,
        ttl: float,
        wanted: frozenset[WorkflowKey] | None,
        limit: int,
        run_ids: Collection[str] | None,
    ) -> list[Lease]:
        if run_ids is None:
            # Taken out of the index: every one is filed again below.
            candidates = self._claimable.take_due(now, wanted, max(limit, 0))
        else:
            pool = [self._runs[r] for r in set(run_ids) if r in self._runs]
            candidates = [
                run
                for run in pool
                if (ready := ready_at(run)) is not None and ready <= now and self._of(run, wanted)
            ]
        candidates.sort(key=lambda run: (run.wake_at, run.doc.created_at, run.doc.run_id))
        expires_at = now + timedelta(seconds=ttl)
        leases = []
        taken = max(limit, 0)
        for run in candidates[:taken]:
            run.epoch += 1
            self._hold(run, owner, expires_at)
            leases.append(run.lease())
        for run in candidates:
            self._claimable.file(run)
        return leases

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        await self._enter()
        now = _utc(now, "now")
        expires_at = now + timedelta(seconds=ttl)
        if owner in self._engines:
            self._engines[owner][2] = now
        renewed = []
        for lease in leases:
            run = self._runs.get(lease.run_id)
            if lease.owner == owner and run is not None and run.held_by(lease):
                run.expires_at = expires_at
                self._claimable.file(run)
                renewed.append(run.lease())
        return renewed

    async def release(
        self, lease: Lease, *, now: datetime, wake_at: datetime | None, seen: int
    ) -> bool:
        await self._enter()
        now = _utc(now, "now")
        wake = None if wake_at is None else _utc(wake_at, "wake_at")
        run = self._runs.get(lease.run_id)
        if run is None or not run.held_by(lease):
            raise LeaseLost(lease.run_id, lease.owner, lease.epoch)
        self._hold(run, None, None)
        missed = any(seq > seen for seq in run.wakeups)
        run.wake_at = now if missed else wake
        self._claimable.file(run)
        self._bump()
        return missed

    async def release_all(self, owner: str, *, now: datetime) -> int:
        await self._enter()
        now = _utc(now, "now")
        count = 0
        for run in list(self._held.get(owner, {}).values()):
            self._hold(run, None, None)
            run.wake_at = now
            self._claimable.file(run)
            count += 1
        self._bump()
        return count

    async def next_wake(
        self, owner: str, *, workflows: Collection[WorkflowKey] | None
    ) -> datetime | None:
        await self._enter()
        wanted = None if workflows is None else frozenset(workflows)
        return self._claimable.earliest(besides=owner, workflows=wanted)

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        await self._enter()
        now = _utc(now, "now")
        self._engines[engine_id] = [now, dict(info), now]

    async def unregister_engine(self, engine_id: str) -> None:
        await self._enter()
        self._engines.pop(engine_id, None)

    async def engines(self, *, now: datetime) -> list[EngineRecord]:
        await self._enter()
        _utc(now, "now")
        owned = {holder: len(runs) for holder, runs in self._held.items()}
        records = []
        for engine_id, (started_at, info, beat) in sorted(self._engines.items()):
            host, pid = info.get("host"), info.get("pid")
            records.append(
                EngineRecord(
                    engine_id=engine_id,
                    host=host if isinstance(host, str) else None,
                    pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
                    started_at=started_at,
                    last_heartbeat=beat,
                    runs_owned=owned.get(engine_id, 0),
                )
            )
        return records

    async def reap_engines(self, *, now: datetime) -> list[str]:
        # In one process there is no proof of another engine's death: leases expire.
        await self._enter()
        return []

    # -- wakeups -----------------------------------------------------------------

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        await self._enter()
        now = _utc(now, "now")
        due_at = _utc(wakeup.due_at, "due_at")
        run_id = wakeup.run_id
        run = self._runs.get(run_id)
        if run is None:
            record = self._finished.get(run_id)
            raise WakeupRefused(
                run_id, "not_live", "missing" if record is None else record[_STATUS]
            )
        pending = run.wakeups.values()
        if wakeup.kind is WakeupKind.RESUME:
            if wakeup.dedup_key is not None and wakeup.dedup_key in (run.dedup_keys or ()):
                return None
            resumes = [w for w in pending if w.kind is WakeupKind.RESUME]
            if any(w.step == wakeup.step for w in resumes):
                raise WakeupRefused(run_id, "step_pending")
            if max_pending is not None and len(resumes) >= max_pending:
                raise WakeupRefused(run_id, "full")
            if wakeup.dedup_key is not None:
                if run.dedup_keys is None:
                    run.dedup_keys = set()
                run.dedup_keys.add(wakeup.dedup_key)
        elif wakeup.kind is WakeupKind.CANCEL:
            if any(w.kind is WakeupKind.CANCEL for w in pending):
                return None
        added = self._new_wakeup(
            run,
            kind=wakeup.kind,
            step=wakeup.step,
            event=wakeup.event,
            payload=wakeup.payload,
            dedup_key=wakeup.dedup_key,
            due_at=due_at,
            now=now,
            trace_context=wakeup.trace_context,
        )
        if run.wake_at is None or due_at < run.wake_at:
            run.wake_at = due_at
            self._claimable.file(run)
        self._bump()
        return added

    async def add_wakeup_and_claim(
        self,
        wakeup: NewWakeup,
        *,
        now: datetime,
        max_pending: int | None = None,
        owner: str,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        advance: Advancer | None = None,
    ) -> tuple[Wakeup | None, ClaimedRun | None]:
        # Through ``add_wakeup``, so that a subclass wrapping it (a test's
        # injected fault) sees every wakeup. Its last schedule point is at its
        # start: nothing else runs between the record and the claim below.
        added = await self.add_wakeup(wakeup, now=now, max_pending=max_pending)
        if added is None:
            return None, None
        now = _utc(now, "now")
        wanted = None if workflows is None else frozenset(workflows)
        leases = self._claim(owner, now, ttl, wanted, 1, (wakeup.run_id,))
        if not leases:
            return added, None
        lease, run = leases[0], self._runs[wakeup.run_id]
        claimed = ClaimedRun(
            lease=lease, instance=self._read(run), wakeups=tuple(run.wakeups.values())
        )
        moved = None if advance is None else checked_advance(advance, claimed, added)
        if moved is None:
            return added, claimed
        # Through ``write`` too, for the same reason. Nobody else can write
        # under the lease just granted, so the schedule point at its start
        # changes nothing: readers may see the claim a moment before the state.
        try:
            await self.write(
                lease, moved.instance, now=now, consume=[added.seq], add_timers=moved.timers
            )
        except Exception:
            logger.exception(
                "run %s: writing wakeup %d applied in its claim failed; its driver applies it",
                wakeup.run_id,
                added.seq,
            )
            return added, claimed
        run = self._runs[wakeup.run_id]
        return added, ClaimedRun(
            lease=lease,
            instance=self._read(run),
            wakeups=tuple(run.wakeups.values()),
            applied=added,
        )

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        await self._enter()
        run = self._runs.get(run_id)
        if run is not None:
            return dedup_key in (run.dedup_keys or ())
        record = self._finished.get(run_id)
        return record is not None and dedup_key in (record[_DEDUP_KEYS] or ())

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        await self._enter()
        run = self._runs.get(run_id)
        return [] if run is None else list(run.wakeups.values())

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        await self._enter()
        run = self._runs.get(run_id)
        if run is None:
            return False
        wakeup = run.wakeups.get(seq)
        if wakeup is None or wakeup.kind is not WakeupKind.TIMER:
            return False
        del run.wakeups[seq]
        return True

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        await self._enter()
        found = []
        for run_id, run in self._held.get(owner, {}).items():
            if run.wakeups:
                top = next(reversed(run.wakeups))  # seq order: the last is the highest
                if top > after:
                    found.append((run_id, top))
        found.sort()
        return found

    async def wait_for_change(self, seen: int) -> int:
        await self._enter()
        while self._changes == seen:
            await self._changed.wait()
            self._check_open()
        return self._changes
