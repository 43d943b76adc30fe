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
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import strategies as st
from trio_util import AsyncValue

from hephaestus_trio import (
    Event,
    Instance,
    RestartPolicy,
    Status,
    Storage,
    Wait,
    WaitForEvent,
    Workflow,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.engine import activate_transitions, advance, check_completion, complete_step
from hephaestus_trio.storage import ResumeRecord
from hephaestus_trio.testing import (
    EPOCH,
    Outcome,
    OutcomeScript,
    WorkflowSpec,
    run_script,
    workflow_specs,
)

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
    """A write the test told the storage to refuse: to the runtime, a crash of that run."""


class CrashPoint(enum.Enum):
    """Where an armed engine crash strikes, relative to the write that triggers it."""

    BEFORE = "before"
    """The write never happens."""
    AFTER = "after"
    """The write is persisted, the process dies before anyone learns it."""


class AuditedStorage:
    """Wraps the real backend; counts, injects and audits (see the module docstring).

    ``inner`` is replaced by the host before each engine incarnation (a
    ``MemoryStorage`` is reused as is, a durable backend gets a new object on
    the same file, as a new process would).
    """

    def __init__(self, make_inner: Callable[[], Storage]) -> None:
        self._make_inner = make_inner
        self.inner: Storage = make_inner()
        self.durable = self.inner.durable
        self.in_flight: AsyncValue[int] = AsyncValue(0)
        self._serial = trio.Lock() if self.durable else None
        # Faults and crashes the rules arm.
        self.failing_puts: collections.Counter[str] = collections.Counter()
        self.crash_after: int | None = None
        self.crash_point = CrashPoint.BEFORE
        self.on_crash: Callable[[], None] = lambda: None
        # What the audit saw.
        self.persisted: dict[str, Instance] = {}
        self.faults_hit: collections.Counter[str] = collections.Counter()
        self.executions: list[tuple[str, str]] = []
        self.violations: list[str] = []

    def renew(self) -> None:
        """A new backend object on the same data, for the next engine incarnation."""
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

    async def _write(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        due = self._crash_due()
        if due is CrashPoint.BEFORE:
            await self._die()
        result = await fn(*args)
        if due is CrashPoint.AFTER:
            await self._die()
        return result

    # -- audit ------------------------------------------------------------------------

    def _audit_put(self, new: Instance) -> None:
        old = self.persisted.get(new.run_id)
        if old is None:
            return
        where = f"run {new.id} ({new.run_id})"
        if old.is_terminal:
            self.violations.append(f"{where}: {old.status.value} run overwritten with {new!r}")
        if new.execution_history[: len(old.execution_history)] != old.execution_history:
            self.violations.append(f"{where}: persisted history rewritten: {old!r} -> {new!r}")
        if not old.completed_steps <= new.completed_steps:
            self.violations.append(f"{where}: completed steps shrank: {old!r} -> {new!r}")

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

    def engine_lock(self) -> contextlib.AbstractContextManager[None]:
        """The backend's one-engine-per-database lock, when it has one."""
        claim = getattr(self.inner, "engine_lock", None)
        return claim() if claim is not None else contextlib.nullcontext()

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

    async def put(self, instance: Instance, *, consume: Sequence[int] = ()) -> None:
        async with self._busy():
            due = self._crash_due()
            if due is CrashPoint.BEFORE:
                await self._die()
            # A run's failure past its restart budget is written as is: when that
            # write fails too, the runtime documents that the run waits, as last
            # persisted, for the next engine (the storage is what keeps failing).
            gives_up = instance.error is not None and instance.error.kind == "restart_limit"
            if self.failing_puts[instance.run_id] > 0 and not gives_up:
                self.failing_puts[instance.run_id] -= 1
                self.faults_hit[instance.run_id] += 1
                raise InjectedFault(f"injected fault persisting {instance.id} ({instance.run_id})")
            self._audit_put(instance)
            await self.inner.put(instance, consume=consume)
            self.persisted[instance.run_id] = instance
            if due is CrashPoint.AFTER:
                await self._die()

    async def delete(self, run_id: str) -> None:
        async with self._busy():
            await self._write(self.inner.delete, run_id)

    async def query(self, **filters: Any) -> list[Instance]:
        async with self._busy():
            return await self.inner.query(**filters)

    async def add_resume(self, run_id: str, step: str, event: str, at: datetime) -> ResumeRecord:
        async with self._busy():
            record: ResumeRecord = await self._write(self.inner.add_resume, run_id, step, event, at)
            return record

    async def pending_resumes(self, run_id: str | None = None) -> list[ResumeRecord]:
        async with self._busy():
            return await self.inner.pending_resumes(run_id)

    async def delete_resume(self, seq: int) -> None:
        async with self._busy():
            await self._write(self.inner.delete_resume, seq)

    async def purge(self, older_than: datetime) -> int:
        async with self._busy():
            count: int = await self._write(self.inner.purge, older_than)
            return count


@attrs.frozen
class Snapshot:
    """The persisted state at a settled moment."""

    runs: tuple[Instance, ...]
    pending: tuple[ResumeRecord, ...]
    trio_now: float
    wall_now: datetime


@attrs.frozen
class CommandResult:
    """How an engine call ended: a value, an exception, or killed by an engine crash."""

    value: Any = None
    error: Exception | None = None
    crashed: bool = False
    hung: bool = False


SETTLE_CUSHION = 1e-6
"""Real seconds the loop must stay idle before ``settle`` trusts it."""

_Call = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]


class EngineHost:
    """``open_engine`` kept open in a Trio thread, reopened after every crash.

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
        self._scope: trio.CancelScope | None = None
        self._commands: trio.Nursery | None = None
        self._stop = trio.Event()
        self._inbox_send, self._inbox = trio.open_memory_channel[_Call](1)
        self._replies: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._thread_main, name="crash-machine", daemon=True)
        storage.on_crash = self._crash

    # -- the thread ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread; returns once the first engine is open and settled."""
        self._thread.start()
        self._ready.wait()
        self._raise_if_dead()

    def stop(self) -> None:
        """Crash the engine one last time, close the storage, end the thread."""
        if self._thread.is_alive() and self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join(timeout=60)
        if self._thread.is_alive():  # pragma: no cover - would hang the suite otherwise
            raise RuntimeError("the engine thread did not stop")
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
                nursery.start_soon(self._engine_loop)
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

    async def _engine_loop(self) -> None:
        while True:
            with trio.CancelScope() as scope:
                self._scope = scope
                async with open_engine(
                    self.storage,
                    self.workflows,
                    restart_policy=self.restart_policy,
                    handlers=[self.handler],
                    wall_clock=trio_wall_clock(EPOCH),
                ) as engine:
                    async with trio.open_nursery() as commands:
                        self._commands = commands
                        self.engine_opens += 1
                        self._engine.value = engine
                        await trio.sleep_forever()
            # Crashed: the old backend object dies with its "process".
            self._engine.value = None
            self._commands = None
            await self.storage.close()
            self.storage.renew()

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

    async def command(self, fn: Callable[[Any], Awaitable[Any]]) -> CommandResult:
        """``await fn(engine)`` in a task *inside* the engine, so an engine crash kills it too.

        A call still blocked once everything has settled can never return: it
        is cancelled and reported as ``hung``.
        """
        while True:
            engine = await self._engine.wait_value(lambda e: e is not None)
            if self._engine.value is engine and self._commands is not None:
                break
        box: dict[str, Any] = {}
        done = trio.Event()
        scope = trio.CancelScope()

        async def call() -> None:
            try:
                with scope:
                    box["value"] = await fn(engine)
            except Exception as exc:
                box["error"] = exc
            finally:
                done.set()

        self._commands.start_soon(call)
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
        """Crash the engine (cancel its ``open_engine`` block); it reopens by itself."""
        self._crash()
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
        pending = await self.storage.pending_resumes()
        now = trio.current_time()
        return Snapshot(
            runs=tuple(runs),
            pending=tuple(pending),
            trio_now=now,
            wall_now=EPOCH + timedelta(seconds=now),
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
    for entry in run.execution_history:
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
    for entry in run.execution_history:
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
    delivered = {e.step: e.event for e in run.execution_history}
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
