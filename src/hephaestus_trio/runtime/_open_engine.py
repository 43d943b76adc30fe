"""``open_engine`` and the running ``Engine``: the root nursery and the public calls.

The storage is the single source of truth; an engine only ever acts on runs
it holds a lease on. Each engine start gets a fresh engine id. Its root
nursery holds:

- one driver task per run it owns (``_driver.drive``), which runs incarnations
  of the run (``_incarnation.Incarnation``, the run's only writer) in a cancel
  scope, each with its own child nursery for the run's steps;
- the claim loop and the heartbeat (``_ownership``), and retention.

Public calls never touch a run's state. ``start_instance`` inserts the run
(claimed by this engine in the same write); ``resume``, ``schedule_resume``
and ``cancel`` validate against the *stored* run and add a wakeup row, then
poke the run's loop if this engine drives it. Whoever owns the run applies
the row; if nobody does, the row makes the run claimable. The same calls
therefore work from any engine, or from a process with no engine at all.
"""

from __future__ import annotations

import logging
import math
import os
import random
import socket
import uuid
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, final

import attrs
import trio
import trio_util

from .._errors import (
    AlreadyRunning,
    DefinitionMismatch,
    EngineClosed,
    InstanceNotFound,
    InvalidResume,
    InvalidValue,
    NotCancellable,
    UnknownWorkflow,
    WaitTimeout,
    WorkflowDefinitionError,
)
from ..core import _decisions as decide
from ..core._facade import current_engine
from ..core._instance import Instance, Status, TimerRecord, check_mapping
from ..core._json import check_json_safe
from ..core._policies import RestartPolicy
from ..core._workflow import Workflow
from ..observability._bus import EventBus, Handler
from ..storage._memory import MemoryStorage
from ..storage._protocol import (
    ClaimedRun,
    Lease,
    NewWakeup,
    Storage,
    UniqueViolation,
    Wakeup,
    WakeupKind,
    WakeupRefused,
    WorkflowKey,
)
from ._calls import (
    ClaimRequest,
    ResumeInClaim,
    cancel_directly,
    find_run,
    request_cancel,
    resume_run,
)
from ._clock import WallClock
from ._driver import drive
from ._gauges import gauge_reader
from ._ownership import claim_loop, claim_now, renew_loop
from ._runs import AppliedResume, RunEntry
from ._statistics import EngineStatistics
from ._timers import TimerHandle

__all__ = ["Engine", "open_engine"]

logger = logging.getLogger("hephaestus_trio.runtime")


def _register(registry: dict[str, type[Workflow]], workflow: type[Workflow]) -> None:
    if not (isinstance(workflow, type) and issubclass(workflow, Workflow)):
        raise TypeError(f"expected a Workflow subclass, got {workflow!r}")
    classes = [workflow, *(workflow.versions or {}).values()]
    for cls in classes:
        known = registry.get(cls.name)
        if known is not None and known is not cls:
            raise WorkflowDefinitionError(
                f"two workflow classes share the registry name {cls.name!r}: "
                f"{known.__module__}.{known.__qualname__} and "
                f"{cls.__module__}.{cls.__qualname__}; give one of them name=..."
            )
    for cls in classes:
        registry[cls.name] = cls


@attrs.frozen
class _Options:
    restart_policy: RestartPolicy
    inbox_size: int
    handlers: tuple[Handler, ...]
    retention: timedelta | None
    wall_clock: Any
    rng: random.Random
    lease_ttl: float
    lease_renewal: float


FINALS_KEPT = 1024
"""How many of its most recently ended runs an engine keeps to answer ``wait``."""


@final
class Engine:
    """The running engine yielded by ``open_engine``; do not construct it directly.

    All methods are coroutines and must be called from inside the
    ``open_engine`` block (``EngineClosed`` otherwise).
    """

    def __init__(
        self,
        *,
        storage: Storage,
        nursery: trio.Nursery,
        options: _Options,
        registry: Mapping[str, type[Workflow]],
    ) -> None:
        self.storage = storage
        self.restart_policy = options.restart_policy
        self.inbox_size = options.inbox_size
        self.clock = WallClock(options.wall_clock)
        self.rng = options.rng
        self.lease_ttl = options.lease_ttl
        self.lease_renewal = options.lease_renewal
        self.bus = EventBus()
        self._engine_id = str(uuid.uuid4())
        self._nursery = nursery
        self._workflows: dict[str, type[Workflow]] = dict(registry)
        self._keys: frozenset[WorkflowKey] | None = None
        self._runs: dict[str, RunEntry] = {}
        # Shared by every engine of this process on the same storage object, so
        # a wait() in one engine hears of a run another one drives here.
        self._terminal = _signals.setdefault(storage, {})
        self._claim_doorbell = trio.Event()
        self._owning = trio.Event()
        self._seen_wakeup = 0
        # Until this Trio time, the claim loop looks every lease_renewal for
        # runs of its own it stopped without releasing them (the storage was
        # unreachable past the trust window): their leases lapse in the
        # storage, and next_wake ignores runs held by this engine.
        self._reclaim_until = -math.inf
        self._closed = False
        self._refused: dict[str, str] = {}
        """run_id -> the mismatch that made this engine refuse it (logged once at ERROR)."""
        self._finals: dict[str, Instance] = {}
        """The terminal state of the runs this engine ended most recently (at most
        ``FINALS_KEPT``): ``wait`` answers from here instead of re-reading them."""

    @property
    def engine_id(self) -> str:
        """This engine's id: a fresh UUID per ``open_engine`` (the lease owner)."""
        return self._engine_id

    # -- registry --------------------------------------------------------

    def register(self, workflow: type[Workflow]) -> None:
        """Make ``workflow`` (and every version of a dispatcher) known to this engine.

        The engine claims runs of registered workflows only.

        Raises:
            TypeError: ``workflow`` is not a ``Workflow`` subclass.
            WorkflowDefinitionError: another class is registered under the same
                name (runs record only the name, so they could run the wrong one).
        """
        before = len(self._workflows)
        _register(self._workflows, workflow)
        if len(self._workflows) != before:
            self._keys = None
            self._wake_claims()  # runs of this workflow may be waiting for a driver

    def _workflow_keys(self) -> frozenset[WorkflowKey]:
        if self._keys is None:
            self._keys = frozenset(
                (cls.name, cls.version)
                for cls in self._workflows.values()
                if not cls.is_dispatcher()
            )
        return self._keys

    def workflow_for(self, instance: Instance) -> type[Workflow]:
        """The class that runs ``instance`` (its own recorded name and version).

        Raises:
            UnknownWorkflow: the engine was not given that workflow.
        """
        found = self._workflows.get(instance.workflow)
        if found is None or found.is_dispatcher():
            raise UnknownWorkflow(
                f"run {instance.id!r} uses workflow {instance.workflow!r} version "
                f"{instance.workflow_version}, which this engine was not given; pass it in "
                "open_engine(workflows=[...])"
            )
        return found

    def metadata_for(self, instance: Instance) -> dict[str, Any]:
        """Event metadata of ``instance``: its telemetry metadata plus its ids."""
        return {
            **instance.telemetry_metadata,
            "instance_id": instance.id,
            "run_id": instance.run_id,
            "workflow": instance.workflow,
            "workflow_version": instance.workflow_version,
        }

    def _family(self, instance: Instance) -> str:
        found = self._workflows.get(instance.workflow)
        return found.family if found is not None else instance.workflow

    # -- runs this engine drives -------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("this engine is closed; open a new one with open_engine()")

    def _spawn(
        self,
        lease: Lease,
        initial: Instance | None = None,
        wakeups: Sequence[Wakeup] | None = None,
        resumed: AppliedResume | None = None,
    ) -> None:
        """Drive the run ``lease`` is for (idempotent: a re-claim only refreshes the lease).

        ``initial`` is the state of a run this engine has just created, or
        read when it claimed the run, with ``wakeups`` its unapplied wakeups
        read then: its loop starts from them rather than reading them back;
        ``resumed``, the resume that claim applied (``initial`` is its result).
        """
        entry = self._runs.get(lease.run_id)
        if entry is not None and not entry.closing and not entry.lost:
            if resumed is None:
                entry.lease = lease
                if wakeups is not None:
                    entry.poke()  # it was read before our wakeup came
                return
            # Never the case as ``resume`` asks (it does not apply a resume in
            # the claim of a run driven here), but were it: that loop's state
            # is older than the claim's write, so it must stop unwritten.
            entry.stop_lost()
        entry = RunEntry(lease, initial, wakeups, resumed)
        self._runs[lease.run_id] = entry
        self._owning.set()
        signal = self._terminal.get(lease.run_id)
        if signal is not None:
            signal.set()  # a waiter polling for it can now wait for its end here
        self._nursery.start_soon(drive, self, entry, name=f"run {lease.run_id}")

    def _driver_done(self, entry: RunEntry) -> None:
        if self._runs.get(entry.run_id) is entry:
            del self._runs[entry.run_id]
            if not self._runs:
                self._owning = trio.Event()
        entry.done.set()
        signal = self._terminal.get(entry.run_id)
        if signal is not None:
            signal.set()  # waiters re-read: the run may be terminal, or elsewhere now

    def _refused_run(self, run_id: str, mismatch: DefinitionMismatch) -> None:
        """A run's definition changed: say so loudly once, quietly when it comes back."""
        text = str(mismatch)
        if self._refused.get(run_id) == text:
            logger.debug("run %s still refused: %s", run_id, text)
            return
        self._refused[run_id] = text
        logger.error("run %s refused: %s", run_id, text)

    def _finished(self, instance: Instance) -> None:
        """Announce a terminal run; called once, by the loop that wrote the terminal state."""
        finals = self._finals
        finals[instance.run_id] = instance
        if len(finals) > FINALS_KEPT:
            del finals[next(iter(finals))]  # the oldest: dicts keep insertion order
        meta = self.metadata_for(instance)
        self._refused.pop(instance.run_id, None)
        if instance.status is Status.FAILED:
            error = instance.error
            extra = {"error": str(error)}
            if error is not None and error.traceback is not None:
                extra["traceback"] = error.traceback
            self.bus.emit("workflow.exception", {}, {**meta, **extra})
        duration = (instance.updated_at - instance.created_at).total_seconds()
        self.bus.emit(
            "workflow.stop", {"duration": duration}, {**meta, "status": instance.status.value}
        )

    def _wake_claims(self) -> None:
        bell, self._claim_doorbell = self._claim_doorbell, trio.Event()
        bell.set()

    # -- lookups ---------------------------------------------------------

    def _matches(self, instance: Instance, workflow: str | None) -> bool:
        return workflow is None or workflow in (instance.workflow, self._family(instance))

    async def _live_run(self, id: str, workflow: str | None) -> tuple[Instance | None, Instance]:
        """(live run or None, most recent run) for business id ``id``."""
        return await find_run(self.storage, id, workflow, self._matches)

    def _poke(self, run_id: str) -> None:
        entry = self._runs.get(run_id)
        if entry is not None:
            entry.poke()

    # -- public calls ----------------------------------------------------

    async def start_instance(
        self,
        workflow: type[Workflow],
        context: Mapping[str, Any] | None = None,
        *,
        id: str,
        version: int | None = None,
        telemetry_metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Persist a new run, claimed by this engine, and start driving it; returns its id.

        Raises:
            AlreadyRunning: a live run holds this id in the workflow's scope.
            InvalidValue: unknown ``version`` (the message lists the known ones), empty
                id (both are ``ValueError`` too).
            TypeError: ``context`` is not a mapping, or is not JSON-safe (the message
                names the argument and the type given, or the key path).
        """
        self._check_open()
        if not isinstance(id, str) or not id:
            raise InvalidValue(
                f"id must be a non-empty string such as 'orderid::abc123', got {id!r}"
            )
        check_mapping("context", context)
        check_mapping("telemetry_metadata", telemetry_metadata)
        self.register(workflow)
        chosen = workflow.resolve_version(version, {"id": id, "context": context})
        now = self.clock.now()
        instance = Instance.new(
            chosen,
            context,
            id=id,
            version=chosen.version,
            now=now,
            telemetry_metadata=telemetry_metadata,
            unique_key=chosen.constraint_key(id),
        )
        trace = self.bus.capture_trace_context()
        if trace is not None:
            instance = attrs.evolve(instance, trace_context=trace)
        try:
            lease = await self.storage.create(
                instance, now=now, owner=self._engine_id, ttl=self.lease_ttl
            )
        except UniqueViolation as exc:
            raise AlreadyRunning(id, chosen.family, chosen.unique.scope) from exc
        assert lease is not None
        self.bus.emit("workflow.start", {}, self.metadata_for(instance))
        self._spawn(lease, instance)
        return instance.id

    async def resume(
        self,
        id: str,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        step: str | None = None,
        workflow: str | None = None,
        dedup_key: str | None = None,
    ) -> None:
        """Record ``event`` for the live run of ``id``; returns once it is durably accepted.

        The step's completion happens afterwards, in whichever engine owns the
        run. ``payload`` (JSON-safe) becomes the resumed step's updates at
        ``context.steps[step]``. A resume may arrive before its step parks: it
        is kept and applied when the step parks. A ``dedup_key`` already
        recorded for the run makes the call a no-op (idempotent webhooks).

        Raises:
            InstanceNotFound: no run has this id.
            InvalidResume: the run is terminal; or no step that can still run
                declares ``event``; or several do and ``step=`` was not given;
                or the step already has a pending resume.
            AmbiguousInstance: several live runs share ``id``; pass ``workflow=``.
            Backpressure: the run has ``inbox_size`` unapplied resumes; nothing
                was recorded.
            UnknownWorkflow: this engine was not given the run's workflow.
            DefinitionMismatch: the run started with another definition of its
                workflow than the one registered (nothing was recorded).
            TypeError: ``payload`` is not a mapping, or is not JSON-safe (the
                message names the type given, or the key path).
        """
        self._check_open()
        if payload is not None:
            check_mapping("payload", payload)
            payload = dict(payload)
            check_json_safe(payload, "payload")
        now = self.clock.now()
        advance = ResumeInClaim(now) if self.storage.durable else None
        added, claimed = await resume_run(
            self.storage,
            self.workflow_for,
            id,
            event,
            payload,
            step=step,
            workflow=workflow,
            dedup_key=dedup_key,
            now=now,
            max_pending=self.inbox_size,
            matches=self._matches,
            trace_context=self.bus.capture_trace_context(),
            # A hibernated run is claimed here, with the resume: its driver
            # starts at once from what the claim read, and the claim loop has
            # nothing to do for it.
            # On durable storage the resume itself is applied in that claim
            # (one commit, not two), unless this engine drives the run already
            # (its loop's state must stay its own). In memory there is no
            # commit to save: the driver applies it, through ``write``.
            claim_for=ClaimRequest(
                owner=self._engine_id,
                ttl=self.lease_ttl,
                workflows=self._workflow_keys(),
                advance=advance,
                driving=self._runs.__contains__,
            ),
        )
        if claimed is not None:
            await self._adopt(claimed, now, advance)
        elif added is not None:
            self._poke(added.run_id)

    async def _adopt(
        self, claimed: ClaimedRun, now: datetime, applied: ResumeInClaim | None = None
    ) -> None:
        """Drive a run claimed along with a resume; hand it back if the engine is closing."""
        if not self._closed:
            # Not closed: the root nursery is open (it closes only after).
            resumed = None
            if claimed.applied is not None and applied is not None and applied.before is not None:
                resumed = AppliedResume(
                    before=applied.before, wakeup=claimed.applied, event=applied.event
                )
            self._spawn(claimed.lease, claimed.instance, claimed.wakeups, resumed)
            return
        # Applied in the claim, the run has a step to run now: handed back due
        # at once, or nobody would claim it (its resume is consumed).
        wake_at = now if claimed.applied is not None else None
        with trio.CancelScope(shield=True):
            try:
                await self.storage.release(claimed.lease, now=now, wake_at=wake_at, seen=0)
            except Exception:
                logger.exception(
                    "could not hand back run %s at shutdown; its lease will expire",
                    claimed.lease.run_id,
                )

    async def schedule_resume(
        self,
        id: str,
        step: str,
        delay: float,
        *,
        event: str = "timeout",
        workflow: str | None = None,
    ) -> TimerHandle:
        """Add a durable timer that resumes parked ``step`` with ``event`` after ``delay`` s.

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``resume``.
            InvalidResume: the run is terminal, the step is not parked, or it
                does not declare ``event``.
            UnknownWorkflow: this engine was not given the run's workflow.
            DefinitionMismatch: the run started with another definition of its
                workflow than the one registered (nothing was recorded).
            InvalidValue: ``delay`` is negative or not a number (a ``ValueError``).
        """
        self._check_open()
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise InvalidValue(f"delay must be a number of seconds >= 0, got {delay!r}")
        live, latest = await self._live_run(id, workflow)
        if live is None:
            raise InvalidResume(id, event, f"the instance is {latest.status.value}")
        wf = self.workflow_for(live)
        decide.check_definition(live, wf)
        if step not in live.waiting_steps:
            raise InvalidResume(id, event, f"step {step!r} is not parked")
        if wf.step(step).resume_event(live.step_configs.get(step), event) is None:
            raise InvalidResume(id, event, f"step {step!r} does not declare {event!r}")
        now = self.clock.now()
        record = TimerRecord(step=step, event=event, fire_at=self.clock.after(delay))
        try:
            added = await self.storage.add_wakeup(
                NewWakeup(
                    run_id=live.run_id,
                    kind=WakeupKind.TIMER,
                    step=step,
                    event=event,
                    due_at=record.fire_at,
                    trace_context=self.bus.capture_trace_context(),
                ),
                now=now,
            )
        except WakeupRefused as exc:
            raise InvalidResume(id, event, f"the instance is {exc.status}") from None
        assert added is not None
        self._poke(live.run_id)
        return TimerHandle(
            run_id=live.run_id, seq=added.seq, record=added.timer_record(), _storage=self.storage
        )

    async def cancel(self, id: str, *, workflow: str | None = None) -> Instance:
        """Stop the live run of ``id`` for good; returns it, ``cancelled``.

        The cancel is a request row applied by the run's owner (this engine,
        another one, or this call itself when nobody owns the run): its steps
        are interrupted at once and no step runs afterwards.

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``resume``.
            NotCancellable: the run is (or became, before the request applied)
                completed or failed, or was already cancelled.
        """
        self._check_open()
        live, latest = await self._live_run(id, workflow)
        if live is None:
            raise NotCancellable(id, latest.status.value)
        run_id = live.run_id
        await request_cancel(self.storage, live, now=self.clock.now())
        entry = self._runs.get(run_id)
        if entry is not None:
            entry.poke()
            entry.interrupt()
        else:
            # Nobody may own it (hibernating): claim it now. A workflow this
            # engine does not run is still cancelled, by one direct fenced write.
            leases = await self.storage.claim(
                self._engine_id,
                now=self.clock.now(),
                ttl=self.lease_ttl,
                workflows=None,
                limit=1,
                run_ids=[run_id],
            )
            for lease in leases:
                if live.workflow in self._workflows:
                    self._spawn(lease)
                else:
                    await cancel_directly(self.storage, lease, now=self.clock.now())
        final = await self._wait_run(run_id, None)
        if final.status is not Status.CANCELLED:
            raise NotCancellable(id, final.status.value)
        return final

    async def get(self, id: str, *, workflow: str | None = None) -> Instance:
        """The live run of ``id``, else its most recent run.

        Raises:
            InstanceNotFound: no run has this id.
            AmbiguousInstance: several live runs share it; pass ``workflow=``.
        """
        self._check_open()
        live, latest = await self._live_run(id, workflow)
        return live if live is not None else latest

    async def list(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
    ) -> list[Instance]:
        """Runs matching every given filter, oldest first.

        Raises:
            InvalidValue: an unknown status (a ``ValueError``).
        """
        self._check_open()
        return await self.storage.query(
            status=status,
            status_in=status_in,
            workflow=workflow,
            workflow_version=workflow_version,
            id=id,
        )

    async def wait(
        self, id: str, timeout: float | None = None, *, workflow: str | None = None
    ) -> Instance:
        """Wait until the run of ``id`` is completed, failed or cancelled; return it.

        A run this engine drives is announced (``workflow.stop``) before this
        returns. A run another engine drives is re-read when the storage reports a
        change (another process's commit is noticed within its poll interval).

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``get``.
            WaitTimeout: ``timeout`` seconds passed first (the run goes on); it
                names the run and its status then, and is a ``TimeoutError``.
            InvalidValue: ``timeout`` is negative or not a number.
        """
        self._check_open()
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise InvalidValue(
                f"timeout must be a number of seconds >= 0, or None to wait for ever; "
                f"got {timeout!r}"
            )
        live, latest = await self._live_run(id, workflow)
        if live is None:
            await trio.lowlevel.checkpoint()
            return latest
        with trio.move_on_after(timeout if timeout is not None else math.inf) as scope:
            return await self._wait_run(live.run_id)
        assert scope.cancelled_caught
        assert timeout is not None
        current = await self.storage.get(live.run_id)
        status = current.status.value if current is not None else "gone"
        raise WaitTimeout(live.id, live.run_id, status, float(timeout))

    def statistics(self) -> EngineStatistics:
        """A frozen snapshot of what this engine holds now: runs by state, tasks, leases.

        Read from memory only (no storage call), so it is cheap enough for a
        health check. Hibernating runs belong to no engine and are not counted.
        """
        running = parked = backing_off = steps = tasks = leases = queued = 0
        for entry in self._runs.values():
            tasks += 1
            if not entry.closing and not entry.lost:
                leases += 1
            queued += entry.recv.statistics().current_buffer_used
            loop = entry.incarnation
            if loop is None or loop.inst is None:
                continue
            queued += len(loop.wakeups)
            tasks += loop.tasks
            steps += len(loop.executing)
            if loop.executing:
                running += 1
            elif loop.inst.status is Status.WAITING:
                parked += 1
            if loop.backing_off:
                backing_off += 1
        return EngineStatistics(
            runs=len(self._runs),
            running=running,
            parked=parked,
            backing_off=backing_off,
            steps=steps,
            tasks=tasks,
            leases=leases,
            queued_wakeups=queued,
            refused=len(self._refused),
        )

    async def _wait_run(self, run_id: str, timeout: float | None = None) -> Instance:
        seen = -1
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                final = self._finals.get(run_id)
                if final is not None:
                    # Ended by this engine: a terminal state never changes again
                    # (it may only be deleted later), so no read is needed.
                    await trio.lowlevel.checkpoint()
                    return final
                signal = self._terminal.get(run_id)
                if signal is None or signal.is_set():
                    signal = self._terminal[run_id] = trio.Event()
                current = await self.storage.get(run_id)
                if current is None:
                    raise InstanceNotFound(run_id)
                driven_here = run_id in self._runs
                if current.is_terminal and not driven_here:
                    return current
                if driven_here:
                    await signal.wait()
                else:
                    # Hibernating, or driven by another engine: an engine of this
                    # process that claims it or ends it sets the signal; another
                    # process's commits show as a storage change.
                    seen = await _first_of(signal, self.storage, seen)
                if self._terminal.get(run_id) is signal and signal.is_set():
                    del self._terminal[run_id]

    def subscribe(self, handler: Handler, events: Iterable[str] | None = None) -> Any:
        """Call ``handler(event)`` for each event (or only those named); returns an unsubscribe.

        A handler that raises is logged and detached; it never affects a run. A
        handler with an ``attach_engine(engine_id, read_gauges)`` hook is given a
        function reading this engine's gauges; unsubscribing detaches it.
        """
        unsubscribe = self.bus.subscribe(handler, events)
        attach = getattr(handler, "attach_engine", None)
        if not callable(attach):
            return unsubscribe
        detach = attach(self._engine_id, gauge_reader(self))

        def both() -> None:
            unsubscribe()
            if callable(detach):
                detach()

        return both

    async def purge(self, older_than: timedelta | datetime) -> int:
        """Delete terminal runs last updated before ``older_than`` (an age or a time).

        Raises:
            InvalidValue: a negative age, a naive datetime, or neither kind of value.
        """
        self._check_open()
        _check_age_or_time("older_than", older_than)
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        return await self.storage.purge(cutoff)

    @property
    def live_tasks(self) -> int:
        """Runs this engine currently drives (hibernating runs have no task anywhere)."""
        return len(self._runs)

    async def _retention_loop(self, retention: timedelta) -> None:
        interval = min(max(retention.total_seconds() / 10, 1.0), 3600.0)
        async for _ in trio_util.periodic(interval):
            try:
                await self.purge(retention)
            except Exception:
                logger.exception("retention purge failed; will retry")


# -- open_engine ----------------------------------------------------------------------


@asynccontextmanager
async def _running(
    store: Storage,
    nursery: trio.Nursery,
    registry: dict[str, type[Workflow]],
    options: _Options,
    built: list[Engine],
) -> AsyncIterator[Engine]:
    """Build the engine in the root nursery, recover, yield; on exit, stop every task."""
    engine = Engine(storage=store, nursery=nursery, options=options, registry=registry)
    built.append(engine)
    for handler in options.handlers:
        engine.subscribe(handler)
    await store.register_engine(
        engine.engine_id,
        now=engine.clock.now(),
        info={"host": socket.gethostname(), "pid": os.getpid()},
    )
    await store.reap_engines(now=engine.clock.now())
    recovered = await claim_now(engine)
    engine.bus.emit(
        "runner.init",
        {"recovered": float(recovered)},
        {"storage": type(store).__name__, "engine_id": engine.engine_id},
    )
    nursery.start_soon(claim_loop, engine, name="claims")
    nursery.start_soon(renew_loop, engine, name="heartbeat")
    if options.retention is not None:
        nursery.start_soon(engine._retention_loop, options.retention)
    token = current_engine.set(engine)
    try:
        yield engine
    finally:
        current_engine.reset(token)
        engine._closed = True
        nursery.cancel_scope.cancel()


async def _first_of(signal: trio.Event, storage: Storage, seen: int) -> int:
    """Wait until ``signal`` is set or the storage reports a change; the change counter."""
    result = seen
    async with trio.open_nursery() as nursery:

        async def on_signal() -> None:
            await signal.wait()
            nursery.cancel_scope.cancel()

        async def on_change() -> None:
            nonlocal result
            result = await storage.wait_for_change(seen)
            nursery.cancel_scope.cancel()

        nursery.start_soon(on_signal)
        nursery.start_soon(on_change)
    return result


_signals: weakref.WeakKeyDictionary[Storage, dict[str, trio.Event]] = weakref.WeakKeyDictionary()
"""Per storage object: run id -> event set when an engine here claims or ends the run."""

_users: weakref.WeakKeyDictionary[Storage, int] = weakref.WeakKeyDictionary()
"""Engines of this process using each storage object (engines may share one)."""


@asynccontextmanager
async def _opened(store: Storage) -> AsyncIterator[None]:
    """Open ``store`` for an engine; close it when the last engine using it leaves."""
    count = _users.get(store, 0)
    if count == 0:
        await store.open()
    _users[store] = count + 1
    try:
        yield
    finally:
        _users[store] -= 1
        if _users[store] == 0:
            del _users[store]
            with trio.CancelScope(shield=True):
                await store.close()


async def _release(store: Storage, engine: Engine | None) -> None:
    """Clean shutdown: hand every lease back so a peer takes over at once."""
    if engine is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(10):
        try:
            await store.release_all(engine.engine_id, now=engine.clock.now())
            await store.unregister_engine(engine.engine_id)
        except Exception:
            logger.exception("could not release leases at shutdown; they will expire")


def _positive(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidValue(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_age_or_time(name: str, value: Any) -> None:
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise InvalidValue(f"{name} must be an age >= 0 or a datetime, got {value!r}")
        return
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidValue(
                f"{name} must be timezone-aware (e.g. datetime.now(UTC)), got naive {value!r}"
            )
        return
    raise InvalidValue(
        f"{name} must be a timedelta (an age) or an aware datetime, got {type(value).__name__} "
        f"{value!r}"
    )


@asynccontextmanager
async def open_engine(
    storage: Storage | None = None,
    workflows: Iterable[type[Workflow]] = (),
    *,
    restart_policy: RestartPolicy | None = None,
    inbox_size: int = 64,
    handlers: Iterable[Handler] = (),
    retention: timedelta | None = None,
    wall_clock: Any = None,
    rng: random.Random | None = None,
    lease_ttl: float = 30.0,
    lease_renewal: float = 5.0,
) -> AsyncIterator[Engine]:
    """Open storage, claim every run that needs a driver, and yield the running engine.

    Several engines (in this process or others) may share one storage; each
    run is driven by one of them at a time. Leaving the block cancels every
    run's task and releases their leases, so a peer takes over at once; what
    was persisted stays.

    Args:
        storage: defaults to a fresh ``MemoryStorage``.
        workflows: every workflow the engine may run; it claims only these.
        restart_policy: restart intensity per run (default ``RestartPolicy()``).
        inbox_size: unapplied resumes a run may hold before ``Backpressure``.
        handlers: event handlers attached before ``runner.init`` fires.
        retention: purge terminal runs older than this in the background.
        wall_clock: a ``() -> datetime`` for record timestamps (default: wall
            time advanced by Trio's clock).
        rng: randomness for retry jitter (inject one for determinism).
        lease_ttl: seconds a lease lasts unless renewed; a dead engine's runs
            are taken over after this (at once when the storage can prove it dead).
        lease_renewal: seconds between renewals; must be below ``lease_ttl``.

    Synopsis::

        async with open_engine(storage=SQLiteStorage("app.db"), workflows=[OrderFlow]) as engine:
            iid = await engine.start_instance(OrderFlow, {"items": 3}, id="orderid::abc123")
            final = await engine.wait(iid)
    """
    if retention is not None and (
        not isinstance(retention, timedelta) or retention <= timedelta(0)
    ):
        raise InvalidValue(
            f"retention must be a positive timedelta (e.g. timedelta(days=7)) or None, "
            f"got {retention!r}"
        )
    if isinstance(inbox_size, bool) or not isinstance(inbox_size, int) or inbox_size < 1:
        raise InvalidValue(f"inbox_size must be a positive int (1, 2, ...), got {inbox_size!r}")
    ttl = _positive("lease_ttl", lease_ttl)
    renewal = _positive("lease_renewal", lease_renewal)
    if renewal >= ttl:
        raise InvalidValue(
            f"lease_renewal ({renewal}s) must be shorter than lease_ttl ({ttl}s), or leases "
            "would lapse between renewals"
        )
    options = _Options(
        restart_policy=restart_policy or RestartPolicy(),
        inbox_size=inbox_size,
        handlers=tuple(handlers),
        retention=retention,
        wall_clock=wall_clock,
        rng=rng or random.Random(),
        lease_ttl=ttl,
        lease_renewal=renewal,
    )
    registry: dict[str, type[Workflow]] = {}
    for workflow in workflows:  # bad input fails here, before anything is opened
        _register(registry, workflow)
    store: Storage = storage if storage is not None else MemoryStorage()
    raised_in_block: list[BaseException] = []
    built: list[Engine] = []
    try:
        async with _opened(store):
            try:
                async with trio.open_nursery() as nursery:
                    try:
                        async with _running(store, nursery, registry, options, built) as engine:
                            yield engine
                    except BaseException as exc:  # re-raised at once; unwrapped below
                        raised_in_block.append(exc)
                        raise
            finally:
                await _release(store, built[0] if built else None)
    except BaseExceptionGroup as group:
        # The root nursery wraps whatever its body raised: a failed recovery,
        # or the caller's own block. Give it back as it was raised, so
        # `except SomeError` around the block works, unless the engine's
        # tasks failed too (then the whole group matters).
        if raised_in_block and list(group.exceptions) == raised_in_block:
            raise raised_in_block[0] from None
        raise
