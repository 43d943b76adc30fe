"""One incarnation of one run: its child nursery, its mailbox loop, its writes.

The loop is the single writer of the run's state. Step tasks, timer tasks
and engine calls only send messages; the loop applies each one with the pure
engine functions, persists the result (the write *is* the transition: state
only changes in memory after the storage accepted it) and then starts
whatever the new state asks for: newly active steps, newly armed timers.

The loop ends when the run is terminal, when the engine cancels it, or when
the run *hibernates*: every active step parked, no timer armed, nothing in
flight. A hibernating run keeps no task; a resume wakes it.

It is one module, above the house aim of 400 lines, because it is one
object: the incarnation is the single writer of a run's state, and each
message handler is a few lines that only make sense next to ``commit``,
``_reconcile`` and ``_hibernate``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._errors import HephaestusError, InstanceRestarted, UndeclaredEvent, UnknownWorkflow
from ..core import _engine as pure
from ..core._instance import ErrorRecord, Instance, Status, TimerRecord
from ..core._step import Complete, Fail, Suspend
from ..core._workflow import Workflow
from ._messages import (
    ArmTimer,
    Message,
    Poke,
    Resume,
    StepCrashed,
    StepFinished,
    TimerCancelled,
    TimerFired,
)
from ._runner import Runner
from ._step_runner import run_step
from ._timers import TimerHandle, run_timer

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["run_incarnation"]

logger = logging.getLogger("hephaestus_trio.runtime")


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )


class _Incarnation:
    def __init__(
        self, engine: Engine, runner: Runner, instance: Instance, workflow: type[Workflow]
    ):
        self.engine = engine
        self.runner = runner
        self.workflow = workflow
        self.instance = instance
        runner.instance = instance
        self.nursery: trio.Nursery | None = None
        self.inline: str | None = None
        # After a crash of the previous incarnation its step and timer tasks
        # died with its nursery: forget them, so that _reconcile starts them
        # again from the persisted state. Timer handles are kept (a caller of
        # schedule_resume may hold one) and re-armed with a fresh scope, already
        # cancelled if cancel() was called while the run was restarting.
        runner.executing.clear()
        self.revived: dict[TimerRecord, TimerHandle] = {}
        for record, handle in runner.timers.items():
            scope = trio.CancelScope()
            if handle._scope.cancel_called:
                scope.cancel()
            handle._scope = scope
            self.revived[record] = handle
        runner.timers.clear()
        # One mailbox for everything: engine casts use send_nowait (a full
        # mailbox is the caller's Backpressure), the run's own step and timer
        # tasks use send and simply wait. Its size is the engine's inbox_size:
        # the number of casts a busy run may hold before refusing more.
        self.send, self.recv = trio.open_memory_channel[Message](engine.inbox_size)

    # -- plumbing ----------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        return self.runner.metadata

    def emit(self, name: str, measurements: dict[str, float], **extra: Any) -> None:
        bus = self.engine.bus
        if bus.wants(name):
            bus.emit(name, measurements, {**self.meta, **extra})

    async def commit(self, new: Instance, consume: Sequence[int] = ()) -> None:
        """Persist ``new``; only then does it become the run's state."""
        old = self.instance
        if new.is_terminal:
            consume = [*consume, *self.runner.pending]
        await self.engine.storage.put(new, consume=consume)
        for seq in consume:
            self.runner.applied.add(seq)
            self.runner.pending.pop(seq, None)
        self.instance = new
        self.runner.instance = new
        if new.is_terminal:
            # Readers may see the terminal state from now on (engine.wait does):
            # the run must not count as live from the same moment.
            self.engine._unregister(self.runner)
        if new.is_terminal and self.runner.pending:
            await self._drop_late_resumes()
        if old.status is not new.status or old.active_steps != new.active_steps:
            self.emit(
                "workflow.transition",
                {},
                from_status=old.status.value,
                to_status=new.status.value,
                active_steps=sorted(new.active_steps),
            )

    async def _drop_late_resumes(self) -> None:
        """Delete resumes accepted while the final write was in flight: they can never
        apply (``Engine.resume`` refuses any that arrive once the run is terminal)."""
        for seq in sorted(self.runner.pending):
            try:
                await self.engine.storage.delete_resume(seq)
            except Exception:
                logger.exception("%s: could not drop late resume %d", self.instance.id, seq)
                return
            self.runner.pending.pop(seq, None)
            self.runner.applied.add(seq)

    # -- main loop ---------------------------------------------------------

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        runner = self.runner
        backlog = await self.engine.storage.pending_resumes(runner.run_id)
        for record in backlog:
            if record.seq not in runner.applied:
                runner.pending.setdefault(record.seq, record)
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                runner.mailbox = self.send
                task_status.started()
                runner.state.value = "ready"
                if self.instance.status is Status.PENDING:
                    started = trio.current_time()
                    at = self.engine.clock.now()
                    await self.commit(pure.advance(self.instance, workflow=self.workflow, at=at))
                    self.emit("engine.advance", {"duration": trio.current_time() - started})
                await self._apply_pending()
                self._reconcile()
                while not self.instance.is_terminal and not self._hibernate():
                    if self.inline is not None:
                        message = await self._run_inline(self.inline)
                    else:
                        message = await self.recv.receive()
                    await self._handle(message)
                    await self._apply_pending()
                    self._reconcile()
                nursery.cancel_scope.cancel()
                if self.instance.is_terminal:
                    # Announced after the step events of the final transition.
                    self.engine._finished(self.instance)
        finally:
            runner.mailbox = None
            self._drain()

    def _drain(self) -> None:
        """Answer calls whose messages this incarnation will never read."""
        while True:
            try:
                message = self.recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            if isinstance(message, ArmTimer):
                self.runner.reserving -= 1
                message.error = InstanceRestarted(self.instance.id)
                message.handle._armed.set()
        self.recv.close()

    async def _apply_pending(self) -> None:
        """Apply accepted resumes in acceptance order (they are the source of truth;
        the ``Resume`` messages are only doorbells)."""
        while self.runner.pending and not self.instance.is_terminal:
            seq = min(self.runner.pending)
            await self._on_resume(self.runner.pending[seq])

    def _hibernate(self) -> bool:
        """Whether the run may give up its task now (checked with no await in between)."""
        runner = self.runner
        if runner.executing or runner.timers or runner.reserving or runner.pending:
            return False
        if self.instance.status is not Status.WAITING:
            return False
        self.engine._hibernated(runner)
        return True

    async def _handle(self, message: Message) -> None:
        if isinstance(message, StepFinished):
            self.runner.executing.pop(message.step, None)
            await self._on_step_finished(message)
        elif isinstance(message, StepCrashed):
            self.runner.executing.pop(message.step, None)
            await self._on_step_crashed(message)
        elif isinstance(message, Resume):
            pass  # a doorbell: _apply_pending runs after every message
        elif isinstance(message, TimerFired):
            self.runner.timers.pop(message.record, None)
            await self._on_timer_fired(message.record)
        elif isinstance(message, TimerCancelled):
            self.runner.timers.pop(message.record, None)
            if message.record in self.instance.timers:
                await self.commit(
                    pure.remove_timer(self.instance, message.record, at=self.engine.clock.now())
                )
        elif isinstance(message, ArmTimer):
            self.runner.reserving -= 1  # the caller handed its reservation to us
            await self._on_arm_timer(message)
        else:
            assert isinstance(message, Poke)

    def _reconcile(self) -> None:
        """Start tasks for running steps and armed timers the state has and we do not."""
        assert self.nursery is not None
        inst = self.instance
        if inst.is_terminal:
            return
        definition = self.workflow.definition()
        to_start = sorted(inst.running_steps - set(self.runner.executing))
        if (
            len(to_start) == 1
            and inst.active_steps == {to_start[0]}
            and not inst.timers
            and not self.runner.executing
            and not self.runner.timers
        ):
            # The run's only active step, with nothing parked and no timer: no
            # resume, timer or other step can need the loop while it runs, so it
            # runs inline in the loop task instead of costing a task of its own.
            self.inline = to_start[0]
            self.runner.executing[self.inline] = trio.CancelScope()
            to_start = []
        for key in to_start:
            scope = trio.CancelScope()
            self.runner.executing[key] = scope
            self.nursery.start_soon(self._run_step, key, definition.steps[key], scope)
        for record in inst.timers:
            if record not in self.runner.timers:
                revived = self.revived.pop(record) if record in self.revived else None
                self._arm(revived or TimerHandle(record))
        for record, handle in list(self.runner.timers.items()):
            if record not in inst.timers:
                del self.runner.timers[record]
                handle._discard()

    async def _run_step(self, key: str, step_cls: Any, scope: trio.CancelScope) -> None:
        with scope:
            await self._attempts(key, step_cls, self.send.send)

    async def _run_inline(self, key: str) -> Message:
        self.inline = None
        reported: list[Message] = []

        async def keep(message: Message) -> None:
            reported.append(message)

        with self.runner.executing[key]:
            await self._attempts(key, self.workflow.definition().steps[key], keep)
        # Nothing reported only if that step's own scope was cancelled: the loop
        # then just re-examines the state.
        return reported[0] if reported else Poke()

    async def _attempts(
        self, key: str, step_cls: Any, report: Callable[[Message], Awaitable[None]]
    ) -> None:
        await run_step(
            step_key=key,
            step_cls=step_cls,
            config=self.instance.step_configs.get(key),
            snapshot=lambda: self.instance,
            report=report,
            emit=self.engine.bus.emit,
            metadata=self.meta,
            rng=self.engine.rng,
        )

    def _arm(self, handle: TimerHandle) -> None:
        assert self.nursery is not None
        self.runner.timers[handle.record] = handle
        deadline = self.engine.clock.deadline(handle.record.fire_at)
        self.nursery.start_soon(run_timer, handle, deadline, self.send)
        handle._armed.set()

    # -- transitions -------------------------------------------------------

    def _fail_record(
        self, kind: str, step: str | None, exc: BaseException, attempt: int | None = None
    ) -> ErrorRecord:
        return ErrorRecord(
            kind=kind,
            message=str(exc) or repr(exc),
            step=step,
            exception_type=_qualname(exc),
            attempt=attempt,
        )

    async def _fail(self, error: ErrorRecord) -> None:
        await self.commit(pure.fail(self.instance, error, at=self.engine.clock.now()))

    async def _complete(
        self,
        step: str,
        event: str,
        *,
        updates: Any = None,
        metadata: Any = None,
        attempt: int = 1,
        consume: Sequence[int] = (),
    ) -> bool:
        """Apply one completion with the pure engine and persist it; False if it failed the run."""
        at = self.engine.clock.now()
        started = trio.current_time()
        wf = self.workflow
        try:
            new = pure.complete_step(
                self.instance, step, event, updates, metadata, at=at, attempt=attempt, workflow=wf
            )
            new = pure.activate_transitions(new, step, event, at=at, workflow=wf)
            new = pure.check_completion(new, workflow=wf, at=at)
        except UndeclaredEvent as exc:
            await self.commit(
                pure.fail(self.instance, self._fail_record("undeclared_event", step, exc), at=at),
                consume,
            )
            return False
        except HephaestusError as exc:
            await self.commit(
                pure.fail(self.instance, self._fail_record("definition", step, exc), at=at),
                consume,
            )
            return False
        except Exception as exc:
            # A route function or JSON-unsafe updates: deterministic, so not retried.
            await self.commit(
                pure.fail(self.instance, self._fail_record("crash", step, exc, attempt), at=at),
                consume,
            )
            return False
        await self.commit(new, consume)
        self.emit("engine.advance", {"duration": trio.current_time() - started}, step=step)
        return True

    async def _on_step_finished(self, message: StepFinished) -> None:
        step, result = message.step, message.result
        if self.instance.is_terminal or step not in self.instance.running_steps:
            return
        measurements = {"duration": message.duration, "attempt": float(message.attempt)}
        if isinstance(result, Complete):
            if await self._complete(
                step,
                result.event,
                updates=result.updates,
                metadata=result.metadata,
                attempt=message.attempt,
            ):
                self.emit("step.stop", measurements, step=step, event=result.event)
        elif isinstance(result, Suspend):
            await self._park(step, result, measurements)
        else:
            assert isinstance(result, Fail)
            error = ErrorRecord(kind="failure", message=result.reason, step=step)
            self.emit("step.stop", measurements, step=step, event=None, failed=True)
            await self._fail(error)

    async def _park(self, step: str, result: Suspend, measurements: dict[str, float]) -> None:
        at = self.engine.clock.now()
        timer = None
        if result.after is not None:
            declared = (
                self.workflow.definition()
                .steps[step]
                .declared_events(self.instance.step_configs.get(step))
            )
            if result.event not in declared:
                exc = UndeclaredEvent(step, result.event, declared)
                await self._fail(self._fail_record("undeclared_event", step, exc))
                return
            timer = TimerRecord(
                step=step, event=result.event, fire_at=self.engine.clock.after(result.after)
            )
        await self.commit(pure.park(self.instance, step, timer=timer, at=at))
        self.emit(
            "step.async", measurements, step=step, timer=None if timer is None else result.after
        )

    async def _on_step_crashed(self, message: StepCrashed) -> None:
        if self.instance.is_terminal:
            return
        kind = "timeout" if message.timed_out else "crash"
        await self._fail(self._fail_record(kind, message.step, message.error, message.attempt))

    async def _on_resume(self, record: Any) -> None:
        runner = self.runner
        if record.seq in runner.applied:
            runner.pending.pop(record.seq, None)
            return
        if record.step not in self.instance.waiting_steps:
            # The step was completed meanwhile (its timer won the race): drop it.
            await self.engine.storage.delete_resume(record.seq)
            runner.pending.pop(record.seq, None)
            runner.applied.add(record.seq)
            logger.info(
                "%s: dropped resume %r for step %r: no longer parked",
                self.instance.id,
                record.event,
                record.step,
            )
            return
        step_cls = self.workflow.definition().steps[record.step]
        event = step_cls.resume_event(self.instance.step_configs.get(record.step), record.event)
        if event is None:
            event = record.event  # _complete fails the run with UndeclaredEvent
        if await self._complete(record.step, event, consume=[record.seq]):
            self.emit("step.resume", {}, step=record.step, event=event)

    async def _on_timer_fired(self, record: TimerRecord) -> None:
        if self.instance.is_terminal or record not in self.instance.timers:
            return
        if record.step not in self.instance.waiting_steps:
            await self.commit(pure.remove_timer(self.instance, record, at=self.engine.clock.now()))
            return
        # Like a resume: a WaitForEvent's event_name is delivered as "received".
        step_cls = self.workflow.definition().steps[record.step]
        config = self.instance.step_configs.get(record.step)
        event = step_cls.resume_event(config, record.event) or record.event
        if await self._complete(record.step, event):
            self.emit("step.resume", {}, step=record.step, event=event, timer=True)

    async def _on_arm_timer(self, message: ArmTimer) -> None:
        try:
            new = pure.add_timer(self.instance, message.record, at=self.engine.clock.now())
        except HephaestusError as exc:
            message.error = exc
            message.handle._armed.set()
            return
        armed = False
        try:
            await self.commit(new)
            self._arm(message.handle)
            armed = True
        finally:
            if not armed:
                # This incarnation dies before arming it: answer the waiting caller.
                message.error = InstanceRestarted(self.instance.id)
                message.handle._armed.set()


async def run_incarnation(
    engine: Engine, runner: Runner, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Load the run's last persisted state and drive it until it stops or hibernates."""
    instance = await engine.storage.get(runner.run_id)
    if instance is None or instance.is_terminal:
        task_status.started()
        return
    try:
        workflow = engine.workflow_for(instance)
    except UnknownWorkflow:
        # Not a crash: restarting cannot help, and failing the run would
        # destroy it for want of a class. Leave it as persisted for an engine
        # that is given its workflow.
        logger.exception("run %s cannot run here; left as persisted", instance.id)
        task_status.started()
        return
    runner.metadata = engine.metadata_for(instance)
    incarnation = _Incarnation(engine, runner, instance, workflow)
    await incarnation.run(task_status=task_status)
