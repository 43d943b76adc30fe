"""``check_crash_safety``: crash a user's own workflow everywhere, and compare with a clean run.

Why: a workflow is crash-safe when a run that is killed and recovered ends
exactly where an uninterrupted run ends. That depends on the user's step code
(a step that is not idempotent, or that keeps state in memory, breaks it),
so it can only be checked by running *their* steps. Each play here is one
``trio.run`` under an autojumping ``MockClock`` (timers, retries and backoff
cost no real time): the engine is opened on a storage wrapped in
``AuditedStorage``, the run is started and the script played, and a planned
crash kills the engine (its leases are not handed back, as after a real
crash) just before or after its *n*-th write or inside its *n*-th step
execution (after the step's code ran, before its result was saved). A new
engine is opened on the same storage and the script goes on. Hypothesis
chooses the crash plans and shrinks a failing one to a minimal plan; the
failure message is the sequence of events of that plan.

Every play of a plan is deterministic: Trio's scheduler is seeded by
Hypothesis, the engine's randomness is seeded, time is virtual, and calls to
a durable backend are made one at a time while the clock is held (see
``hold_clock_while_busy``).
"""

from __future__ import annotations

import collections
import enum
import functools
import inspect
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Protocol

import attrs
import hypothesis
import trio
import trio.testing
from hypothesis import strategies as st

from .._errors import HephaestusError
from ..core._instance import Instance
from ..core._step import Step
from ..core._unique import build_id
from ..core._workflow import Workflow
from ..runtime._clock import trio_wall_clock
from ..runtime._open_engine import Engine, open_engine
from ..storage._memory import MemoryStorage
from ..storage._protocol import Storage, Wakeup, WakeupKind
from ._audited_storage import AuditedStorage, CrashPoint, completions
from ._driver import EPOCH
from ._harness import hold_clock_while_busy

__all__ = [
    "Advance",
    "Crash",
    "CrashCheckError",
    "CrashSafetyViolation",
    "CrashWhere",
    "Resume",
    "ScriptAction",
    "check_crash_safety",
    "instrument_steps",
]

LEASE_TTL = 60.0
"""Virtual seconds a crashed engine's leases outlive it; the next engine waits them out."""
LEASE_RENEWAL = 20.0
HORIZON = 365 * 24 * 3600.0
"""Virtual seconds a play may take before the run is declared stuck."""


class CrashCheckError(HephaestusError, ValueError):
    """``check_crash_safety`` was given something it cannot check (the message says what)."""


class CrashSafetyViolation(HephaestusError, AssertionError):
    """A crashed and recovered run did not end like the crash-free run.

    An ``AssertionError`` too, so test runners report it as a failed check.
    ``problems`` lists what differed; ``events`` is what happened, in order,
    in the (minimal) failing play; ``plan`` the crashes of that play.
    """

    def __init__(
        self, problems: Sequence[str], events: Sequence[str], plan: Sequence[Crash]
    ) -> None:
        self.problems = tuple(problems)
        self.events = tuple(events)
        self.plan = tuple(plan)
        lines = ["the workflow is not crash-safe:"]
        lines += [f"  - {p}" for p in self.problems]
        lines.append("what happened (crashes: " + "; ".join(str(c) for c in self.plan) + "):")
        lines += [f"  {i:>3}. {e}" for i, e in enumerate(self.events, 1)]
        super().__init__("\n".join(lines))


@attrs.frozen
class Resume:
    """A script action: resume the run with ``event`` (``engine.resume``) once it is at rest."""

    event: str
    payload: Mapping[str, Any] | None = None
    """Becomes the resumed step's updates."""
    step: str | None = attrs.field(default=None, kw_only=True)
    """Needed when several steps that can still run declare ``event``."""

    def __str__(self) -> str:
        target = f" to step {self.step!r}" if self.step else ""
        return f"resume with {self.event!r}{target}" + (
            f" and payload {dict(self.payload)!r}" if self.payload else ""
        )


def _seconds(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise CrashCheckError(
            f"Advance({value!r}): {attribute.name} must be a number of seconds >= 0"
        )


@attrs.frozen
class Advance:
    """A script action: let ``seconds`` of virtual time pass (due timers fire)."""

    seconds: float = attrs.field(validator=_seconds)

    def __str__(self) -> str:
        return f"let {self.seconds:g} s pass"


ScriptAction = Resume | Advance
"""What a script is made of."""


class CrashWhere(enum.Enum):
    """Where a planned crash strikes."""

    BEFORE_WRITE = "before_write"
    """Just before a write: it never happens."""
    AFTER_WRITE = "after_write"
    """Just after a write: it is persisted, nobody learns it."""
    IN_STEP = "in_step"
    """Inside a step: its code ran, its result was not saved."""


_ORDINAL = {1: "st", 2: "nd", 3: "rd"}


@attrs.frozen
class Crash:
    """One planned crash, counted from the moment the engine (re)opened."""

    where: CrashWhere
    nth: int
    """Which write (or step execution) since the engine opened, from 1."""

    def __str__(self) -> str:
        nth = f"{self.nth}{_ORDINAL.get(self.nth if self.nth < 20 else self.nth % 10, 'th')}"
        if self.where is CrashWhere.IN_STEP:
            return f"inside the {nth} step execution"
        side = "before" if self.where is CrashWhere.BEFORE_WRITE else "after"
        return f"{side} the {nth} write"


@attrs.frozen
class _Played:
    """What one play reached."""

    final: Instance | None
    pending: tuple[Wakeup, ...]
    events: tuple[str, ...]
    violations: tuple[str, ...]
    writes: int
    executions: int
    overdue: tuple[Wakeup, ...]


class StepObserver(Protocol):
    """What instrumented steps report to: a play of the check, or a state machine."""

    def step_started(self, run_id: str, key: str) -> None: ...

    def crash_in_step_due(self, key: str) -> bool: ...


_ACTIVE: list[StepObserver] = []
"""The play (or session) in progress: instrumented steps report to it; empty between."""


class _Player:
    """One play: engines opened one after another on one audited storage."""

    def __init__(
        self,
        workflow: type[Workflow],
        context: Mapping[str, Any] | None,
        script: Sequence[ScriptAction],
        workflows: Sequence[type[Workflow]],
        make_storage: Callable[[], Storage],
        plan: Sequence[Crash],
    ) -> None:
        self.workflow = workflow
        self.context = context
        self.script = tuple(script)
        self.workflows = (workflow, *[w for w in workflows if w is not workflow])
        self.plan = list(plan)
        self.events: list[str] = []
        first = make_storage()
        # A new engine gets a new object on the same data, as a new process
        # would; a non-durable backend is its data, so the same object.
        reopen = make_storage if first.durable else (lambda: first)
        made = iter([first])
        self.storage = AuditedStorage(lambda: next(made, None) or reopen(), log=self.events.append)
        self.storage.on_crash = self.crash
        self.id = build_id(workflow.unique, "crashcheck", suffix="00000000")
        self.started = False
        self.next_action = 0
        self.interrupted = False
        self.advance_until: float | None = None
        self.step_countdown: int | None = None
        self.violations: list[str] = []
        self.final: Instance | None = None
        self.pending: tuple[Wakeup, ...] = ()
        self.overdue: tuple[Wakeup, ...] = ()
        self.executions = 0
        self._scope: trio.CancelScope | None = None
        self._engine: Engine | None = None

    # -- crashes -------------------------------------------------------------------

    def _arm_next(self) -> None:
        self.step_countdown = None
        self.storage.crash_after = None
        if not self.plan:
            return
        crash = self.plan.pop(0)
        if crash.where is CrashWhere.IN_STEP:
            self.step_countdown = crash.nth
        else:
            self.storage.crash_after = crash.nth
            self.storage.crash_point = (
                CrashPoint.BEFORE if crash.where is CrashWhere.BEFORE_WRITE else CrashPoint.AFTER
            )

    def crash(self) -> None:
        """Kill the engine as a process death would: its leases are not handed back."""
        assert self._scope is not None
        assert self._engine is not None
        self.storage.dead.add(self._engine.engine_id)
        self._scope.cancel()

    def step_started(self, run_id: str, key: str) -> None:
        self.executions += 1
        self.events.append(f"step {key!r} runs")
        self.storage.audit_execution(run_id, key)

    def crash_in_step_due(self, key: str) -> bool:
        if self.step_countdown is None:
            return False
        self.step_countdown -= 1
        if self.step_countdown > 0:
            return False
        self.step_countdown = None
        self.events.append(f"CRASH inside step {key!r}: its code ran, its result was not saved")
        self.crash()
        return True

    # -- the play ------------------------------------------------------------------

    async def main(self) -> None:
        self._arm_next()
        async with trio.open_nursery() as nursery:
            if self.storage.durable:
                nursery.start_soon(hold_clock_while_busy, self.storage.in_flight)
            done = False
            while not done:
                done = await self._incarnation()
                if not done:
                    self.events.append("a new engine opens on the same storage")
                    self.storage.reincarnate()
                    self._arm_next()
            nursery.cancel_scope.cancel()

    async def _incarnation(self) -> bool:
        """One engine's life; ``True`` once the play is over."""
        with trio.CancelScope() as scope:
            self._scope = scope
            async with open_engine(
                self.storage,
                self.workflows,
                wall_clock=trio_wall_clock(EPOCH),
                rng=random.Random(0),
                lease_ttl=LEASE_TTL,
                lease_renewal=LEASE_RENEWAL,
            ) as engine:
                self._engine = engine
                await self._drive(engine)
                await self._read_final()
                return True
        return False

    async def _drive(self, engine: Engine) -> None:
        if not self.started:
            if not await self.storage.query(id=self.id):
                self.events.append(f"start run {self.id}")
                await engine.start_instance(self.workflow, self.context, id=self.id)
            self.started = True
        while self.next_action < len(self.script):
            action = self.script[self.next_action]
            await self._until_rest(timers_too=False)
            if isinstance(action, Resume):
                again = " (again: the crash interrupted the call)" if self.interrupted else ""
                self.events.append(f"{action}{again}")
                self.interrupted = True
                try:
                    await engine.resume(
                        self.id,
                        action.event,
                        action.payload,
                        step=action.step,
                        dedup_key=f"script-{self.next_action}",
                    )
                except HephaestusError as exc:
                    self.violations.append(
                        f"action {self.next_action + 1} ({action}) refused: {exc}"
                    )
            else:
                if self.advance_until is None:
                    self.events.append(str(action))
                    self.advance_until = trio.current_time() + action.seconds
                await trio.sleep_until(self.advance_until)
                self.advance_until = None
            self.interrupted = False
            self.next_action += 1
        await self._until_rest(timers_too=True)

    async def _latest(self) -> Instance | None:
        runs = await self.storage.query(id=self.id)
        return runs[-1] if runs else None

    async def _until_rest(self, *, timers_too: bool) -> None:
        """Until the run is terminal, or parked with nothing to apply (no timer either)."""
        deadline = trio.current_time() + HORIZON
        with trio.move_on_at(deadline):
            while True:
                seen = self.storage.revision.value
                run = await self._latest()
                if run is not None:
                    if run.is_terminal:
                        return
                    if run.active_steps and not run.running_steps:
                        pending = await self.storage.wakeups(run.run_id)
                        if self.storage.revision.value != seen:
                            # A write came between the two reads (a resume just
                            # applied, say): they do not describe one state.
                            continue
                        if not any(timers_too or w.kind is not WakeupKind.TIMER for w in pending):
                            return
                await self.storage.revision.wait_value(lambda v, seen=seen: v != seen)
        self.violations.append(
            f"the run was still not at rest after {HORIZON / 86400:g} days of virtual time"
        )

    async def _read_final(self) -> None:
        self.final = await self._latest()
        if self.final is None:
            return
        self.pending = tuple(await self.storage.wakeups(self.final.run_id))
        now = EPOCH + timedelta(seconds=trio.current_time())
        self.overdue = tuple(
            w for w in self.pending if w.kind is WakeupKind.TIMER and w.due_at <= now
        )

    def result(self) -> _Played:
        return _Played(
            final=self.final,
            pending=self.pending,
            events=tuple(self.events),
            violations=(*self.storage.violations, *self.violations),
            writes=self.storage.mutations,
            executions=self.executions,
            overdue=self.overdue,
        )


def _play(
    workflow: type[Workflow],
    context: Mapping[str, Any] | None,
    script: Sequence[ScriptAction],
    workflows: Sequence[type[Workflow]],
    make_storage: Callable[[], Storage],
    before_each: Callable[[], object] | None,
    plan: Sequence[Crash],
) -> _Played:
    if before_each is not None:
        before_each()
    player = _Player(workflow, context, script, workflows, make_storage, plan)
    _ACTIVE.append(player)
    try:
        trio.run(player.main, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        _ACTIVE.remove(player)
    return player.result()


# -- instrumenting the user's steps ---------------------------------------------------


@contextmanager
def instrument_steps(workflows: Sequence[type[Workflow]]) -> Iterator[None]:
    """Wrap every step's ``execute`` so the play in progress sees (and may crash) it.

    The wrapping is undone on exit. A wrapped step behaves exactly as before
    when no play is in progress. Terminal steps (``Done``) run no code worth
    crashing in and are left alone.
    """
    patched: dict[type[Step], Any] = {}
    for wf in workflows:
        for key, cls in wf.definition().steps.items():
            if cls.terminal or cls in patched:
                continue
            patched[cls] = cls.__dict__.get("execute", _INHERITED)
            cls.execute = _wrap(cls, key)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for cls, original in patched.items():
            if original is _INHERITED:
                del cls.execute
            else:
                cls.execute = original  # type: ignore[method-assign]


_INHERITED = object()


def _wrap(cls: type[Step], key: str) -> Any:
    original = cls.execute
    if cls.is_async():

        @functools.wraps(original)
        async def execute_async(self: Any, instance: Instance, config: Any, context: Any) -> Any:
            player = _ACTIVE[-1] if _ACTIVE else None
            if player is not None:
                player.step_started(instance.run_id, key)
            result = await original(self, instance, config, context)  # type: ignore[misc]
            if player is not None and player.crash_in_step_due(key):
                await trio.lowlevel.checkpoint()  # raises Cancelled: the engine is gone
            return result

        return execute_async

    @functools.wraps(original)
    def execute_sync(self: Any, instance: Instance, config: Any, context: Any) -> Any:
        player = _ACTIVE[-1] if _ACTIVE else None
        if player is not None:
            trio.from_thread.run_sync(player.step_started, instance.run_id, key)
        result = original(self, instance, config, context)
        if player is not None:
            # A crash abandons this thread: its result is dropped.
            trio.from_thread.run_sync(player.crash_in_step_due, key)
        return result

    return execute_sync


# -- comparing --------------------------------------------------------------------------


def _history(run: Instance) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((e.step, e.event) for e in completions(run))


def _pending(played: _Played) -> collections.Counter[tuple[str, str | None, str | None]]:
    return collections.Counter((w.kind.value, w.step, w.event) for w in played.pending)


def _differences(reference: _Played, got: _Played) -> list[str]:
    problems = list(got.violations)
    ref, run = reference.final, got.final
    assert ref is not None
    if run is None:
        return [*problems, "the run was never created"]
    if run.status is not ref.status:
        detail = f" ({run.error})" if run.error else ""
        problems.append(
            f"the run ended {run.status.value}{detail}; the crash-free run ended {ref.status.value}"
        )
    if dict(run.context.steps) != dict(ref.context.steps):
        for key in sorted(set(run.context.steps) | set(ref.context.steps)):
            mine, theirs = run.context.steps.get(key), ref.context.steps.get(key)
            if mine != theirs:
                problems.append(
                    f"context.steps[{key!r}] is {mine!r}; the crash-free run has {theirs!r}"
                )
    if _history(run) != _history(ref):
        problems.append(
            "completed steps differ: "
            f"{sorted(_history(run).elements())} vs crash-free {sorted(_history(ref).elements())}"
        )
    if run.waiting_steps != ref.waiting_steps:
        problems.append(
            f"parked steps {sorted(run.waiting_steps)}; crash-free: {sorted(ref.waiting_steps)}"
        )
    if _pending(got) != _pending(reference):
        problems.append(
            f"pending wakeups {sorted(_pending(got).elements(), key=str)}; crash-free: "
            f"{sorted(_pending(reference).elements(), key=str)} (a resume or timer lost or doubled)"
        )
    for wakeup in got.overdue:
        problems.append(
            f"timer {wakeup.event!r} of step {wakeup.step!r} is overdue and never fired"
        )
    return problems


def _plans(reference: _Played, max_crashes: int) -> st.SearchStrategy[list[Crash]]:
    writes = st.builds(
        Crash,
        st.sampled_from([CrashWhere.BEFORE_WRITE, CrashWhere.AFTER_WRITE]),
        st.integers(1, max(1, reference.writes)),
    )
    options = [writes]
    if reference.executions:
        options.append(
            st.builds(Crash, st.just(CrashWhere.IN_STEP), st.integers(1, reference.executions))
        )
    return st.lists(st.one_of(options), min_size=1, max_size=max_crashes)


def check_crash_safety(
    workflow: type[Workflow],
    context: Mapping[str, Any] | None = None,
    *,
    script: Sequence[ScriptAction] = (),
    examples: int = 100,
    storage: Callable[[], Storage] | None = None,
    workflows: Sequence[type[Workflow]] = (),
    before_each: Callable[[], object] | None = None,
    max_crashes: int = 3,
    settings: hypothesis.settings | None = None,
) -> Instance:
    """Check that ``workflow`` ends the same however its engine crashes; returns the clean run.

    Runs one ``workflow`` run from ``context`` on an engine under an
    autojumping ``MockClock``, with the user's real step code, first without
    crashes (twice: a workflow whose clean runs differ is rejected), then
    ``examples`` times with crashes Hypothesis plans: just before or after a
    write, or inside a step after its code ran. After each crash a new engine
    opens on the same storage (the old engine's leases are not handed back)
    and the ``script`` (``Resume`` and ``Advance`` actions, each played once
    the run is at rest) goes on. Each play must end in the same status, with
    the same ``context.steps``, completed steps, parked steps and pending
    timers as the clean run; no step may run once its completion was saved;
    and no timer may be left overdue.

    Args:
        workflow: the workflow class to check.
        context: the run's initial context.
        script: what happens to the run from outside, in order.
        examples: crash plans to try.
        storage: a factory for the backend (default ``MemoryStorage``); a
            durable backend's factory is called again for every new engine and
            must reopen the same data (for example ``lambda: SQLiteStorage(path)``).
        workflows: other workflows the run may need registered.
        before_each: called before every play, to reset fakes your steps talk to.
        max_crashes: crashes in one plan, at most.
        settings: Hypothesis settings to start from (``max_examples`` is set from
            ``examples``).

    Raises:
        CrashSafetyViolation: a crashed play differs; the message lists the
            differences and the events of the minimal failing plan.
        CrashCheckError: bad arguments, a script the clean run refuses, a
            clean run that never comes to rest, or a workflow whose clean runs
            differ (nondeterministic steps cannot be checked this way).
    """
    _check_arguments(workflow, script, examples, max_crashes)
    make_storage: Callable[[], Storage] = storage if storage is not None else MemoryStorage
    with instrument_steps((workflow, *workflows)):
        play = functools.partial(
            _play, workflow, context, script, workflows, make_storage, before_each
        )
        reference = play(())
        if reference.final is None or reference.violations:
            raise CrashCheckError(
                f"the crash-free run of {workflow.__name__} went wrong, so there is nothing "
                "to compare with: " + "; ".join(reference.violations or ("no run was created",))
            )
        again = play(())
        if _differences(reference, again):
            raise CrashCheckError(
                f"two crash-free runs of {workflow.__name__} ended differently: "
                + "; ".join(_differences(reference, again))
                + ". Steps must be deterministic given their inputs (no randomness, clock "
                "reads or state kept between runs; reset fakes with before_each=)"
            )

        base = settings if settings is not None else hypothesis.settings()
        chosen = hypothesis.settings(
            base,
            max_examples=examples,
            deadline=None,
            suppress_health_check=[hypothesis.HealthCheck.too_slow],
        )

        @chosen
        @hypothesis.given(plan=_plans(reference, max_crashes))
        def crash_plans(plan: list[Crash]) -> None:
            got = play(plan)
            problems = _differences(reference, got)
            if problems:
                raise CrashSafetyViolation(problems, got.events, plan)

        crash_plans()
    assert reference.final is not None
    return reference.final


def _check_arguments(workflow: Any, script: Sequence[Any], examples: Any, max_crashes: Any) -> None:
    if not (inspect.isclass(workflow) and issubclass(workflow, Workflow)):
        raise CrashCheckError(
            f"workflow must be a Workflow subclass, got {workflow!r}: pass the class itself"
        )
    for i, action in enumerate(script, 1):
        if not isinstance(action, Resume | Advance):
            raise CrashCheckError(
                f"script action {i} is {action!r}; use Resume(event, ...) or Advance(seconds)"
            )
    for name, value in (("examples", examples), ("max_crashes", max_crashes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CrashCheckError(f"{name} must be a positive int, got {value!r}")
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return
    raise CrashCheckError(
        "check_crash_safety runs its own Trio loops: call it from a plain (sync) test "
        "function, not from inside trio.run or an async test"
    )
