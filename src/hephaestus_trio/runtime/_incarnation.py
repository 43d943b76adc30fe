"""One incarnation of one run: its child nursery, its loop, its fenced writes.

The loop is the only writer of the run's state, by construction: step tasks
only send messages, engine calls and other processes only add wakeup rows
(and poke). The loop applies each input with a pure decision function
(``core._decisions``), writes the result under the run's lease (the write *is*
the transition: state only changes in memory once the storage accepted it),
then starts whatever the new state asks for.

The loop ends when the run is terminal, when the run *hibernates* (every
active step parked, nothing executing: it releases its lease and keeps no
task, timers included, since timers are rows the engine watches), or when
the driver's scope is cancelled (lease lost, engine closing).

Before anything else, the loop checks that the registered definition is the
one the run started with (``decide.check_definition``). If it is not, the
run is *refused*: nothing is written (except a pending cancel request, which
needs no definition), the error is logged, and the lease is released with
the run offered again ``REFUSED_RETRY`` seconds later, so that an engine
with the run's own definition registered can take it meanwhile.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import trio

from .._errors import DefinitionMismatch, LeaseLost
from ..core import _decisions as decide
from ..core import _engine as pure
from ..core._instance import Instance, Status, TimerRecord
from ..core._workflow import Workflow
from ..storage._protocol import Wakeup, WakeupGone, WakeupKind
from ._messages import AttemptFailed, Message, Poke, StepCrashed, StepFinished
from ._runs import AppliedResume, RunEntry
from ._step_runner import run_step

if TYPE_CHECKING:
    from ._open_engine import Engine

__all__ = ["REFUSED_RETRY", "Incarnation", "StorageFault"]

logger = logging.getLogger("hephaestus_trio.runtime")

_T = TypeVar("_T")
_P = ParamSpec("_P")

REFUSED_RETRY = 60.0
"""Seconds before a run refused for a definition mismatch is claimable again."""


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def _cause(exc: BaseException) -> BaseException | None:
    """The exception worth recording on a stop: the first that is not a cancellation."""
    for leaf in _leaves(exc):
        if not isinstance(leaf, trio.Cancelled | LeaseLost):
            return leaf
    return None


class StorageFault(Exception):
    """A storage call failed (disk full, I/O error, lost connection).

    Not a bug in the run's code: the driver backs off and retries without
    spending the run's restart budget.
    """


class Incarnation:
    """The loop of one run, from one read of its state to its stop."""

    def __init__(self, engine: Engine, entry: RunEntry) -> None:
        self.engine = engine
        self.entry = entry
        self.run_id = entry.run_id
        self.inst: Instance | None = None
        self.workflow: type[Workflow] | None = None
        self.wakeups: dict[int, Wakeup] = {}
        self.seen = 0
        self.unread = False
        """A write added timers since the last read of the wakeups: ``seen`` may skip
        wakeups others added meanwhile (seqs are global), so re-read before releasing."""
        self.executing: set[str] = set()
        """Steps executing now: inline in the loop, or in a task of the run's nursery."""
        self.inline: str | None = None
        self.reported: Message | None = None
        """What the step running inline reported (its one final message)."""
        self.nursery: trio.Nursery | None = None
        self.interrupting = False
        """A cancel request asked to stop the executing steps: the nursery is (or is
        about to be) cancelled, and the loop resumes outside it."""
        self.at_rest = False
        """The loop is awaiting a message or running a step inline: no storage call
        is in flight, so cancelling the nursery loses nothing."""
        self.final: Instance | None = None
        self.metadata: dict[str, Any] = {}
        self.backing_off: set[str] = set()
        """Steps sleeping in a retry backoff now (read by ``Engine.statistics``)."""
        self.tasks = 0
        """Steps executing in a task of their own (not inline in the loop)."""
        self.hibernated = False
        self.refused: DefinitionMismatch | None = None
        self.announced: float | None = None
        """Trio time of ``incarnation.start``, once announced (``incarnation.stop`` follows)."""

    # -- plumbing -----------------------------------------------------------

    async def io(self, call: Callable[_P, Awaitable[_T]], *args: _P.args, **kw: _P.kwargs) -> _T:
        """Run ``call(*args, **kw)``, one storage call; any failure but a lost lease
        is a ``StorageFault``.

        No call starts once steps are being interrupted: the nursery is cancelled
        and the loop leaves it here, before the call, never in the middle of one.
        The call comes with its arguments rather than as a closure: a closure
        and its cells would live, per run, as long as the call is in flight,
        and the collector walks everything that lives.
        """
        if self.interrupting and self.nursery is not None:
            self.nursery.cancel_scope.cancel()
            await trio.lowlevel.checkpoint()  # Cancelled, unless shielded (a failed attempt)
        try:
            return await call(*args, **kw)
        except (LeaseLost, WakeupGone, trio.Cancelled):
            raise
        except Exception as exc:
            raise StorageFault(f"{self.run_id}: storage call failed: {exc!r}") from exc

    def emit(self, name: str, measurements: dict[str, float], **extra: Any) -> None:
        bus = self.engine.bus
        if bus.wants(name):
            bus.emit(name, measurements, {**self.metadata, **extra})

    def now(self) -> datetime:
        return self.engine.clock.now()

    @property
    def state(self) -> Instance:
        assert self.inst is not None
        return self.inst

    async def commit(
        self,
        new: Instance,
        *,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> None:
        """Write ``new`` under the lease; only then is it the run's state."""
        old = self.state
        storage = self.engine.storage
        lease = self.entry.lease
        was_closing = self.entry.closing
        if new.is_terminal:
            # The terminal write ends the lease: a renewal answering while it is
            # in flight no longer finds the run, which is not a lost lease (and
            # stopping the run then could cancel the write's answer, losing the
            # run's one announcement).
            self.entry.closing = True
        timed = self.engine.bus.wants("storage.commit")
        began = trio.current_time() if timed else 0.0
        try:
            added = await self.io(
                storage.write, lease, new, now=self.now(), consume=consume, add_timers=add_timers
            )
        except BaseException:
            self.entry.closing = was_closing
            raise
        if timed:
            self.emit("storage.commit", {"duration": trio.current_time() - began})
        for seq in consume:
            self.wakeups.pop(seq, None)
        for wakeup in added:
            self.wakeups[wakeup.seq] = wakeup
            self.seen = max(self.seen, wakeup.seq)
            self.unread = True
        self.inst = new
        if new.is_terminal:
            self.wakeups.clear()
            self.final = new
        self._announce_transition(old, new)

    def _announce_transition(self, old: Instance, new: Instance) -> None:
        if old.status is not new.status or old.active_steps != new.active_steps:
            self.emit(
                "workflow.transition",
                {},
                from_status=old.status.value,
                to_status=new.status.value,
                active_steps=sorted(new.active_steps),
            )

    async def refresh(self) -> None:
        """Re-read the run's wakeups (a poke said they may have changed)."""
        storage = self.engine.storage
        self._take_wakeups(await self.io(storage.wakeups, self.run_id))

    def _take_wakeups(self, rows: Sequence[Wakeup]) -> None:
        """``rows`` (in ``seq`` order) are the run's unapplied wakeups now."""
        self.unread = False
        self.wakeups = {w.seq: w for w in rows}
        if rows:
            self.seen = max(self.seen, rows[-1].seq)

    # -- main loop ------------------------------------------------------------

    async def run(self) -> None:
        """Drive the run until it is terminal, hibernates, or the driver's scope ends."""
        await self._announced(self._drive)

    async def _drive(self) -> None:
        storage = self.engine.storage
        inst, self.entry.initial = self.entry.initial, None
        pending, self.entry.initial_wakeups = self.entry.initial_wakeups, None
        resumed, self.entry.resumed = self.entry.resumed, None
        created_here = inst is not None
        if inst is None:
            inst = await self.io(storage.get, self.run_id)
            if inst is None or inst.is_terminal:
                return
        self.inst = inst
        self.workflow = self.engine.workflow_for(inst)
        self.metadata = self.entry.metadata = self.engine.metadata_for(inst)
        self._announce_start(inst)
        if pending is not None:
            # Claimed along with a resume: its wakeups were read in the claim.
            self._take_wakeups(pending)
            if resumed is not None:
                self.seen = max(self.seen, resumed.wakeup.seq)
                self._announce_claimed_resume(resumed)
        elif not created_here:
            # A run created by this engine has no wakeup it has not been poked
            # about (``seen`` stays 0, so ``release`` still reports any it missed).
            await self.refresh()
        try:
            decide.check_definition(inst, self.workflow)
        except DefinitionMismatch as exc:
            await self._refuse(exc)
            return
        self.entry.set_interrupt(self._interrupt_steps)
        self.entry.incarnation = self
        try:
            while True:
                async with trio.open_nursery() as nursery:
                    self.nursery = nursery
                    await self._loop()
                    nursery.cancel_scope.cancel()
                self.nursery = None
                if not self.interrupting:
                    break
                # Interrupted for a cancel request: every step is gone with the
                # nursery. Apply the request (a fresh nursery's loop does, first).
                self.interrupting = False
                self.executing.clear()
                self.inline = None
                await self.refresh()
        finally:
            self.entry.set_interrupt(None)
            if self.entry.incarnation is self:
                self.entry.incarnation = None
            if self.final is not None:
                self.entry.closing = True
                # Only the loop that wrote the terminal state announces it: once.
                self.engine._finished(self.final)

    async def _loop(self) -> None:
        """Apply inputs and start steps until the run is terminal or hibernates."""
        assert self.workflow is not None
        if self.state.status is Status.PENDING:
            started = trio.current_time()
            await self.commit(pure.advance(self.state, workflow=self.workflow, at=self.now()))
            self.emit("engine.advance", {"duration": trio.current_time() - started})
        while True:
            await self._apply_wakeups()
            if self.state.is_terminal:
                return
            self._reconcile()
            if not self.executing:
                if self.unread and await self._reread():
                    continue  # wakeups added while we wrote: apply them first
                if await self._hibernate():
                    return
            message = await self._next_message()
            await self._handle(message)
            if self.state.is_terminal:
                return

    async def fail_for_good(self, crash: BaseException, restarts: int) -> None:
        """The give-up after the restart budget: one write of ``failed``, announced once."""
        await self._announced(lambda: self._fail_for_good(crash, restarts))

    async def _fail_for_good(self, crash: BaseException, restarts: int) -> None:
        storage = self.engine.storage
        inst = await self.io(storage.get, self.run_id)
        if inst is None or inst.is_terminal:
            return
        self.inst = inst
        self.metadata = self.engine.metadata_for(inst)
        self._announce_start(inst)
        decision = decide.give_up(
            inst, crash, restarts=restarts, policy=self.engine.restart_policy, at=self.now()
        )
        if decision.outcome == "ignored":
            return
        await self.commit(decision.instance)
        self.entry.closing = True
        self.engine._finished(decision.instance)

    async def _refuse(self, mismatch: DefinitionMismatch) -> None:
        """Leave a run whose definition changed untouched and offer it to other engines."""
        cancel = [w.seq for w in self.wakeups.values() if w.kind is WakeupKind.CANCEL]
        if cancel:
            # A cancel needs no definition: honour it rather than strand the caller.
            decision = decide.apply_cancel(self.state, at=self.now())
            await self.commit(decision.instance, consume=cancel[:1])
            self.emit("instance.cancel", {})
            self.entry.closing = True
            self.engine._finished(decision.instance)  # workflow.stop, once
            return
        self.engine._refused_run(self.run_id, mismatch)
        self.refused = mismatch
        self.entry.closing = True
        storage = self.engine.storage
        lease = self.entry.lease
        wake_at = self.engine.clock.after(REFUSED_RETRY)
        await self.io(storage.release, lease, now=self.now(), wake_at=wake_at, seen=self.seen)

    async def _next_message(self) -> Message | None:
        if self.inline is not None:
            return await self._run_inline(self.inline)
        deadline = self._next_due()
        self._rest()
        try:
            if deadline == math.inf:
                # No timer armed (the common case): no scope to build and tear down.
                return await self.entry.recv.receive()
            with trio.move_on_at(deadline):
                return await self.entry.recv.receive()
            return None  # a timer is due
        finally:
            self.at_rest = False

    def _rest(self) -> None:
        """The loop is about to wait or run a step: an interrupt may now cancel at once."""
        self.at_rest = True
        if self.interrupting and self.nursery is not None:
            self.nursery.cancel_scope.cancel()

    def _next_due(self) -> float:
        if not self.wakeups:
            return math.inf
        due = [
            w.due_at
            for w in self.wakeups.values()
            if w.kind is WakeupKind.TIMER and w.step in self.state.waiting_steps
        ]
        return self.engine.clock.deadline(min(due)) if due else math.inf

    async def _handle(self, message: Message | None) -> None:
        if isinstance(message, StepFinished):
            self.executing.discard(message.step)
            await self._on_step_finished(message)
        elif isinstance(message, StepCrashed):
            self.executing.discard(message.step)
            decision = decide.apply_crash(
                self.state,
                message.step,
                message.error,
                attempt=message.attempt,
                timed_out=message.timed_out,
                at=self.now(),
            )
            if decision.outcome != "ignored":
                await self.commit(decision.instance)
        elif isinstance(message, AttemptFailed):
            await self._record_attempt(message)
        elif isinstance(message, Poke):
            self.entry.took_poke()
            await self.refresh()
        # None: a timer is due; _apply_wakeups runs next.

    async def _record_attempt(self, message: AttemptFailed) -> None:
        """Persist one failed attempt that will be retried (the count survives restarts)."""
        decision = decide.apply_attempt_failure(
            self.state,
            message.step,
            message.error,
            attempt=message.attempt,
            timed_out=message.timed_out,
            at=self.now(),
        )
        if decision.outcome != "ignored":
            await self.commit(decision.instance)

    async def _on_step_finished(self, message: StepFinished) -> None:
        assert self.workflow is not None
        started = trio.current_time()
        decision = decide.apply_result(
            self.state,
            message.step,
            message.result,
            attempt=message.attempt,
            at=self.now(),
            workflow=self.workflow,
        )
        if decision.outcome == "ignored":
            return
        await self.commit(decision.instance, add_timers=decision.timers)
        measurements = {"duration": message.duration, "attempt": float(message.attempt)}
        if decision.outcome == "completed":
            self.emit(
                "engine.advance", {"duration": trio.current_time() - started}, step=message.step
            )
            self.emit("step.stop", measurements, step=message.step, event=decision.event)
        elif decision.outcome == "parked":
            after = None
            if decision.timers:
                after = (decision.timers[0].fire_at - self.now()).total_seconds()
            self.emit("step.async", measurements, step=message.step, timer=after)
        elif decision.outcome == "failed" and decision.instance.error is not None:
            if decision.instance.error.kind == "failure":
                reason = decision.instance.error.message
                self.emit(
                    "step.stop",
                    measurements,
                    step=message.step,
                    event=None,
                    failed=True,
                    reason=reason,
                )

    # -- wakeups ----------------------------------------------------------------

    async def _apply_wakeups(self) -> None:
        """Apply every applicable wakeup in ``seq`` order; keep early resumes for later."""
        assert self.workflow is not None
        progressed = True
        while progressed and not self.state.is_terminal:
            progressed = False
            for seq in sorted(self.wakeups):
                wakeup = self.wakeups.get(seq)
                if wakeup is None:
                    continue
                try:
                    acted = await self._apply(wakeup)
                except WakeupGone:
                    # A timer cancelled through its handle while we applied it.
                    await self.refresh()
                    progressed = True
                    break
                if self.state.is_terminal:
                    return
                if acted:
                    progressed = True
                    break  # the state changed: re-examine from the oldest

    async def _apply(self, wakeup: Wakeup) -> bool:
        """Apply or drop one wakeup; ``False`` when it must wait (early resume, future timer)."""
        assert self.workflow is not None
        inst, at = self.state, self.now()
        if wakeup.kind is WakeupKind.CANCEL:
            # Steps still executing stop with the nursery once the cancelled state
            # is written (the loop ends then); nothing of theirs is applied after.
            decision = decide.apply_cancel(inst, at=at)
            await self.commit(decision.instance, consume=[wakeup.seq])
            self.emit("instance.cancel", {})
            return True
        assert wakeup.step is not None
        assert wakeup.event is not None
        if wakeup.kind is WakeupKind.TIMER and wakeup.due_at > at:
            return False
        if wakeup.step not in inst.waiting_steps:
            if wakeup.kind is WakeupKind.RESUME and wakeup.step in decide.can_still_run(
                inst, self.workflow.definition()
            ):
                return False  # recorded before its step parked: applied when it does
            await self.commit(inst, consume=[wakeup.seq])
            logger.info(
                "%s: dropped %s %r for step %r: it can no longer be delivered",
                inst.id,
                wakeup.kind.value,
                wakeup.event,
                wakeup.step,
            )
            return True
        if wakeup.kind is WakeupKind.TIMER:
            decision = decide.apply_timer(
                inst, wakeup.timer_record(), at=at, workflow=self.workflow, wakeup=wakeup.seq
            )
        else:
            decision = decide.apply_resume(
                inst,
                wakeup.step,
                wakeup.event,
                wakeup.payload,
                at=at,
                workflow=self.workflow,
                wakeup=wakeup.seq,
            )
        await self.commit(decision.instance, consume=[wakeup.seq])
        if decision.outcome == "completed" and self.engine.bus.wants("step.resume"):
            self._announce_resume(wakeup, decision.event)
        return True

    def _announce_claimed_resume(self, resumed: AppliedResume) -> None:
        """What ``commit`` and ``_apply`` announce for a resume, applied in the claim."""
        old, new = resumed.before, self.state
        self._announce_transition(old, new)
        if self.engine.bus.wants("step.resume"):
            self._announce_resume(resumed.wakeup, resumed.event)

    def _announce_resume(self, wakeup: Wakeup, event: str | None) -> None:
        """``step.resume``, with how long the wakeup waited to be applied."""
        applied = self.now()
        extra: dict[str, Any] = {}
        if wakeup.kind is WakeupKind.TIMER:
            extra["timer"] = True
            waited = {"lateness": (applied - wakeup.due_at).total_seconds()}
        else:
            waited = {"latency": (applied - wakeup.created_at).total_seconds()}
        if wakeup.trace_context is not None:
            extra["trace_context"] = wakeup.trace_context
        self.emit("step.resume", waited, step=wakeup.step, event=event, **extra)

    # -- announcing the incarnation (spans, metrics) ------------------------------

    def _announce_start(self, inst: Instance) -> None:
        self.announced = trio.current_time()
        if inst.trace_context is not None:
            self.emit("incarnation.start", {}, trace_context=inst.trace_context)
        else:
            self.emit("incarnation.start", {})

    async def _announced(self, body: Callable[[], Awaitable[None]]) -> None:
        """Run ``body``; once it announced ``incarnation.start``, announce how it stopped."""
        try:
            await body()
        except BaseException as exc:
            self._announce_stop(exc)
            raise
        self._announce_stop(None)

    def _announce_stop(self, exc: BaseException | None) -> None:
        if self.announced is None or not self.engine.bus.wants("incarnation.stop"):
            return
        duration = {"duration": trio.current_time() - self.announced}
        extra: dict[str, Any] = {"reason": self._stop_reason(exc)}
        if self.inst is not None:
            extra["status"] = self.state.status.value
            error = self.state.error
            if self.final is not None and error is not None:
                extra.update(
                    error_kind=error.kind,
                    error_type=error.exception_type,
                    error_message=error.message,
                )
        cause = _cause(exc) if exc is not None else self.refused
        if cause is not None:
            extra["exception"] = cause
        self.emit("incarnation.stop", duration, **extra)

    def _stop_reason(self, exc: BaseException | None) -> str:
        if exc is None:
            if self.final is not None:
                return self.final.status.value
            if self.refused is not None:
                return "refused"
            return "hibernated" if self.hibernated else "stopped"
        leaves = _leaves(exc)
        if self.entry.lost or any(isinstance(leaf, LeaseLost) for leaf in leaves):
            return "lease_lost"
        if all(isinstance(leaf, trio.Cancelled) for leaf in leaves):
            return "engine_stopped"
        if all(isinstance(leaf, StorageFault | trio.Cancelled) for leaf in leaves):
            return "storage_fault"
        return "crashed"

    # -- hibernation --------------------------------------------------------------

    async def _reread(self) -> bool:
        """Re-read the wakeups before releasing; ``True`` if some were new to us.

        ``release`` reports wakeups above ``seen`` as missed; a timer this loop's
        write added moved ``seen`` past any wakeup recorded meanwhile (a resume
        racing the write), which would then wait, unapplied, for the next timer.
        """
        known = set(self.wakeups)
        await self.refresh()
        return not set(self.wakeups) <= known

    async def _hibernate(self) -> bool:
        """Release the lease when the run has nothing to do; ``True`` if it did."""
        inst = self.state
        if inst.status is not Status.WAITING or inst.running_steps:
            return False
        timers = [w.due_at for w in self.wakeups.values() if w.kind is WakeupKind.TIMER]
        wake_at = min(timers) if timers else None
        if wake_at is not None and wake_at <= self.now():
            return False  # due: the loop applies it first
        self.entry.closing = True
        storage = self.engine.storage
        lease = self.entry.lease
        more = await self.io(
            storage.release, lease, now=self.now(), wake_at=wake_at, seen=self.seen
        )
        self.hibernated = True
        if more:
            self.engine._wake_claims()
        return True

    # -- steps --------------------------------------------------------------------

    def _interrupt_steps(self) -> None:
        """Stop the executing steps for a cancel request, without a scope per step.

        The whole nursery is cancelled, the loop with it, but only where the loop
        is at rest; otherwise the loop leaves the nursery before its next storage
        call (``io``). Outside it, the loop applies the request and ends the run.
        """
        if not self.executing or self.nursery is None:
            return
        self.interrupting = True
        if self.at_rest:
            self.nursery.cancel_scope.cancel()

    def _reconcile(self) -> None:
        """Start the running steps that have no task yet."""
        assert self.nursery is not None
        assert self.workflow is not None
        inst = self.state
        to_start = sorted(inst.running_steps - self.executing)
        if not to_start:
            return
        if (
            len(to_start) == 1
            and not self.executing
            and inst.active_steps == {to_start[0]}
            and not self.wakeups
        ):
            # The run's only active step, nothing parked, no wakeup pending: no
            # message can need the loop while it runs (a cancel interrupts it
            # directly), so it runs in the loop task instead of a task of its own.
            self.inline = to_start[0]
            self.executing.add(self.inline)
            return
        steps = self.workflow.definition().steps
        for key in to_start:
            self.executing.add(key)
            self.nursery.start_soon(self._run_step, key, steps[key])

    async def _run_step(self, key: str, step_cls: Any) -> None:
        self.tasks += 1
        try:
            await self._attempts(key, step_cls, self.entry.send.send, self.entry.send.send)
        finally:
            self.tasks -= 1

    async def _run_inline(self, key: str) -> Message:
        assert self.workflow is not None
        self.inline = None
        self._rest()
        try:
            await self._attempts(
                key, self.workflow.definition().steps[key], self._keep_inline, self._record_inline
            )
        finally:
            self.at_rest = False
        reported, self.reported = self.reported, None
        assert reported is not None
        return reported

    # Methods, not closures made per step: a closure and its cells would live
    # as long as the step runs, for every run in flight (see ``io``).

    async def _keep_inline(self, message: Message) -> None:
        self.reported = message

    async def _record_inline(self, message: AttemptFailed) -> None:
        # The step runs in the loop task, so the loop writes its failed attempts
        # itself, shielded from the step's scope: a cancel request interrupting
        # the step must not cut a write whose outcome the loop would not know.
        with trio.CancelScope(shield=True):
            await self._record_attempt(message)

    def _snapshot(self) -> Instance:
        return self.state

    async def _attempts(
        self,
        key: str,
        step_cls: Any,
        report: Callable[[Message], Awaitable[None]],
        record: Callable[[AttemptFailed], Awaitable[None]],
    ) -> None:
        inst = self.state
        failed = inst.failed_attempts(key)  # persisted: they survive restarts
        delay = 0.0
        if failed:
            # Restarted in the middle of retries: continue the count, and wait
            # what remains of the backoff after the last failed attempt.
            last = failed[-1]
            wait = step_cls.retry.delay(last.attempt, self.engine.rng)
            delay = wait - (self.now() - last.timestamp).total_seconds()
        await run_step(
            step_key=key,
            step_cls=step_cls,
            config=self.state.step_configs.get(key),
            snapshot=self._snapshot,
            report=report,
            record=record,
            emit=self.engine.bus.emit,
            metadata=self.metadata,
            rng=self.engine.rng,
            first_attempt=len(failed) + 1,  # decide.next_attempt, without a second scan
            first_delay=max(delay, 0.0),
            backing_off=self.backing_off,
            wants=self.engine.bus.wants,
        )
