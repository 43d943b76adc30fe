"""``open_engine`` and the running ``Engine``: the root nursery and the public calls.

The running engine owns a root nursery. Each live run gets a supervisor task
there (``_supervisor.supervise``), which runs incarnations of the run in a
cancel scope, each with its own child nursery for step and timer tasks. Runs
with nothing to do (all steps parked, no timer) have no task at all; engine
calls wake them.

This module is longer than the house aim of 400 lines on purpose: every
method of ``Engine`` works on the same three private tables (runners, per-run
locks, terminal signals) and the same reservation protocol with
``_runner.Runner``; split across modules they would have to be shared
mutable state, which is harder to reason about than one longer file.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, final

import attrs
import trio
import trio_util

from .._errors import (
    AlreadyRunning,
    AmbiguousInstance,
    Backpressure,
    EngineClosed,
    InstanceNotFound,
    InvalidResume,
    NotCancellable,
    UnknownWorkflow,
    WorkflowDefinitionError,
)
from ..core import _engine as pure
from ..core._facade import current_engine
from ..core._instance import Instance, Status, TimerRecord
from ..core._policies import RestartPolicy
from ..core._workflow import Workflow
from ..observability._bus import EventBus, Handler
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage, UniqueViolation
from ._clock import WallClock
from ._messages import ArmTimer, Resume
from ._runner import Runner
from ._supervisor import supervise
from ._timers import TimerHandle

__all__ = ["Engine", "open_engine"]

logger = logging.getLogger("hephaestus_trio.runtime")

LIVE = (Status.PENDING, Status.RUNNING, Status.WAITING)


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
        restart_policy: RestartPolicy,
        inbox_size: int,
        clock: WallClock,
        rng: random.Random,
    ) -> None:
        self.storage = storage
        self.restart_policy = restart_policy
        self.inbox_size = inbox_size
        self.clock = clock
        self.rng = rng
        self.bus = EventBus()
        self._nursery = nursery
        self._workflows: dict[str, type[Workflow]] = {}
        self._runners: dict[str, Runner] = {}
        self._locks: dict[str, trio.Lock] = {}
        self._terminal: dict[str, trio.Event] = {}
        self._closed = False

    # -- registry --------------------------------------------------------

    def register(self, workflow: type[Workflow]) -> None:
        """Make ``workflow`` (and every version of a dispatcher) known to this engine.

        Raises:
            TypeError: ``workflow`` is not a ``Workflow`` subclass.
            WorkflowDefinitionError: another class is registered under the same
                name (runs record only the name, so they could run the wrong one).
        """
        _register(self._workflows, workflow)

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

    # -- lifecycle hooks used by the runtime -----------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("this engine is closed; open a new one with open_engine()")

    def _spawn(self, run_id: str) -> Runner:
        runner = self._runners.get(run_id)
        if runner is None:
            runner = Runner(run_id)
            self._runners[run_id] = runner
            self._nursery.start_soon(supervise, self, runner, name=f"run {run_id}")
        return runner

    def _unregister(self, runner: Runner) -> None:
        if self._runners.get(runner.run_id) is runner:
            del self._runners[runner.run_id]

    def _hibernated(self, runner: Runner) -> None:
        self._unregister(runner)

    def _finished(self, instance: Instance) -> None:
        meta = self.metadata_for(instance)
        if instance.status is Status.FAILED:
            self.bus.emit("workflow.exception", {}, {**meta, "error": str(instance.error)})
        duration = (instance.updated_at - instance.created_at).total_seconds()
        self.bus.emit(
            "workflow.stop", {"duration": duration}, {**meta, "status": instance.status.value}
        )
        event = self._terminal.pop(instance.run_id, None)
        if event is not None:
            event.set()

    @asynccontextmanager
    async def _exclusive(self, run_id: str) -> AsyncIterator[None]:
        """Serialize the engine calls that wake, feed or stop one run.

        Locks exist only while someone holds or awaits them, so a long-lived
        engine does not keep one per run it ever touched.
        """
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = trio.Lock()
        try:
            async with lock:
                yield
        finally:
            if not lock.locked() and not lock.statistics().tasks_waiting:
                self._locks.pop(run_id, None)

    async def _claim(self, run_id: str) -> Runner | None:
        """A ready runner for ``run_id``, woken if hibernating; ``None`` if the run stopped.

        On success the caller holds a reservation and must ``release()`` it or
        hand it over with a message.
        """
        runner = self._spawn(run_id)
        runner.reserving += 1
        claimed = False
        try:
            await runner.state.wait_value(lambda s: s != "starting")
            claimed = runner.state.value != "stopped"
        finally:
            if not claimed:  # stopped, or the caller was cancelled while waiting
                runner.release()
        return runner if claimed else None

    # -- lookups ---------------------------------------------------------

    def _matches(self, instance: Instance, workflow: str | None) -> bool:
        return workflow is None or workflow in (instance.workflow, self._family(instance))

    async def _runs(self, id: str, workflow: str | None) -> list[Instance]:
        runs = [i for i in await self.storage.query(id=id) if self._matches(i, workflow)]
        if not runs:
            raise InstanceNotFound(id)
        return runs

    async def _live_run(self, id: str, workflow: str | None) -> tuple[Instance | None, Instance]:
        """(live run or None, most recent run) for business id ``id``."""
        runs = await self._runs(id, workflow)
        live = [i for i in runs if i.status.is_live]
        if len(live) > 1:
            raise AmbiguousInstance(id, tuple(sorted(i.workflow for i in live)))
        return (live[0] if live else None), runs[-1]

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
        """Persist a new run and start it; returns its id.

        Raises:
            AlreadyRunning: a live run holds this id in the workflow's scope.
            ValueError: unknown ``version`` (the message lists the known ones), empty id.
            TypeError: JSON-unsafe ``context`` (the message names the key path).
        """
        self._check_open()
        if not isinstance(id, str) or not id:
            raise ValueError(f"id must be a non-empty string, got {id!r}")
        self.register(workflow)
        chosen = workflow.resolve_version(version, {"id": id, "context": context})
        instance = Instance.new(
            chosen,
            context,
            id=id,
            version=chosen.version,
            now=self.clock.now(),
            telemetry_metadata=telemetry_metadata,
            unique_key=chosen.constraint_key(id),
        )
        try:
            await self.storage.put(instance)
        except UniqueViolation as exc:
            raise AlreadyRunning(id, chosen.family, chosen.unique.scope) from exc
        self.bus.emit("workflow.start", {}, self.metadata_for(instance))
        self._spawn(instance.run_id)
        return instance.id

    async def resume(
        self, id: str, event: str, step: str | None = None, *, workflow: str | None = None
    ) -> None:
        """Cast ``event`` to the live run of ``id``; returns once it is accepted.

        Accepted means recorded in the storage (durably, on a durable backend)
        and queued; the step's completion happens afterwards, in the run's task.

        Raises:
            InstanceNotFound: no run has this id.
            InvalidResume: the run is terminal, or no parked step accepts ``event``,
                or several do and ``step=`` was not given, or the step already
                has a pending resume.
            AmbiguousInstance: several live runs share ``id``; pass ``workflow=``.
            Backpressure: the run's inbox is full; nothing was recorded.
            UnknownWorkflow: this engine was not given the run's workflow.
        """
        self._check_open()
        live, latest = await self._live_run(id, workflow)
        if live is None:
            raise InvalidResume(id, event, f"the instance is {latest.status.value}")
        self.workflow_for(live)  # UnknownWorkflow, before anything is touched
        run_id = live.run_id
        async with self._exclusive(run_id):
            runner = await self._claim(run_id)
            if runner is None:
                current = await self.storage.get(run_id)
                status = current.status.value if current else "gone"
                raise InvalidResume(id, event, f"the instance is {status}")
            handed_over = False
            try:
                instance = runner.instance
                assert instance is not None
                chosen = self._pick_step(instance, event, step, runner.claimed_steps)
                if len(runner.pending) >= self.inbox_size or runner.mailbox_full():
                    raise Backpressure(id, self.inbox_size)
                record = await self.storage.add_resume(run_id, chosen, event, self.clock.now())
                current = runner.instance
                if current is not None and current.is_terminal:
                    # The run ended (a timer won) while the resume was being recorded.
                    await self.storage.delete_resume(record.seq)
                    raise InvalidResume(id, event, f"the instance is {current.status.value}")
                runner.pending[record.seq] = record
                runner.reserving -= 1
                handed_over = True
                runner.post(Resume(record))
            finally:
                if not handed_over:
                    runner.release()

    def _pick_step(
        self, instance: Instance, event: str, step: str | None, claimed: set[str]
    ) -> str:
        workflow = self.workflow_for(instance)
        definition = workflow.definition()
        if instance.is_terminal:
            raise InvalidResume(instance.id, event, f"the instance is {instance.status.value}")
        if step is not None:
            if step not in definition.steps:
                raise InvalidResume(instance.id, event, f"{workflow.__name__} has no step {step!r}")
            if step not in instance.waiting_steps:
                raise InvalidResume(instance.id, event, f"step {step!r} is not parked")
            candidates = [step]
        else:
            candidates = sorted(instance.waiting_steps)
            if not candidates:
                raise InvalidResume(instance.id, event, "no step is parked")
        accepting = [
            key
            for key in candidates
            if definition.steps[key].resume_event(instance.step_configs.get(key), event) is not None
        ]
        if not accepting:
            declared = {
                k: list(definition.steps[k].declared_events(instance.step_configs.get(k)))
                for k in candidates
            }
            raise InvalidResume(
                instance.id, event, f"no parked step declares {event!r} (parked: {declared})"
            )
        if len(accepting) > 1:
            raise InvalidResume(
                instance.id,
                event,
                f"ambiguous: parked steps {accepting} all accept it; pass step=",
            )
        if accepting[0] in claimed:
            raise InvalidResume(
                instance.id, event, f"step {accepting[0]!r} already has a pending resume"
            )
        return accepting[0]

    async def schedule_resume(
        self,
        id: str,
        step: str,
        delay: float,
        *,
        event: str = "timeout",
        workflow: str | None = None,
    ) -> TimerHandle:
        """Arm a durable timer that resumes parked ``step`` with ``event`` after ``delay`` s.

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``resume``.
            InvalidResume: the run is terminal, the step is not parked, or it
                does not declare ``event``.
            UnknownWorkflow: this engine was not given the run's workflow.
            ValueError: ``delay`` is negative or not a number.
        """
        self._check_open()
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        live, latest = await self._live_run(id, workflow)
        if live is None:
            raise InvalidResume(id, event, f"the instance is {latest.status.value}")
        self.workflow_for(live)  # UnknownWorkflow, before anything is touched
        async with self._exclusive(live.run_id):
            runner = await self._claim(live.run_id)
            if runner is None:
                raise InvalidResume(id, event, "the instance stopped")
            instance = runner.instance
            assert instance is not None
            handed_over = False
            try:
                if step not in instance.waiting_steps:
                    raise InvalidResume(id, event, f"step {step!r} is not parked")
                step_cls = self.workflow_for(instance).step(step)
                if step_cls.resume_event(instance.step_configs.get(step), event) is None:
                    raise InvalidResume(id, event, f"step {step!r} does not declare {event!r}")
                record = TimerRecord(step=step, event=event, fire_at=self.clock.after(delay))
                handle = TimerHandle(record)
                message = ArmTimer(record, handle)
                if not runner.post(message):
                    raise Backpressure(id, self.inbox_size)
                handed_over = True  # the loop takes over the reservation
            finally:
                if not handed_over:
                    runner.release()
        await handle._armed.wait()
        if message.error is not None:
            raise message.error
        return handle

    async def cancel(self, id: str, *, workflow: str | None = None) -> Instance:
        """Stop the live run of ``id`` for good; returns it, ``cancelled``.

        Its steps and timers are cancelled at once and no step runs afterwards.

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``resume``.
            NotCancellable: the run is already completed, failed or cancelled.
        """
        self._check_open()
        live, latest = await self._live_run(id, workflow)
        if live is None:
            raise NotCancellable(id, latest.status.value)
        run_id = live.run_id
        async with self._exclusive(run_id):
            runner = self._runners.get(run_id)
            if runner is not None:
                runner.cancel_requested = True
                if runner.scope is not None:
                    runner.scope.cancel()
                await runner.stopped.wait()
            persisted = False
            try:
                current = await self.storage.get(run_id)
                if current is None:
                    raise InstanceNotFound(id)
                cancelled = pure.cancel(current, at=self.clock.now())
                pending = [r.seq for r in await self.storage.pending_resumes(run_id)]
                await self.storage.put(cancelled, consume=pending)
                persisted = True
            finally:
                if not persisted and not self._closed:
                    # The run was stopped but not cancelled (the storage failed):
                    # restart it from its last persisted state, or its timers and
                    # running steps would wait for the next engine.
                    self._spawn(run_id)
        self.bus.emit("instance.cancel", {}, self.metadata_for(cancelled))
        self._finished(cancelled)
        return cancelled

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
            ValueError: an unknown status.
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

        Raises:
            InstanceNotFound, AmbiguousInstance: as for ``get``.
            trio.TooSlowError: ``timeout`` seconds passed first.
        """
        self._check_open()
        live, latest = await self._live_run(id, workflow)
        if live is None:
            await trio.lowlevel.checkpoint()
            return latest
        run_id = live.run_id
        with trio.fail_after(timeout if timeout is not None else float("inf")):
            while True:
                signal = self._terminal.setdefault(run_id, trio.Event())
                current = await self.storage.get(run_id)
                if current is None:
                    raise InstanceNotFound(id)
                # A durable write is visible before its writer resumes: while the
                # run's task still holds it, wait for the task to announce the end.
                if current.is_terminal and run_id not in self._runners:
                    return current
                await signal.wait()

    def subscribe(self, handler: Handler, events: Iterable[str] | None = None) -> Any:
        """Call ``handler(event)`` for each event (or only those named); returns an unsubscribe.

        A handler that raises is logged and detached; it never affects a run.
        """
        return self.bus.subscribe(handler, events)

    async def purge(self, older_than: timedelta | datetime) -> int:
        """Delete terminal runs last updated before ``older_than`` (an age or a time)."""
        self._check_open()
        cutoff = self.clock.now() - older_than if isinstance(older_than, timedelta) else older_than
        return await self.storage.purge(cutoff)

    @property
    def live_tasks(self) -> int:
        """Runs that currently have a task (parked runs without timers have none)."""
        return len(self._runners)

    # -- startup ---------------------------------------------------------

    async def _recover(self) -> tuple[int, int]:
        live = await self.storage.query(status_in=LIVE)
        live_ids = {i.run_id for i in live}
        with_resumes: set[str] = set()
        for record in await self.storage.pending_resumes():
            if record.run_id in live_ids:
                with_resumes.add(record.run_id)
                continue
            run = await self.storage.get(record.run_id)
            if run is not None and run.is_terminal:
                # Accepted just as its run ended, by an engine that died before it
                # could drop it: it can never apply.
                await self.storage.delete_resume(record.seq)
        started = hibernating = 0
        for instance in live:
            if instance.workflow not in self._workflows:
                logger.error(
                    "run %s uses workflow %r, which this engine was not given; left as is",
                    instance.id,
                    instance.workflow,
                )
                continue
            idle = (
                instance.status is Status.WAITING
                and not instance.timers
                and instance.run_id not in with_resumes
            )
            if idle:
                hibernating += 1
            else:
                self._spawn(instance.run_id)
                started += 1
        return started, hibernating

    async def _retention_loop(self, retention: timedelta) -> None:
        interval = min(max(retention.total_seconds() / 10, 1.0), 3600.0)
        async for _ in trio_util.periodic(interval):
            try:
                await self.purge(retention)
            except Exception:
                logger.exception("retention purge failed; will retry")


@attrs.frozen
class _Options:
    restart_policy: RestartPolicy
    inbox_size: int
    handlers: tuple[Handler, ...]
    retention: timedelta | None
    wall_clock: Any
    rng: random.Random


@asynccontextmanager
async def _running(
    store: Storage,
    nursery: trio.Nursery,
    registry: dict[str, type[Workflow]],
    options: _Options,
) -> AsyncIterator[Engine]:
    """Build the engine in the root nursery, recover, yield; on exit, stop every task."""
    engine = Engine(
        storage=store,
        nursery=nursery,
        restart_policy=options.restart_policy,
        inbox_size=options.inbox_size,
        clock=WallClock(options.wall_clock),
        rng=options.rng,
    )
    for handler in options.handlers:
        engine.subscribe(handler)
    engine._workflows.update(registry)
    started, hibernating = await engine._recover()
    engine.bus.emit(
        "runner.init",
        {"recovered": float(started), "hibernating": float(hibernating)},
        {"storage": type(store).__name__},
    )
    if options.retention is not None:
        nursery.start_soon(engine._retention_loop, options.retention)
    token = current_engine.set(engine)
    try:
        yield engine
    finally:
        current_engine.reset(token)
        engine._closed = True
        nursery.cancel_scope.cancel()


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
) -> AsyncIterator[Engine]:
    """Open storage, recover every live run, and yield the running engine.

    Leaving the block cancels every run's task; what was persisted stays and
    the next ``open_engine`` on the same storage continues it.

    Args:
        storage: defaults to a fresh ``MemoryStorage``.
        workflows: every workflow the engine may run or recover.
        restart_policy: restart intensity per run (default ``RestartPolicy()``).
        inbox_size: casts a busy run may queue before ``Backpressure``.
        handlers: event handlers attached before ``runner.init`` fires.
        retention: purge terminal runs older than this in the background.
        wall_clock: a ``() -> datetime`` for record timestamps (default: wall
            time advanced by Trio's clock).
        rng: randomness for retry jitter (inject one for determinism).

    Synopsis::

        async with open_engine(storage=SQLiteStorage("app.db"), workflows=[OrderFlow]) as engine:
            iid = await engine.start_instance(OrderFlow, {"items": 3}, id="orderid::abc123")
            final = await engine.wait(iid)
    """
    if isinstance(inbox_size, bool) or not isinstance(inbox_size, int) or inbox_size < 1:
        raise ValueError(f"inbox_size must be a positive int, got {inbox_size!r}")
    options = _Options(
        restart_policy=restart_policy or RestartPolicy(),
        inbox_size=inbox_size,
        handlers=tuple(handlers),
        retention=retention,
        wall_clock=wall_clock,
        rng=rng or random.Random(),
    )
    registry: dict[str, type[Workflow]] = {}
    for workflow in workflows:  # bad input fails here, before anything is opened
        _register(registry, workflow)
    store: Storage = storage if storage is not None else MemoryStorage()
    # A backend whose data several engines must not run at once offers a lock.
    claim = getattr(store, "engine_lock", None)
    raised_in_block: list[BaseException] = []
    with claim() if claim is not None else contextlib.nullcontext():
        try:
            async with store, trio.open_nursery() as nursery:
                try:
                    async with _running(store, nursery, registry, options) as engine:
                        yield engine
                except BaseException as exc:  # re-raised at once; unwrapped below
                    raised_in_block.append(exc)
                    raise
        except BaseExceptionGroup as group:
            # The root nursery wraps whatever its body raised: a failed recovery,
            # or the caller's own block. Give it back as it was raised, so
            # `except SomeError` around the block works, unless the engine's
            # tasks failed too (then the whole group matters).
            if raised_in_block and list(group.exceptions) == raised_in_block:
                raise raised_in_block[0] from None
            raise
