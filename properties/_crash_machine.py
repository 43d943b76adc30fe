"""Harness of ``test_crash_resume.py``: an engine in a Trio thread, a storage that lies,
and the reference model the invariants compare with.

``EngineHost`` runs ``trio.run`` under a ``MockClock`` in a background thread
and keeps an engine open there, reopening it on the same storage whenever it
is crashed. The synchronous state machine talks to one actor task in that
thread; every call ends *settled* (see ``EngineHost.settle``), so each rule
sees a deterministic state.

Why no autojump: virtual time would race ahead whenever the test thread is
busy between two rules, and timers would fire while a write is on the disk.
Here time moves only when a rule says so, with ``MockClock.jump``.

Why so much care about determinism: Hypothesis replays an example to shrink
it and refuses data generation that depends on anything else. Trio's
scheduler is seeded by Hypothesis (trio registers its RNG as a Hypothesis
plugin), so a run is reproducible as long as every outside event (a call
from the test thread, a worker thread finishing a disk write) lands on an
idle loop; the actor and ``AuditedStorage`` make sure it does.

``AuditedStorage`` sits between the engine and the real backend. It counts
calls in flight (settling needs them: a task blocked on a worker thread looks
idle to ``wait_all_tasks_blocked``), injects the two kinds of crash, and audits
every write and every step execution against what was persisted before.
"""

from __future__ import annotations

import collections
import contextlib
import enum
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs
import trio
import trio.testing
from hypothesis import strategies as st
from trio_util import AsyncValue

from hephaestus_trio import (
    Event,
    Instance,
    LeaseLost,
    RestartPolicy,
    Status,
    Storage,
    Wait,
    WaitForEvent,
    Workflow,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.core._instance import TimerRecord
from hephaestus_trio.engine import activate_transitions, advance, check_completion, complete_step
from hephaestus_trio.runtime import _driver
from hephaestus_trio.storage import Lease, NewWakeup, Wakeup
from hephaestus_trio.testing import (
    EPOCH,
    Outcome,
    OutcomeScript,
    WorkflowSpec,
    run_script,
    workflow_specs,
)

_T = TypeVar("_T")

__all__ = [
    "AuditedStorage",
    "CommandResult",
    "CrashPoint",
    "EngineHost",
    "InjectedFault",
    "Snapshot",
    "check_against_reference",
    "check_history_follows_script",
    "crash_workflow_specs",
    "instrument",
    "outcomes_of",
    "replay",
    "scripted_resume",
    "timer_events",
]


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

    def __init__(self, make_inner: Callable[[], Storage]) -> None:
        self._make_inner = make_inner
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

    @contextlib.asynccontextmanager
    async def _busy(self) -> AsyncIterator[None]:
        self.in_flight.value += 1
        try:
            if self._serial is None:
                yield
            else:
                # A durable backend works in worker threads, and when a thread
                # finishes relative to the engine's tasks is real time, not Trio's
                # seeded scheduler. Calls made one at a time, each once every other
                # task is blocked, make every run reproducible (Hypothesis needs
                # that to generate and shrink).
                async with self._serial:
                    await trio.testing.wait_all_tasks_blocked()
                    yield
        finally:
            self.in_flight.value -= 1

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

    async def _mutate(self, fn: Callable[[], Awaitable[_T]]) -> _T:
        """A write of any kind: the armed crash strikes just before or just after it."""
        due = self._crash_due()
        if due is CrashPoint.BEFORE:
            await self._die()
        result = await fn()
        if due is CrashPoint.AFTER:
            await self._die()
        return result

    # -- audit ------------------------------------------------------------------------

    def _audit_write(self, lease: Lease, new: Instance) -> None:
        """Before a fenced write: the state only moves forward."""
        where = f"run {new.id} ({new.run_id})"
        steps = [e.step for e in new.completions]
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

            return await self._mutate(create)

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

            return await self._mutate(write)

    async def delete(self, run_id: str) -> None:
        async with self._busy():
            await self._mutate(lambda: self.inner.delete(run_id))

    async def purge(self, older_than: datetime) -> int:
        async with self._busy():
            return await self._mutate(lambda: self.inner.purge(older_than))

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

            return await self._mutate(release)

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

            return await self._mutate(add)

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        async with self._busy():
            return await self.inner.seen_dedup_key(run_id, dedup_key)

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        async with self._busy():
            return await self.inner.wakeups(run_id)

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        async with self._busy():
            return await self._mutate(lambda: self.inner.cancel_timer(run_id, seq))

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        async with self._busy():
            return await self.inner.owned_wakeups(owner, after=after)

    async def wait_for_change(self, seen: int) -> int:
        await trio.lowlevel.checkpoint()
        while self._changes == seen:
            await self._changed.wait()
        return self._changes


@attrs.frozen
class Snapshot:
    """The persisted state at a settled moment."""

    runs: tuple[Instance, ...]
    pending: tuple[Wakeup, ...]
    """Every run's unapplied wakeups (timers included)."""
    trio_now: float
    wall_now: datetime
    engines: int = 1
    """Engines open in the process."""


@attrs.frozen
class CommandResult:
    """How an engine call ended: a value, an exception, or killed by an engine crash."""

    value: Any = None
    error: Exception | None = None
    crashed: bool = False
    hung: bool = False


SETTLE_CUSHION = 1e-6
"""Real seconds the loop must stay idle before ``settle`` trusts it."""

LEASE_TTL = 12.0
LEASE_RENEWAL = 1.0
"""Leases: no single clock jump of a rule (at most 5 s) outlives one, so a live engine
keeps its runs; a killed engine's runs are taken over once ``LEASE_TTL`` has passed."""

_Call = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]


@attrs.define
class _Slot:
    """One engine open in the process, with the nursery commands run in."""

    engine: Any
    scope: trio.CancelScope
    commands: trio.Nursery


class EngineHost:
    """Engines kept open in a Trio thread, the process reopened after every crash.

    The "process" holds one engine, or two on the same storage once a rule
    opened a second; a crash kills the whole process (every engine hands its
    leases back as it stops), and one engine is reopened. A rule can also
    *kill* one engine alone, without its leases being released: the other
    takes its runs over once they expire.

    The test thread talks to one *actor* task over a memory channel and waits
    for its reply on a ``queue.Queue``. The actor replies only once everything
    has settled and blocks on its channel in the same step, so every call
    from the test thread lands on an idle Trio loop: the seeded scheduler then
    sees the same batches of tasks on every replay.
    """

    def __init__(
        self,
        storage: AuditedStorage,
        workflows: Sequence[type[Workflow]],
        *,
        restart_policy: RestartPolicy,
        handler: Callable[[Event], None],
    ) -> None:
        self.storage = storage
        self.workflows = tuple(workflows)
        self.restart_policy = restart_policy
        self.handler = handler
        self.clock = trio.testing.MockClock()
        self.engine_opens = 0
        self._engine: AsyncValue[Any] = AsyncValue(None)
        self._slots: list[_Slot] = []
        self._scope: trio.CancelScope | None = None
        self._process: trio.Nursery | None = None
        self._stop = trio.Event()
        self._inbox_send, self._inbox = trio.open_memory_channel[_Call](1)
        self._replies: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="crash-machine", daemon=True)
        self._saved_delays: tuple[float, float] | None = None
        storage.on_crash = self._crash

    @property
    def engines(self) -> int:
        return len(self._slots)

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; returns once the first engine is open and settled."""
        # A storage fault is retried after a backoff slept on Trio's clock, which
        # here moves only when a rule says so: retry at once instead (a storage
        # that comes back), so a fault never waits for a rule to move time.
        self._saved_delays = (_driver.FAULT_FIRST_DELAY, _driver.FAULT_MAX_DELAY)
        _driver.FAULT_FIRST_DELAY = _driver.FAULT_MAX_DELAY = 0.0
        self._thread.start()
        self._ready.wait()
        self._raise_if_dead()

    def stop(self) -> None:
        """Crash the engines one last time, close the storage, end the thread."""
        try:
            if self._thread.is_alive() and self._token is not None:
                with contextlib.suppress(trio.RunFinishedError):
                    trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            self._thread.join(timeout=60)
            if self._thread.is_alive():  # pragma: no cover - would hang the suite otherwise
                raise RuntimeError("the engine thread did not stop")
        finally:
            if self._saved_delays is not None:
                _driver.FAULT_FIRST_DELAY, _driver.FAULT_MAX_DELAY = self._saved_delays
                self._saved_delays = None
        self._raise_if_dead()

    def _raise_if_dead(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("the engine thread crashed") from error

    def _thread_main(self) -> None:
        try:
            trio.run(self._main, clock=self.clock)
        except BaseException as exc:  # handed to the test thread, which re-raises it
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._process_loop)
                nursery.start_soon(self._actor)
                await self._stop.wait()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.storage.close()

    async def _actor(self) -> None:
        await self.settle()
        self._ready.set()
        async for fn, args in self._inbox:
            try:
                reply = (True, await fn(*args))
            except Exception as exc:
                reply = (False, exc)
            await self.settle()
            self._replies.put(reply)  # and block on the inbox in this same step

    async def _process_loop(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as process:
                    self._process = process
                    process.start_soon(self._run_engine)
                    await trio.sleep_forever()
            # Crashed: the old backend object dies with its "process".
            self._process = None
            self._slots.clear()
            self._engine.value = None
            await self.storage.close()
            self.storage.reincarnate()

    async def _run_engine(self) -> None:
        """One engine of the process, open until its scope (or the process) is cancelled."""
        slot: _Slot | None = None
        try:
            with trio.CancelScope() as scope:
                async with open_engine(
                    self.storage,
                    self.workflows,
                    restart_policy=self.restart_policy,
                    handlers=[self.handler],
                    wall_clock=trio_wall_clock(EPOCH),
                    lease_ttl=LEASE_TTL,
                    lease_renewal=LEASE_RENEWAL,
                ) as engine:
                    async with trio.open_nursery() as commands:
                        slot = _Slot(engine=engine, scope=scope, commands=commands)
                        self._slots.append(slot)
                        self.engine_opens += 1
                        self._engine.value = engine
                        await trio.sleep_forever()
        finally:
            if slot is not None and slot in self._slots:
                self._slots.remove(slot)
                self._engine.value = self._slots[-1].engine if self._slots else None

    def _crash(self) -> None:
        assert self._scope is not None
        self._scope.cancel()

    # -- calls from the test thread ---------------------------------------------------

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``await fn(*args)`` in the actor, settle, and return its result (or raise)."""
        self._raise_if_dead()
        assert self._token is not None
        trio.from_thread.run_sync(self._inbox_send.send_nowait, (fn, args), trio_token=self._token)
        while True:
            try:
                ok, value = self._replies.get(timeout=1.0)
            except queue.Empty:
                if not self._thread.is_alive():
                    self._raise_if_dead()
                    raise RuntimeError("the engine thread ended") from None
                continue
            if ok:
                return value
            raise value

    async def command(self, fn: Callable[[Any], Awaitable[Any]], *, via: int = -1) -> CommandResult:
        """``await fn(engine)`` in a task *inside* an engine (the newest, or ``via``), so a
        crash kills it too.

        A call still blocked once everything has settled can never return: it
        is cancelled and reported as ``hung``.
        """
        await self._engine.wait_value(lambda e: e is not None)
        slot = self._slots[via % len(self._slots)]
        box: dict[str, Any] = {}
        done = trio.Event()
        scope = trio.CancelScope()

        async def call() -> None:
            try:
                with scope:
                    box["value"] = await fn(slot.engine)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

        slot.commands.start_soon(call)
        await self.settle()
        if not done.is_set():
            scope.cancel()
            await done.wait()
            return CommandResult(hung=True)
        if "error" in box:
            return CommandResult(error=box["error"])
        if "value" in box:
            return CommandResult(value=box["value"])
        return CommandResult(crashed=True)

    async def crash_now(self) -> None:
        """Crash the process (every engine); one engine reopens by itself."""
        self._crash()
        await self.settle()

    async def open_second(self) -> None:
        """Open one more engine in the process, on the same storage object."""
        assert self._process is not None
        self._process.start_soon(self._run_engine)
        before = self.engine_opens
        while self.engine_opens == before and self._process is not None:
            await self.settle()
            await trio.sleep(0)
            if self.engine_opens == before:
                # Crashed while opening, and the process reopened with one engine.
                break
        await self.settle()

    async def kill_oldest(self) -> None:
        """Kill the oldest engine without releasing its leases, then let them expire:
        time moves on in steps shorter than a renewal until they have."""
        if len(self._slots) < 2:
            return
        slot = self._slots[0]
        self.storage.dead.add(slot.engine.engine_id)
        slot.scope.cancel()
        await self.settle()
        elapsed = 0.0
        while elapsed <= LEASE_TTL:
            self.clock.jump(LEASE_RENEWAL / 2)
            elapsed += LEASE_RENEWAL / 2
            await self.settle()

    async def jump(self, seconds: float) -> None:
        """Advance virtual time by ``seconds``; due timers fire."""
        self.clock.jump(seconds)
        await self.settle()

    async def settle(self) -> None:
        """Wait until nothing can happen without outside input.

        Settled: an engine is open, every task is blocked, and no storage
        call is in flight (a task waiting for a worker thread counts as
        blocked, so the in-flight count is what tells a disk write apart
        from a parked run). With the clock frozen, only a rule can then
        change anything.
        """
        while True:
            # A cushion above the storage's zero: when both wait for idleness,
            # the storage call goes first (equal cushions would wake together,
            # and the storage call could make progress behind our back).
            await trio.testing.wait_all_tasks_blocked(SETTLE_CUSHION)
            if self.storage.in_flight.value:
                await self.storage.in_flight.wait_value(lambda v: v == 0)
            elif self._engine.value is None:
                await self._engine.wait_value(lambda e: e is not None)
            else:
                return

    async def snapshot(self) -> Snapshot:
        """The persisted state, read through the running engine's storage."""
        await self.settle()
        runs = await self.storage.query()
        pending = [w for run in runs for w in await self.storage.wakeups(run.run_id)]
        now = trio.current_time()
        return Snapshot(
            runs=tuple(runs),
            pending=tuple(pending),
            trio_now=now,
            wall_now=EPOCH + timedelta(seconds=now),
            engines=len(self._slots),
        )


# -- the reference model ------------------------------------------------------------
#
# Generated steps do what the run's outcome script (in its initial context)
# says, so everything a run may persist follows from its script and the pure
# engine functions.


def small_waits(spec: WorkflowSpec) -> WorkflowSpec:
    """Keep every Wait duration and WaitForEvent timeout within a few seconds."""
    nodes = []
    for node in spec.nodes:
        config = dict(node.config or {})
        if node.kind == "wait":
            amount = config.get("seconds", config.get("duration", 1))
            config = {"seconds": min(float(amount), 4.0)}
        elif "timeout" in config:
            config["timeout"] = min(config["timeout"], 5)
        nodes.append(attrs.evolve(node, config=config or None))
    return attrs.evolve(spec, nodes=tuple(nodes))


def crash_workflow_specs() -> st.SearchStrategy[WorkflowSpec]:
    """Valid workflow specs (``hephaestus_trio.testing``) with short waits."""
    return workflow_specs(max_steps=5).map(small_waits)


def instrument(workflow: type[Workflow], storage: AuditedStorage) -> None:
    """Make every generated step report its executions to the storage audit."""
    for key, cls in workflow.definition().steps.items():
        if cls.terminal:  # Done is shared by every workflow: leave it alone
            continue
        original = cls.execute

        async def execute(
            self: Any, instance: Instance, config: Any, context: Any, *, _run: Any = original
        ) -> Any:
            storage.audit_execution(instance.run_id, type(self).step_key)
            return await _run(self, instance, config, context)

        cls.execute = execute  # type: ignore[method-assign]
        assert cls.is_async(), key


def outcomes_of(run: Instance) -> dict[str, Outcome]:
    """Each step's scripted outcome, read back from the run's initial context."""
    return {k: Outcome(**v) for k, v in run.context.initial["outcomes"].items()}


def scripted_resume(run: Instance, step: str) -> str:
    """The event a rule resumes parked ``step`` with (a WaitForEvent may use its name)."""
    outcome = outcomes_of(run)[step]
    return outcome.resume_with or outcome.event


def replay(run: Instance, workflow: type[Workflow]) -> Instance:
    """Rebuild ``run`` from its history with the pure engine functions, from ``Instance.new``."""
    inst = Instance.new(
        workflow,
        run.context.initial,
        id=run.id,
        run_id=run.run_id,
        now=run.created_at,
        unique_key=run.unique_key,
    )
    if run.status is Status.PENDING:
        return inst
    inst = advance(inst, workflow=workflow, at=run.created_at)
    for entry in run.completions:
        at = entry.timestamp
        inst = complete_step(
            inst,
            entry.step,
            entry.event,
            entry.context_updates,
            at=at,
            attempt=entry.attempt,
            workflow=workflow,
        )
        inst = activate_transitions(inst, entry.step, entry.event, at=at, workflow=workflow)
        inst = check_completion(inst, workflow=workflow, at=at)
    return inst


def timer_events(workflow: type[Workflow], step: str) -> frozenset[str]:
    """Events a durable timer may deliver to ``step`` (Wait; WaitForEvent with a timeout)."""
    definition = workflow.definition()
    cls = definition.steps[step]
    config = definition.configs.get(step) or {}
    if issubclass(cls, Wait) or (issubclass(cls, WaitForEvent) and "timeout" in config):
        return frozenset({"timeout"})
    return frozenset()


def check_history_follows_script(run: Instance, workflow: type[Workflow]) -> None:
    """Each completion is what the step's script says (or a timer's ``timeout``)."""
    outcomes = outcomes_of(run)
    for entry in run.completions:
        outcome = outcomes[entry.step]
        cls = workflow.definition().steps[entry.step]
        allowed = {outcome.event} | timer_events(workflow, entry.step)
        if issubclass(cls, WaitForEvent) and outcome.resume_with:
            allowed.add("received")
        assert entry.event in allowed, (entry, outcome)
        assert not outcome.fail, f"step {entry.step} completed although its script fails it"
        executed = not (outcome.suspend or cls.terminal)
        expected = {"event": outcome.event} if executed else None
        assert entry.context_updates == expected, (entry, outcome)


def check_against_reference(run: Instance, workflow: type[Workflow]) -> None:
    """A terminal run ends where a crash-free pure-engine run with the same outcomes ends.

    The reference plays every step's scripted outcome with failures turned
    off (a WaitForEvent whose timer won is given ``timeout``). If a step
    that the script fails is on the reference's path, the real run must have
    failed in one such step, having completed only steps of that path;
    otherwise it completed exactly the reference's steps with its context.
    """
    definition = workflow.definition()
    outcomes = outcomes_of(run)
    delivered = {e.step: e.event for e in run.completions}
    reference_outcomes = {}
    for key, outcome in outcomes.items():
        outcome = attrs.evolve(outcome, fail=False)
        if issubclass(definition.steps[key], WaitForEvent) and delivered.get(key) == "timeout":
            outcome = attrs.evolve(outcome, event="timeout", resume_with=None)
        reference_outcomes[key] = outcome
    reference = run_script(workflow, OutcomeScript(outcomes=reference_outcomes))[-1]
    assert reference.status is Status.COMPLETED, reference
    failing = {k for k in reference.completed_steps if outcomes[k].fail}
    if failing:
        assert run.status is Status.FAILED, (run, failing)
        assert run.error is not None
        assert run.error.kind == "failure", run.error
        assert run.error.step in failing, (run.error, failing)
        assert run.completed_steps < reference.completed_steps, (run, reference)
        assert run.context.steps.items() <= reference.context.steps.items(), (run, reference)
    else:
        assert run.status is Status.COMPLETED, (run, reference)
        assert run.completed_steps == reference.completed_steps, (run, reference)
        assert run.context.steps == reference.context.steps, (run, reference)
