"""A storage wrapper that injects crashes and audits what an engine writes and runs.

``AuditedStorage`` sits between an engine and a real backend. It counts
calls in flight (a task blocked on a worker thread looks idle to
``trio.testing.wait_all_tasks_blocked``, so whoever waits for the engine to
settle needs the count), crashes the engine just before or just after its
*n*-th write (``crash_after`` and ``crash_point``; ``on_crash`` does the
killing, typically by cancelling the scope the engine runs in), refuses
chosen writes as transient storage faults, and audits every write and every
step execution against what was persisted before. Every violation is kept
as a readable sentence in ``violations``; ``log`` (when given) receives a
short description of every write as it happens.

``check_crash_safety`` and ``WorkflowStateMachine`` are built on it; a test
that needs its own harness can use it directly.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

import trio
import trio.testing
from trio_util import AsyncValue

from .._errors import LeaseLost
from ..core._instance import ExecutionEntry, Instance, TimerRecord
from ..storage._protocol import (
    Advance,
    Advancer,
    ClaimedRun,
    Lease,
    NewWakeup,
    Storage,
    Wakeup,
    WakeupKind,
)

__all__ = ["AuditedStorage", "CrashPoint", "InjectedFault", "completions"]

_T = TypeVar("_T")


def completions(run: Instance) -> tuple[ExecutionEntry, ...]:
    """The completed steps of ``run.execution_history``, in order.

    The history may also record failed attempts (entries whose ``error`` is
    set); a step completes at most once, but may fail several times first.
    """
    return tuple(e for e in run.execution_history if getattr(e, "error", None) is None)


class InjectedFault(Exception):
    """A write the test told the storage to refuse: to the runtime, a transient storage fault."""


class CrashPoint(enum.Enum):
    """Where an armed engine crash strikes, relative to the write that triggers it."""

    BEFORE = "before"
    """The write never happens."""
    AFTER = "after"
    """The write is persisted, the process dies before anyone learns it."""


class AuditedStorage:
    """Wraps the real backend; counts, injects and audits (see the module docstring).

    ``inner`` is replaced by the host before each process incarnation (a
    ``MemoryStorage`` is reused as is, a durable backend gets a new object on
    the same file, as a new process would). Every engine of one process
    shares this one object, as two engines of one process share a storage.

    Change notification (``wait_for_change``) is answered here, from the calls
    made through this object (every engine of the process makes them here):
    SQLite's own answer also polls for other processes on the real clock, an
    outside event the seeded scheduler could not replay.
    """

    def __init__(
        self, make_inner: Callable[[], Storage], *, log: Callable[[str], None] | None = None
    ) -> None:
        self._make_inner = make_inner
        self.log = log
        """Receives a short sentence for every write, as it is about to happen."""
        self.mutations = 0
        """Writes of any kind attempted so far (creates, fenced writes, wakeups, releases...)."""
        self.revision: AsyncValue[int] = AsyncValue(0)
        """Bumped after every write the backend accepted (a hint to re-read state)."""
        self.inner: Storage = make_inner()
        self.durable = self.inner.durable
        self.in_flight: AsyncValue[int] = AsyncValue(0)
        self._serial = trio.Lock() if self.durable else None
        self._changes = 0
        self._changed = trio.Event()
        # Faults and crashes the rules arm.
        self.failing_writes: collections.Counter[str] = collections.Counter()
        self.crash_after: int | None = None
        self.crash_point = CrashPoint.BEFORE
        self.on_crash: Callable[[], None] = lambda: None
        self.dead: set[str] = set()
        """Engines killed without a clean shutdown: their ``release_all`` never happens."""
        # What the audit saw.
        self.persisted: dict[str, Instance] = {}
        self.faults_hit: collections.Counter[str] = collections.Counter()
        self.executions: list[tuple[str, str]] = []
        self.writes: list[tuple[str, str, int]] = []
        """``(run_id, owner, epoch)`` of every write the backend accepted, in order."""
        self.top_epoch: dict[str, int] = {}
        self.epoch_owner: dict[tuple[str, int], str] = {}
        self.refused: list[tuple[str, str, int]] = []
        """``(run_id, owner, epoch)`` of every write refused with ``LeaseLost``."""
        self.violations: list[str] = []

    def reincarnate(self) -> None:
        """A new backend object on the same data, for the next process incarnation."""
        self.inner = self._make_inner()

    def _busy(self) -> _Busy:
        return _Busy(self)

    def _bump(self) -> None:
        self._changes += 1
        self._changed.set()
        self._changed = trio.Event()

    # -- crash injection --------------------------------------------------------------

    def _crash_due(self) -> CrashPoint | None:
        if self.crash_after is None:
            return None
        self.crash_after -= 1
        if self.crash_after > 0:
            return None
        self.crash_after = None
        return self.crash_point

    async def _die(self) -> None:
        self.on_crash()
        await trio.lowlevel.checkpoint()  # raises Cancelled: every caller is in the engine
        raise RuntimeError("crash point reached outside the engine's cancel scope")

    async def _mutate(self, fn: Callable[[], Awaitable[_T]], what: str) -> _T:
        """A write of any kind: the armed crash strikes just before or just after it."""
        self.mutations += 1
        due = self._crash_due()
        if due is CrashPoint.BEFORE:
            self._note(f"CRASH just before saving: {what}")
            await self._die()
        result = await fn()
        self._note(f"saved: {what}")
        self.revision.value += 1
        if due is CrashPoint.AFTER:
            self._note("CRASH just after that write")
            await self._die()
        return result

    def _note(self, line: str) -> None:
        if self.log is not None:
            self.log(line)

    def _id_of(self, run_id: str) -> str:
        known = self.persisted.get(run_id)
        return known.id if known is not None else run_id

    def describe_write(self, new: Instance) -> str:
        """What a fenced write of ``new`` changes, against what was persisted before."""
        old = self.persisted.get(new.run_id)
        done_before = len(old.execution_history) if old is not None else 0
        parts = [
            f"step {e.step!r} attempt {e.attempt} failed"
            if getattr(e, "error", None) is not None
            else f"step {e.step!r} completed with {e.event!r}"
            for e in new.execution_history[done_before:]
        ]
        if old is None or old.running_steps != new.running_steps:
            started = sorted(new.running_steps - (old.running_steps if old else frozenset()))
            parts += [f"step {k!r} running" for k in started]
        if old is None or old.waiting_steps != new.waiting_steps:
            parked = sorted(new.waiting_steps - (old.waiting_steps if old else frozenset()))
            parts += [f"step {k!r} parked" for k in parked]
        if old is None or old.status is not new.status:
            parts.append(f"run {new.status.value}")
        return f"run {new.id}: " + (", ".join(parts) or "state unchanged")

    # -- audit ------------------------------------------------------------------------

    def _audit_write(self, lease: Lease, new: Instance) -> None:
        """Before a fenced write: the state only moves forward."""
        where = f"run {new.id} ({new.run_id})"
        steps = [e.step for e in completions(new)]
        if len(set(steps)) != len(steps):
            self.violations.append(f"{where}: a step completed twice in history {steps}")
        old = self.persisted.get(new.run_id)
        if old is None:
            return
        if old.is_terminal:
            self.violations.append(f"{where}: {old.status.value} run overwritten with {new!r}")
        if new.execution_history[: len(old.execution_history)] != old.execution_history:
            self.violations.append(f"{where}: persisted history rewritten: {old!r} -> {new!r}")
        if not old.completed_steps <= new.completed_steps:
            self.violations.append(f"{where}: completed steps shrank: {old!r} -> {new!r}")

    def _accepted(self, run_id: str, owner: str, epoch: int) -> None:
        """After a write the backend accepted: one owner per epoch, epochs never go back."""
        top = self.top_epoch.get(run_id, 0)
        if epoch < top:
            self.violations.append(
                f"run {run_id}: write by {owner} at epoch {epoch} accepted after epoch {top} wrote"
            )
        known = self.epoch_owner.setdefault((run_id, epoch), owner)
        if known != owner:
            self.violations.append(
                f"run {run_id}: epoch {epoch} written by two owners, {known} and {owner}"
            )
        self.top_epoch[run_id] = max(top, epoch)
        self.writes.append((run_id, owner, epoch))

    def audit_execution(self, run_id: str, step: str) -> None:
        """Called by every generated step's ``execute`` as it starts."""
        self.executions.append((run_id, step))
        persisted = self.persisted.get(run_id)
        if persisted is None:
            return
        if step in persisted.completed_steps:
            self.violations.append(
                f"step {step!r} of run {run_id} executed after its completion was persisted"
            )
        if persisted.is_terminal:
            self.violations.append(
                f"step {step!r} of run {run_id} executed after the run was persisted "
                f"{persisted.status.value}"
            )

    # -- the Storage protocol -----------------------------------------------------------

    async def __aenter__(self) -> AuditedStorage:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def open(self) -> None:
        async with self._busy():
            await self.inner.open()

    async def close(self) -> None:
        async with self._busy():
            await self.inner.close()

    async def get(self, run_id: str) -> Instance | None:
        async with self._busy():
            return await self.inner.get(run_id)

    async def query(self, **filters: Any) -> list[Instance]:
        async with self._busy():
            return await self.inner.query(**filters)

    async def create(
        self, instance: Instance, *, now: datetime, owner: str | None = None, ttl: float = 30.0
    ) -> Lease | None:
        async with self._busy():

            async def create() -> Lease | None:
                lease = await self.inner.create(instance, now=now, owner=owner, ttl=ttl)
                self.persisted[instance.run_id] = instance
                if lease is not None:
                    self._accepted(lease.run_id, lease.owner, lease.epoch)
                else:
                    self._bump()
                return lease

            return await self._mutate(create, f"run {instance.id} created")

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        async with self._busy():

            async def write() -> list[Wakeup]:
                if self.failing_writes[lease.run_id] > 0:
                    self.failing_writes[lease.run_id] -= 1
                    self.faults_hit[lease.run_id] += 1
                    raise InjectedFault(f"injected fault writing {instance.id} ({lease.run_id})")
                self._audit_write(lease, instance)
                try:
                    added = await self.inner.write(
                        lease, instance, now=now, consume=consume, add_timers=add_timers
                    )
                except LeaseLost:
                    self.refused.append((lease.run_id, lease.owner, lease.epoch))
                    raise
                self.persisted[instance.run_id] = instance
                self._accepted(lease.run_id, lease.owner, lease.epoch)
                return added

            return await self._mutate(write, self.describe_write(instance))

    async def delete(self, run_id: str) -> None:
        async with self._busy():
            await self._mutate(lambda: self.inner.delete(run_id), f"run {run_id} deleted")

    async def purge(self, older_than: datetime) -> int:
        async with self._busy():
            return await self._mutate(
                lambda: self.inner.purge(older_than), f"runs before {older_than} purged"
            )

    async def claim(self, owner: str, **kwargs: Any) -> list[Lease]:
        async with self._busy():
            return await self.inner.claim(owner, **kwargs)

    async def renew(self, owner: str, leases: Collection[Lease], **kwargs: Any) -> list[Lease]:
        async with self._busy():
            return await self.inner.renew(owner, leases, **kwargs)

    async def release(
        self, lease: Lease, *, now: datetime, wake_at: datetime | None, seen: int
    ) -> bool:
        async with self._busy():

            async def release() -> bool:
                woke = await self.inner.release(lease, now=now, wake_at=wake_at, seen=seen)
                self._bump()
                return woke

            return await self._mutate(release, f"run {self._id_of(lease.run_id)} handed back")

    async def release_all(self, owner: str, *, now: datetime) -> int:
        async with self._busy():
            if owner in self.dead:
                return 0  # killed: nobody hands its leases back, they expire
            count = await self.inner.release_all(owner, now=now)
            self._bump()
            return count

    async def next_wake(self, owner: str, **kwargs: Any) -> datetime | None:
        async with self._busy():
            return await self.inner.next_wake(owner, **kwargs)

    async def register_engine(self, engine_id: str, **kwargs: Any) -> None:
        async with self._busy():
            await self.inner.register_engine(engine_id, **kwargs)

    async def unregister_engine(self, engine_id: str) -> None:
        async with self._busy():
            await self.inner.unregister_engine(engine_id)

    async def reap_engines(self, *, now: datetime) -> list[str]:
        async with self._busy():
            return await self.inner.reap_engines(now=now)

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        async with self._busy():

            async def add() -> Wakeup | None:
                added = await self.inner.add_wakeup(wakeup, now=now, max_pending=max_pending)
                if added is not None:
                    self._bump()
                return added

            return await self._mutate(add, _describe_wakeup(wakeup))

    async def add_wakeup_and_claim(
        self, wakeup: NewWakeup, *, advance: Advancer | None = None, **kwargs: Any
    ) -> tuple[Wakeup | None, ClaimedRun | None]:
        async with self._busy():

            def faultless(claimed: ClaimedRun, recorded: Wakeup) -> Advance | None:
                # A write armed to fail is the driver's to make, where the
                # fault is injected.
                if self.failing_writes[wakeup.run_id] > 0:
                    return None
                assert advance is not None
                return advance(claimed, recorded)

            async def add() -> tuple[Wakeup | None, ClaimedRun | None]:
                added, claimed = await self.inner.add_wakeup_and_claim(
                    wakeup, advance=None if advance is None else faultless, **kwargs
                )
                if added is not None:
                    self._bump()
                if claimed is not None and claimed.applied is not None:
                    # The transition written with the claim is a fenced write too.
                    self._note(f"saved with the claim: {self.describe_write(claimed.instance)}")
                    self._audit_write(claimed.lease, claimed.instance)
                    self.persisted[wakeup.run_id] = claimed.instance
                    lease = claimed.lease
                    self._accepted(lease.run_id, lease.owner, lease.epoch)
                return added, claimed

            return await self._mutate(add, _describe_wakeup(wakeup))

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        async with self._busy():
            return await self.inner.seen_dedup_key(run_id, dedup_key)

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        async with self._busy():
            return await self.inner.wakeups(run_id)

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        async with self._busy():
            return await self._mutate(
                lambda: self.inner.cancel_timer(run_id, seq), f"timer {seq} of {run_id} cancelled"
            )

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        async with self._busy():
            return await self.inner.owned_wakeups(owner, after=after)

    async def wait_for_change(self, seen: int) -> int:
        await trio.lowlevel.checkpoint()
        while self._changes == seen:
            await self._changed.wait()
        return self._changes

    def __getattr__(self, name: str) -> Any:
        # A method a newer Storage protocol added: passed through, unaudited.
        return getattr(self.inner, name)


def _describe_wakeup(wakeup: NewWakeup) -> str:
    if wakeup.kind is WakeupKind.TIMER:
        return f"timer for step {wakeup.step!r} ({wakeup.event!r} at {wakeup.due_at:%H:%M:%S})"
    if wakeup.kind is WakeupKind.CANCEL:
        return "cancel request"
    return f"resume {wakeup.event!r} for step {wakeup.step!r}"


class _Busy:
    """``async with storage._busy():`` around every call (a class: it runs on every call,
    and a generator-based context manager costs several times more)."""

    __slots__ = ("_storage",)

    def __init__(self, storage: AuditedStorage) -> None:
        self._storage = storage

    async def __aenter__(self) -> None:
        storage = self._storage
        storage.in_flight.value += 1
        if storage._serial is None:
            return
        # A durable backend works in worker threads, and when a thread finishes
        # relative to the engine's tasks is real time, not Trio's seeded
        # scheduler. Calls made one at a time, each once every other task is
        # blocked, make every run reproducible (Hypothesis needs that to
        # generate and shrink).
        try:
            await storage._serial.acquire()
        except BaseException:
            storage.in_flight.value -= 1
            raise
        try:
            await trio.testing.wait_all_tasks_blocked()
        except BaseException:
            storage._serial.release()
            storage.in_flight.value -= 1
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        storage = self._storage
        if storage._serial is not None:
            storage._serial.release()
        storage.in_flight.value -= 1
