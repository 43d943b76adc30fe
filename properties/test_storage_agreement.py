"""Differential test: every durable backend agrees with ``MemoryStorage``.

Hypothesis draws a script of storage operations on the lease protocol
(attrs ``Op`` values, so a shrunk failure prints as a readable script):
creates with and without an owner, fenced writes under current, stale and
forged leases (consuming wakeups, adding timers), claims, renewals and
releases at moving times, wakeups of every kind with dedup keys and
``max_pending``, timer cancels, deletes, purges and reads. Each operation is
applied to the reference ``MemoryStorage`` and to SQLite; the results (or the
exceptions, with their fields) must be equal, and so must the observable
state after every operation: ``query()``, every run's wakeups, and which runs
a fresh claimer could take.

Leases and wakeup seqs are backend values: each backend keeps its own list of
the leases it handed out and of the seqs it assigned, and ops name them by
position, so the same script means the same thing on both. Seqs are compared
by their position in that list (a backend may number differently, as long as
the order agrees).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import given
from hypothesis import strategies as st

from hephaestus_trio import Instance, LeaseLost, MemoryStorage, SQLiteStorage, Status, Storage
from hephaestus_trio.core._instance import TimerRecord
from hephaestus_trio.storage import (
    Advance,
    ClaimedRun,
    Lease,
    NewWakeup,
    UniqueViolation,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_IDS = ("r1", "r2")
IDS = ("k::a", "k::b")
KEYS = (None, "workflow::k::a", "global::k::a")
WORKFLOWS = ("tests.A", "tests.B")
OWNERS = ("e1", "e2")
STEPS = ("a", "b")
TTLS = (30.0, 90.0, 300.0)
DEDUP = (None, "d1", "d2")


# -- operations -------------------------------------------------------------------------


@attrs.frozen
class Tick:
    """Move the shared clock on (every op takes ``now`` from it)."""

    seconds: int


@attrs.frozen
class Create:
    run_id: str
    id: str
    workflow: str
    unique_key: str | None
    owner: str | None
    ttl: float
    timers: tuple[tuple[str, int], ...] = ()
    """(step, seconds from now): timers in the created document."""
    waiting: tuple[str, ...] = ()


@attrs.frozen
class Write:
    lease: int
    """Which of the leases handed out so far, newest first (modulo their count)."""
    forge: str
    """``""`` (as handed out), ``"epoch"`` (one epoch older), ``"owner"`` (someone else)."""
    status: Status
    waiting: tuple[str, ...]
    consume: tuple[int, ...] = ()
    """Which of the seqs seen so far (modulo their count)."""
    add_timers: tuple[tuple[str, int], ...] = ()


@attrs.frozen
class Claim:
    owner: str
    ttl: float
    workflows: tuple[str, ...] | None
    limit: int
    run_ids: tuple[str, ...] | None


@attrs.frozen
class Renew:
    owner: str
    leases: tuple[int, ...]
    ttl: float


@attrs.frozen
class Release:
    lease: int
    wake_in: int | None
    """Seconds from now of ``wake_at``, or ``None``."""
    seen: int | None
    """Which seen seq (modulo their count) is ``seen``; ``None``: 0."""


@attrs.frozen
class ReleaseAll:
    owner: str


@attrs.frozen
class AddWakeup:
    run_id: str
    kind: WakeupKind
    step: str
    dedup_key: str | None
    due_in: int
    max_pending: int | None


@attrs.frozen
class AddWakeupAndClaim(AddWakeup):
    """``add_wakeup_and_claim``: the wakeup as ``AddWakeup``, claimed for ``owner``."""

    owner: str
    ttl: float
    workflows: tuple[str, ...] | None
    advance: str = "none"
    """``none``; ``park`` (waiting on the other step, with a timer); ``decline``;
    ``fail`` (raises); ``end`` (a terminal state: refused)."""


def _advancer(how: str, step: str) -> Any:
    """The same advancer for both backends: what to make of the claimed run."""
    if how == "none":
        return None

    def advance(claimed: ClaimedRun, recorded: Wakeup) -> Advance | None:
        if how == "decline":
            return None
        if how == "fail":
            raise RuntimeError("an advancer that fails")
        other = "b" if step == "a" else "a"
        new = attrs.evolve(
            claimed.instance,
            status=Status.COMPLETED if how == "end" else Status.WAITING,
            active_steps=frozenset({other}),
            waiting_steps=frozenset({other}),
            updated_at=recorded.created_at,
            timers=(),
        )
        timer = TimerRecord(step=other, event="timeout", fire_at=recorded.created_at)
        return Advance(instance=new, timers=(timer,))

    return advance


@attrs.frozen
class CancelTimer:
    run_id: str
    seq: int


@attrs.frozen
class Delete:
    run_id: str


@attrs.frozen
class Purge:
    seconds_ago: int


@attrs.frozen
class Get:
    run_id: str


@attrs.frozen
class Query:
    status: Status | None
    workflow: str | None
    id: str | None


@attrs.frozen
class NextWake:
    owner: str


@attrs.frozen
class SeenDedup:
    run_id: str
    dedup_key: str


@attrs.frozen
class OwnedWakeups:
    owner: str
    after: int | None


_steps = st.lists(st.sampled_from(STEPS), max_size=2, unique=True).map(tuple)
_timers = st.lists(st.tuples(st.sampled_from(STEPS), st.integers(0, 120)), max_size=2).map(tuple)
_runs = st.sampled_from(RUN_IDS)

_create = st.builds(
    Create,
    run_id=_runs,
    id=st.sampled_from(IDS),
    workflow=st.sampled_from(WORKFLOWS),
    unique_key=st.sampled_from(KEYS),
    owner=st.sampled_from([None, *OWNERS, OWNERS[0]]),
    ttl=st.sampled_from(TTLS),
    timers=_timers,
    waiting=_steps,
)
_write = st.builds(
    Write,
    lease=st.sampled_from([0, 0, 0, 1, 2, 5]),
    forge=st.sampled_from(["", "", "epoch", "owner"]),
    status=st.sampled_from([Status.RUNNING, Status.WAITING, Status.WAITING, *Status]),
    waiting=_steps,
    consume=st.lists(st.integers(0, 7), max_size=2).map(tuple),
    add_timers=_timers,
)
_claim = st.builds(
    Claim,
    owner=st.sampled_from(OWNERS),
    ttl=st.sampled_from(TTLS),
    workflows=st.none() | st.lists(st.sampled_from(WORKFLOWS), unique=True).map(tuple),
    limit=st.integers(0, 3),
    run_ids=st.none() | st.lists(_runs, max_size=2).map(tuple),
)
_wakeup_fields = {
    "run_id": _runs,
    "kind": st.sampled_from(WakeupKind),
    "step": st.sampled_from(STEPS),
    "dedup_key": st.sampled_from(DEDUP),
    "due_in": st.sampled_from([0, 0, 30, 120]),
    "max_pending": st.none() | st.integers(0, 2),
}
_add_wakeup = st.builds(AddWakeup, **_wakeup_fields)
_add_wakeup_and_claim = st.builds(
    AddWakeupAndClaim,
    **_wakeup_fields,
    owner=st.sampled_from(OWNERS),
    ttl=st.sampled_from(TTLS),
    workflows=st.none() | st.lists(st.sampled_from(WORKFLOWS), unique=True).map(tuple),
    advance=st.sampled_from(["none", "park", "park", "decline", "fail", "end"]),
)

# The ops that build state are drawn more often than the ones that read or destroy it.
ops = st.one_of(
    _create,
    _create,
    _write,
    _write,
    _write,
    _claim,
    _claim,
    _add_wakeup,
    _add_wakeup,
    _add_wakeup,
    _add_wakeup_and_claim,
    _add_wakeup_and_claim,
    st.builds(Tick, seconds=st.sampled_from([1, 20, 60, 200])),
    st.builds(
        Renew,
        owner=st.sampled_from(OWNERS),
        leases=st.lists(st.integers(0, 7), max_size=3).map(tuple),
        ttl=st.sampled_from(TTLS),
    ),
    st.builds(
        Release,
        lease=st.sampled_from([0, 0, 0, 1, 2, 5]),
        wake_in=st.none() | st.integers(0, 120),
        seen=st.none() | st.integers(0, 7),
    ),
    st.builds(ReleaseAll, owner=st.sampled_from(OWNERS)),
    st.builds(CancelTimer, run_id=_runs, seq=st.integers(0, 7)),
    st.builds(Delete, run_id=_runs),
    st.builds(Purge, seconds_ago=st.sampled_from([0, 60, 600])),
    st.builds(Get, run_id=_runs),
    st.builds(
        Query,
        status=st.none() | st.sampled_from(Status),
        workflow=st.none() | st.sampled_from(WORKFLOWS),
        id=st.none() | st.sampled_from(IDS),
    ),
    st.builds(NextWake, owner=st.sampled_from(OWNERS)),
    st.builds(SeenDedup, run_id=_runs, dedup_key=st.sampled_from(["d1", "d2"])),
    st.builds(OwnedWakeups, owner=st.sampled_from(OWNERS), after=st.none() | st.integers(0, 7)),
)


# -- applying a script to one backend ---------------------------------------------------


class Backend:
    """One storage and what it handed out: leases and wakeup seqs, by position."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.leases: list[Lease] = []
        self.seqs: list[int] = []

    def seq_at(self, index: int) -> int:
        return self.seqs[index % len(self.seqs)] if self.seqs else 10_000 + index

    def norm(self, seq: int) -> object:
        """A seq as comparable across backends: its position among those seen."""
        return self.seqs.index(seq) if seq in self.seqs else ("unseen", seq)

    def note(self, wakeups: Sequence[Wakeup]) -> None:
        for w in sorted(wakeups, key=lambda w: w.seq):
            if w.seq not in self.seqs:
                self.seqs.append(w.seq)

    def lease_at(self, index: int, forge: str = "") -> Lease | None:
        if not self.leases:
            return None
        lease = self.leases[-1 - index % len(self.leases)]
        if forge == "epoch":
            return attrs.evolve(lease, epoch=lease.epoch - 1)
        if forge == "owner":
            return attrs.evolve(lease, owner="intruder")
        return lease

    def wakeup(self, w: Wakeup) -> tuple[object, ...]:
        return (
            self.norm(w.seq),
            w.run_id,
            w.kind,
            w.step,
            w.event,
            dict(w.payload) if w.payload is not None else None,
            w.dedup_key,
            w.due_at,
            w.created_at,
        )


def _doc(op: Create, now: datetime) -> Instance:
    base = Instance.new(
        op.workflow, {"n": 1}, id=op.id, run_id=op.run_id, now=now, unique_key=op.unique_key
    )
    timers = tuple(
        TimerRecord(step=step, event="timeout", fire_at=now + timedelta(seconds=s))
        for step, s in op.timers
    )
    if not op.waiting:
        return attrs.evolve(base, timers=timers)
    return attrs.evolve(
        base,
        status=Status.WAITING,
        active_steps=frozenset(op.waiting),
        waiting_steps=frozenset(op.waiting),
        timers=timers,
    )


def _error(exc: Exception, b: Backend) -> tuple[object, ...]:
    if isinstance(exc, LeaseLost):
        return ("LeaseLost", exc.run_id, exc.owner, exc.epoch)
    if isinstance(exc, WakeupGone):
        return ("WakeupGone", exc.run_id, b.norm(exc.seq))
    if isinstance(exc, WakeupRefused):
        return ("WakeupRefused", exc.run_id, exc.reason, exc.status)
    if isinstance(exc, UniqueViolation):
        return ("UniqueViolation", exc.unique_key, exc.existing_run_id, exc.existing_id)
    if isinstance(exc, ValueError):
        return ("ValueError",)
    raise exc


async def _apply(b: Backend, op: Any, now: datetime) -> object:
    """Run one op; return a comparable outcome (values, or the error's fields)."""
    s = b.storage
    try:
        if isinstance(op, Create):
            lease = await s.create(_doc(op, now), now=now, owner=op.owner, ttl=op.ttl)
            if lease is not None:
                b.leases.append(lease)
            b.note(await s.wakeups(op.run_id))
            return lease
        if isinstance(op, Write):
            lease = b.lease_at(op.lease, op.forge)
            if lease is None:
                return "no lease"
            stored = await s.get(lease.run_id)
            if stored is None:
                stored = Instance.new("tests.A", id="k::a", run_id=lease.run_id, now=now)
            new = attrs.evolve(
                stored,
                status=op.status,
                active_steps=frozenset(op.waiting) | {"running"},
                waiting_steps=frozenset(op.waiting),
                updated_at=now,
            )
            added = await s.write(
                lease,
                new,
                now=now,
                consume=[b.seq_at(i) for i in op.consume],
                add_timers=[
                    TimerRecord(step=step, event="timeout", fire_at=now + timedelta(seconds=sec))
                    for step, sec in op.add_timers
                ],
            )
            b.note(added)
            return [b.wakeup(w) for w in added]
        if isinstance(op, Claim):
            leases = await s.claim(
                op.owner,
                now=now,
                ttl=op.ttl,
                workflows=None if op.workflows is None else [(w, 1) for w in op.workflows],
                limit=op.limit,
                run_ids=op.run_ids,
            )
            b.leases.extend(sorted(leases, key=lambda lease: lease.run_id))
            return sorted(leases, key=lambda lease: lease.run_id)
        if isinstance(op, Renew):
            chosen = [b.lease_at(i) for i in op.leases]
            renewed = await s.renew(
                op.owner, [c for c in chosen if c is not None], now=now, ttl=op.ttl
            )
            b.leases.extend(sorted(renewed, key=lambda lease: lease.run_id))
            return sorted(renewed, key=lambda lease: lease.run_id)
        if isinstance(op, Release):
            lease = b.lease_at(op.lease)
            if lease is None:
                return "no lease"
            wake = None if op.wake_in is None else now + timedelta(seconds=op.wake_in)
            seen = 0 if op.seen is None or not b.seqs else b.seq_at(op.seen)
            return await s.release(lease, now=now, wake_at=wake, seen=seen)
        if isinstance(op, ReleaseAll):
            return await s.release_all(op.owner, now=now)
        if isinstance(op, AddWakeup):
            step = None if op.kind is WakeupKind.CANCEL else op.step
            event = {WakeupKind.RESUME: "go", WakeupKind.TIMER: "timeout"}.get(op.kind)
            wakeup = NewWakeup(
                run_id=op.run_id,
                kind=op.kind,
                step=step,
                event=event,
                payload={"step": op.step} if op.kind is WakeupKind.RESUME else None,
                dedup_key=op.dedup_key if op.kind is WakeupKind.RESUME else None,
                due_at=now + timedelta(seconds=op.due_in if op.kind is WakeupKind.TIMER else 0),
            )
            if isinstance(op, AddWakeupAndClaim):
                added, claimed = await s.add_wakeup_and_claim(
                    wakeup,
                    now=now,
                    max_pending=op.max_pending,
                    owner=op.owner,
                    ttl=op.ttl,
                    workflows=None if op.workflows is None else [(w, 1) for w in op.workflows],
                    advance=_advancer(op.advance, op.step),
                )
                if added is not None:
                    b.note([added])
                if claimed is None:
                    return None if added is None else (b.wakeup(added), None)
                assert added is not None, "claimed without recording"
                b.leases.append(claimed.lease)
                b.note(claimed.wakeups)
                return (
                    b.wakeup(added),
                    claimed.lease,
                    claimed.instance,
                    [b.wakeup(w) for w in claimed.wakeups],
                    None if claimed.applied is None else b.wakeup(claimed.applied),
                )
            added = await s.add_wakeup(wakeup, now=now, max_pending=op.max_pending)
            if added is None:
                return None
            b.note([added])
            return b.wakeup(added)
        if isinstance(op, CancelTimer):
            return await s.cancel_timer(op.run_id, b.seq_at(op.seq))
        if isinstance(op, Delete):
            await s.delete(op.run_id)
            return None
        if isinstance(op, Purge):
            return await s.purge(now - timedelta(seconds=op.seconds_ago))
        if isinstance(op, Get):
            return await s.get(op.run_id)
        if isinstance(op, Query):
            return await s.query(status=op.status, workflow=op.workflow, id=op.id)
        if isinstance(op, NextWake):
            return await s.next_wake(op.owner, workflows=None)
        if isinstance(op, SeenDedup):
            return await s.seen_dedup_key(op.run_id, op.dedup_key)
        assert isinstance(op, OwnedWakeups)
        after = 0 if op.after is None or not b.seqs else b.seq_at(op.after)
        found = await s.owned_wakeups(op.owner, after=after)
        return [(run_id, b.norm(seq)) for run_id, seq in found]
    except (LeaseLost, WakeupGone, WakeupRefused, UniqueViolation, ValueError) as exc:
        return _error(exc, b)


async def _visible(b: Backend, now: datetime) -> tuple[object, ...]:
    """What any reader sees: every run, every run's wakeups, and who needs a driver now."""
    runs = await b.storage.query()
    wakeups = {}
    for run_id in RUN_IDS:
        rows = await b.storage.wakeups(run_id)
        b.note(rows)
        wakeups[run_id] = [b.wakeup(w) for w in rows]
    wakes = {owner: await b.storage.next_wake(owner, workflows=None) for owner in OWNERS}
    return (runs, wakeups, wakes)


@given(script=st.lists(ops, min_size=8, max_size=40))
def test_sqlite_agrees_with_memory(script: list[Any]) -> None:
    """After every operation both backends return the same thing and hold the same state."""

    async def main(folder: Path) -> None:
        async with MemoryStorage() as memory, SQLiteStorage(folder / "agree.db") as sqlite:
            ref, other = Backend(memory), Backend(sqlite)
            now = T0
            for step, op in enumerate(script):
                if isinstance(op, Tick):
                    now += timedelta(seconds=op.seconds)
                    continue
                expected = await _apply(ref, op, now)
                actual = await _apply(other, op, now)
                assert actual == expected, f"op {step} {op!r}"
                seen_ref = await _visible(ref, now)
                assert await _visible(other, now) == seen_ref, f"after op {step} {op!r}"
            # Who could take what, at the end: a claim by a third engine, far in the future.
            later = now + timedelta(days=1)
            claims = [
                sorted(
                    (lease.run_id, lease.epoch)
                    for lease in await b.storage.claim(
                        "e3", now=later, ttl=30, workflows=None, limit=10
                    )
                )
                for b in (ref, other)
            ]
            assert claims[1] == claims[0], "final claims"

    with tempfile.TemporaryDirectory() as folder:
        trio.run(main, Path(folder))
