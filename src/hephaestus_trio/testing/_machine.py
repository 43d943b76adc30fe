"""``WorkflowStateMachine``: a Hypothesis ``RuleBasedStateMachine`` to subclass with your rules.

Why this shape: Hypothesis rules are plain functions, and an engine lives in
a Trio run. Each rule here is one *session*: a ``trio.run`` under an
autojumping ``MockClock`` that opens an engine on the machine's storage,
does what the rule asks, lets every run come to rest (terminal, or parked
with nothing but timers pending) and closes the engine, as a process that
stops cleanly. The storage outlives the sessions (a ``MemoryStorage`` is
reused; a durable backend gets a new object per session, as a new process
would), and wall time continues from one session to the next, so parked
runs and their timers carry over. Every session is also a recovery: the new
engine claims what the last one left.

Built-in rules let time pass and arm a crash for the next session (just
before or after its *n*-th write, or inside its *n*-th step execution);
after a crash the session opens another engine and carries on. Built-in
invariants check the ``AuditedStorage`` audit: no step runs once its
completion was saved, saved history only grows, ended runs never change.
Add your own rules (``self.start``, ``self.resume``, ``self.cancel``,
``self.session``) and invariants comparing the runs with your model.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import trio
import trio.testing
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from .._errors import InstanceNotFound
from ..core._instance import Instance
from ..core._workflow import Workflow
from ..runtime._open_engine import Engine, open_engine
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage, WakeupKind
from ._audited_storage import AuditedStorage, CrashPoint
from ._crash_check import _ACTIVE, LEASE_RENEWAL, LEASE_TTL, Crash, CrashWhere, instrument_steps
from ._driver import EPOCH
from ._harness import hold_clock_while_busy

__all__ = ["WorkflowStateMachine"]

_T = TypeVar("_T")

SESSION_HORIZON = 30 * 24 * 3600.0
"""Virtual seconds a session may take to bring every run to rest."""


class WorkflowStateMachine(RuleBasedStateMachine):
    """Subclass it, set ``workflows``, add rules; run ``YourMachine.TestCase``.

    Example::

        class SignupMachine(WorkflowStateMachine):
            workflows = [SignupFlow]

            @rule(name=st.sampled_from(["ada", "bob"]))
            def sign_up(self, name):
                self.start(SignupFlow, {"email": f"{name}@example.com"}, id=f"signup::{name}")

        TestSignups = SignupMachine.TestCase
    """

    workflows: ClassVar[Sequence[type[Workflow]]] = ()
    """Every workflow the machine's engines run."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        """What happened so far, as readable sentences (writes, steps, crashes)."""
        first = self.make_storage()
        reopen = self.make_storage if first.durable else (lambda: first)
        made = iter([first])
        self.storage = AuditedStorage(lambda: next(made, None) or reopen(), log=self.events.append)
        self.storage.on_crash = self._crash
        self.crashes = 0
        """Crashes that struck so far."""
        self._wall = EPOCH
        self._scope: trio.CancelScope | None = None
        self._engine: Engine | None = None
        self._step_countdown: int | None = None
        self._instrumented = instrument_steps(tuple(self.workflows))
        self._instrumented.__enter__()
        self.setup()

    def make_storage(self) -> Storage:
        """The backend (default ``MemoryStorage``). Override for a durable one: it is
        called again for every session and must reopen the same data."""
        return MemoryStorage()

    def setup(self) -> None:
        """Called once per machine, before any rule: reset the fakes your steps use."""

    def teardown(self) -> None:
        self._instrumented.__exit__(None, None, None)

    # -- sessions -----------------------------------------------------------------------

    def session(self, fn: Callable[[Engine], Awaitable[_T]]) -> _T:
        """Run ``await fn(engine)`` in a session, let every run come to rest; its result.

        If an armed crash strikes during ``fn``, ``fn`` is called again on the
        next engine (make it idempotent, e.g. a resume with a ``dedup_key``).
        """
        box: dict[str, Any] = {}

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                if self.storage.durable:
                    nursery.start_soon(hold_clock_while_busy, self.storage.in_flight)
                while not await self._incarnation(fn, box):
                    self.crashes += 1
                    self.events.append("a new engine opens on the same storage")
                    self.storage.reincarnate()
                nursery.cancel_scope.cancel()
            self._wall = self._wall + timedelta(seconds=trio.current_time())

        _ACTIVE.append(self)
        try:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        finally:
            _ACTIVE.remove(self)
        self.storage.reincarnate()
        if "error" in box:
            raise box["error"]
        result: _T = box["value"]
        return result

    def _now(self) -> datetime:
        return self._wall + timedelta(seconds=trio.current_time())

    async def _incarnation(
        self, fn: Callable[[Engine], Awaitable[Any]], box: dict[str, Any]
    ) -> bool:
        with trio.CancelScope() as scope:
            self._scope = scope
            async with open_engine(
                self.storage,
                self.workflows,
                wall_clock=self._now,
                rng=random.Random(0),
                lease_ttl=LEASE_TTL,
                lease_renewal=LEASE_RENEWAL,
            ) as engine:
                self._engine = engine
                if "value" not in box and "error" not in box:
                    try:
                        box["value"] = await fn(engine)
                    except Exception as exc:  # handed to the rule once the session ends
                        box["error"] = exc
                await self._until_rest()
                return True
        return False

    async def _until_rest(self) -> None:
        with trio.move_on_after(SESSION_HORIZON):
            while True:
                seen = self.storage.revision.value
                if await self._at_rest():
                    return
                await self.storage.revision.wait_value(lambda v, seen=seen: v != seen)
        raise AssertionError(
            f"runs still not at rest after {SESSION_HORIZON / 86400:g} days of virtual time"
        )

    async def _at_rest(self) -> bool:
        for run in await self.storage.query():
            if run.is_terminal:
                continue
            if not run.active_steps or run.running_steps:
                return False
            pending = await self.storage.wakeups(run.run_id)
            if any(w.kind is not WakeupKind.TIMER for w in pending):
                return False
        return True

    # -- crashes (the instrumented steps call step_started / crash_in_step_due) ---------

    def _crash(self) -> None:
        assert self._scope is not None
        assert self._engine is not None
        self.storage.dead.add(self._engine.engine_id)
        self._scope.cancel()

    def step_started(self, run_id: str, key: str) -> None:
        self.events.append(f"step {key!r} runs")
        self.storage.audit_execution(run_id, key)

    def crash_in_step_due(self, key: str) -> bool:
        if self._step_countdown is None:
            return False
        self._step_countdown -= 1
        if self._step_countdown > 0:
            return False
        self._step_countdown = None
        self.events.append(f"CRASH inside step {key!r}: its code ran, its result was not saved")
        self._crash()
        return True

    # -- helpers for your rules -----------------------------------------------------------

    def start(
        self, workflow: type[Workflow], context: Mapping[str, Any] | None = None, *, id: str
    ) -> Instance:
        """Start a run and let it come to rest; returns it as saved.

        Raises what ``Engine.start_instance`` raises (``AlreadyRunning``...).
        """
        self.events.append(f"start {id}")
        attempts = 0

        async def start(engine: Engine) -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and await self.storage.query(
                id=id, status_in=["pending", "running", "waiting"]
            ):
                return  # an earlier attempt, cut short by a crash, saved it
            await engine.start_instance(workflow, context, id=id)

        self.session(start)
        return self.get(id)

    def resume(
        self,
        id: str,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        step: str | None = None,
    ) -> Instance:
        """Resume the run of ``id`` and let it come to rest; returns it as saved.

        Raises what ``Engine.resume`` raises (``InvalidResume``...).
        """
        self.events.append(f"resume {id} with {event!r}")
        key = f"machine-{len(self.events)}"
        self.session(lambda engine: engine.resume(id, event, payload, step=step, dedup_key=key))
        return self.get(id)

    def cancel(self, id: str) -> Instance:
        """Cancel the run of ``id``; returns it (``NotCancellable`` if it ended)."""
        self.events.append(f"cancel {id}")
        return self.session(lambda engine: engine.cancel(id))

    def get(self, id: str) -> Instance:
        """The latest run of ``id``, as saved.

        Raises:
            InstanceNotFound: no run has this id.
        """
        found = [run for run in self.runs() if run.id == id]
        if not found:
            raise InstanceNotFound(id)
        return found[-1]

    def runs(self) -> list[Instance]:
        """Every saved run, oldest first (read from the storage; no engine is opened)."""

        async def read() -> list[Instance]:
            await self.storage.open()
            try:
                return await self.storage.query()
            finally:
                await self.storage.close()

        runs = trio.run(read)
        self.storage.reincarnate()
        return runs

    def describe(self) -> str:
        """The events so far, numbered: put it in your assertions' messages."""
        return "what happened:\n" + "\n".join(
            f"  {i:>3}. {event}" for i, event in enumerate(self.events, 1)
        )

    # -- built-in rules and invariants ----------------------------------------------------

    @rule(seconds=st.integers(min_value=1, max_value=7 * 24 * 3600))
    def let_time_pass(self, seconds: int) -> None:
        """Virtual time passes; due timers fire."""
        self.events.append(f"let {seconds} s pass")
        until: list[float] = []

        async def wait(engine: Engine) -> None:
            if not until:  # a crash meanwhile does not restart the wait
                until.append(trio.current_time() + seconds)
            await trio.sleep_until(until[0])

        self.session(wait)

    @rule(where=st.sampled_from(CrashWhere), nth=st.integers(min_value=1, max_value=6))
    def crash_during_the_next_session(self, where: CrashWhere, nth: int) -> None:
        """Arm a crash: just before/after the *n*-th write, or inside the *n*-th step run."""
        self.events.append(f"(a crash is armed: {Crash(where, nth)}, counted from now)")
        self._step_countdown = None
        self.storage.crash_after = None
        if where is CrashWhere.IN_STEP:
            self._step_countdown = nth
        else:
            self.storage.crash_after = nth
            self.storage.crash_point = (
                CrashPoint.BEFORE if where is CrashWhere.BEFORE_WRITE else CrashPoint.AFTER
            )

    @invariant()
    def saved_state_only_moves_forward(self) -> None:
        """No step ran after its completion was saved; history only grew; ended runs stayed."""
        assert not self.storage.violations, "\n".join([*self.storage.violations, self.describe()])
