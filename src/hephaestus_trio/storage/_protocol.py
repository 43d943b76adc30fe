"""The storage protocol: what the running engine needs, in domain terms.

Every backend implements ``Storage`` and passes the one conformance suite
(``hephaestus_trio.testing.check_storage``). Methods are coroutines; a storage
is created unopened and used inside ``async with storage:`` (``open_engine``
does that for you).

Ownership lives here, not in any engine's memory:

- A live run is owned by at most one engine through a **lease**
  ``(owner, epoch, expires_at)``. ``claim`` hands out leases on runs that are
  unowned or whose lease expired, bumping the epoch; the engine acts only on
  the leases the claim returned.
- Every write of a run's state is **fenced**: ``write`` carries the lease it
  was made under and is refused with ``LeaseLost`` when the stored owner or
  epoch differs, so an engine that was paused past its lease can never
  overwrite a newer owner's state.
- **Wakeups** (resumes, timers, cancel requests) are rows any process may add
  without owning the run. The owner applies them and deletes each in the same
  ``write`` that applies it (``consume=``), so each applies exactly once.

Time: every method that compares leases or due times takes ``now`` (a
timezone-aware datetime) from the caller. On one machine (memory, SQLite)
that is the engine's wall clock, which follows Trio's clock, so tests under
``trio.testing.MockClock`` expire leases and fire timers in virtual time. Lease
lengths are durations (``ttl`` seconds), never absolute times. A backend shared
by several machines may keep time by its own clock instead (``PostgresStorage``
with ``clock="database"``, its default: the server's ``now()`` decides every
lease and due time, and ``now`` is then only metadata).

Capabilities a backend states with class attributes:

- ``durable``: state survives the process (``MemoryStorage`` is not durable).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, Protocol, final, runtime_checkable

import attrs

from .._errors import HephaestusError
from ..core._instance import Instance, Status, TimerRecord

__all__ = [
    "Advance",
    "Advancer",
    "ClaimedRun",
    "EngineRecord",
    "Lease",
    "NewWakeup",
    "RunSummary",
    "Storage",
    "UniqueViolation",
    "WaitingRun",
    "Wakeup",
    "WakeupGone",
    "WakeupKind",
    "WakeupRefused",
    "WorkflowKey",
]

WorkflowKey = tuple[str, int]
"""``(workflow registry name, version)``: what an engine can run."""


@final
@attrs.frozen(kw_only=True)
class Lease:
    """Ownership of one live run by one engine, as the storage granted it."""

    run_id: str
    """The run owned."""
    owner: str
    """Engine id (a fresh UUID per engine start) holding the lease."""
    epoch: int
    """Fencing token: bumped by every claim, so a stale owner's writes are refused."""
    expires_at: datetime
    """When the lease lapses unless renewed (``now + ttl`` at the claim or renewal)."""


@final
@attrs.frozen(kw_only=True)
class EngineRecord:
    """An engine registered on a storage, as ``Storage.engines`` lists it (for operators)."""

    engine_id: str
    """The engine's id (a fresh UUID per engine start)."""
    host: str | None
    """Host name it registered with (metadata)."""
    pid: int | None
    """Process id it registered with (metadata)."""
    started_at: datetime
    """When it registered."""
    last_heartbeat: datetime | None
    """Its last lease renewal (or its registration); ``None`` if the backend never saw one."""
    runs_owned: int
    """Live runs it holds a lease on now (expired leases not yet taken over included)."""


class WakeupKind(enum.Enum):
    """What a wakeup asks the run's owner to do."""

    RESUME = "resume"
    """Deliver ``event`` (and ``payload``) to ``step`` once it is parked."""
    TIMER = "timer"
    """Deliver ``event`` to parked ``step`` at ``due_at``."""
    CANCEL = "cancel"
    """Cancel the run."""


@final
@attrs.frozen(kw_only=True)
class NewWakeup:
    """A wakeup to record (``add_wakeup``); the storage assigns its ``seq``."""

    run_id: str
    kind: WakeupKind
    step: str | None = None
    """Step key (``None`` for a cancel request)."""
    event: str | None = None
    """Event as offered by the caller (the step may map it, e.g. ``event_name``)."""
    payload: Mapping[str, Any] | None = None
    """JSON-safe updates a resume stores at ``context.steps[step]``."""
    dedup_key: str | None = None
    """A resume whose key was already recorded for the run is a no-op."""
    due_at: datetime
    """When it may apply: a timer's ``fire_at``; ``now`` for the others."""
    trace_context: Mapping[str, str] | None = None
    """W3C trace headers (``traceparent``, ``tracestate``) of the code that added it, so
    the spans of applying it join that trace in whichever engine applies it."""


@final
@attrs.frozen(kw_only=True)
class Wakeup:
    """A recorded, not yet applied wakeup."""

    seq: int
    """Storage-assigned, increasing across the whole storage: apply in ``seq`` order."""
    run_id: str
    kind: WakeupKind
    step: str | None
    event: str | None
    payload: Mapping[str, Any] | None
    dedup_key: str | None
    due_at: datetime
    created_at: datetime
    trace_context: Mapping[str, str] | None = None
    """As recorded from ``NewWakeup.trace_context``."""

    def timer_record(self) -> TimerRecord:
        """The ``TimerRecord`` a timer wakeup stands for (readers see it in ``Instance.timers``)."""
        assert self.kind is WakeupKind.TIMER
        assert self.step is not None
        assert self.event is not None
        return TimerRecord(step=self.step, event=self.event, fire_at=self.due_at)


@final
@attrs.frozen(kw_only=True)
class ClaimedRun:
    """A run claimed in the same transaction as a wakeup for it: what its driver starts from.

    Why: the engine that records a resume for a hibernated run is the one that
    will most likely drive it, and claiming it there saves a commit (the
    separate claim) and the two reads a new driver makes (the run and its
    wakeups), read here in the claim's own transaction.
    """

    lease: Lease
    """The lease granted, as ``claim`` would have returned it."""
    instance: Instance
    """The run's state as stored when it was claimed (what ``get`` returns)."""
    wakeups: tuple[Wakeup, ...]
    """Its unapplied wakeups at that moment, in ``seq`` order (what ``wakeups`` returns),
    the one just recorded included (unless ``applied``)."""
    applied: Wakeup | None = None
    """The wakeup just recorded, when ``advance`` applied it in the claim: then
    ``instance`` is the state written under ``lease``, and the wakeup is
    consumed (not among ``wakeups``, which hold any timers the write added)."""


@final
@attrs.frozen(kw_only=True)
class Advance:
    """The state a claimed run moves to as the wakeup that claimed it is applied.

    Why: applying a resume is the first thing a hibernated run's new driver
    does, and it is one more commit (an fsync on SQLite) after the claim's.
    Computed in the claim's own transaction, it is written with it: one
    commit from ``resume`` to the next step.
    """

    instance: Instance
    """The new state: live, of the same run (id, workflow, version and unique key
    unchanged), as ``write`` would take it."""
    timers: tuple[TimerRecord, ...] = ()
    """Timers to add with it, as ``write(add_timers=...)``."""


Advancer = Callable[[ClaimedRun, Wakeup], Advance | None]
"""``advance(claimed, recorded)``: the state to write for ``claimed`` as ``recorded``
is applied, or ``None`` to leave it to the run's driver. Called inside a
transaction, maybe on a storage worker thread: it must be quick, pure, and not
block or await."""


@final
@attrs.frozen(kw_only=True)
class WaitingRun:
    """The run that has been waiting the longest: what an operator looks at first."""

    run_id: str
    id: str
    """Business id."""
    workflow: str
    created_at: datetime
    """When the run started (UTC); the oldest waiting run is the earliest created."""
    updated_at: datetime
    """Its last write (UTC): normally when it parked (a waiting run is not written)."""


@final
@attrs.frozen(kw_only=True)
class RunSummary:
    """What ``summary`` counts, computed by the storage without loading any run.

    The command line's ``stats`` prints it; it is cheap enough to poll from a
    dashboard (the SQLite backend answers from indexes only).
    """

    counts: Mapping[tuple[str, Status], int]
    """Runs by ``(workflow registry name, status)``; only non-zero counts are present."""
    oldest_waiting: WaitingRun | None
    """The earliest created run with status ``waiting`` (ties: lowest ``run_id``), if any."""
    due_timers: int
    """Pending timer wakeups whose ``due_at`` is at or before ``now``: timers an
    engine should be firing. A steady non-zero value means no engine runs them."""
    oldest_due_timer_at: datetime | None
    """The earliest ``due_at`` among those due timers: how late the engines are."""
    next_timer_at: datetime | None
    """The earliest ``due_at`` after ``now`` among pending timers, if any."""

    def count(self, *, workflow: str | None = None, status: Status | str | None = None) -> int:
        """Runs of ``workflow`` (any if ``None``) with ``status`` (any if ``None``)."""
        wanted = None if status is None else Status.coerce(status)
        return sum(
            n
            for (name, s), n in self.counts.items()
            if (workflow is None or name == workflow) and (wanted is None or s is wanted)
        )


class UniqueViolation(HephaestusError):
    """A new run would share its ``unique_key`` with another live run.

    Backends raise it from ``create``; the engine translates it into the
    public ``AlreadyRunning``.
    """

    def __init__(self, unique_key: str, existing_run_id: str, existing_id: str) -> None:
        self.unique_key = unique_key
        self.existing_run_id = existing_run_id
        self.existing_id = existing_id
        super().__init__(f"unique key {unique_key!r} is held by live run {existing_run_id!r}")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.unique_key, self.existing_run_id, self.existing_id))


class WakeupGone(HephaestusError):
    """A ``write`` was asked to consume a wakeup that no longer exists (nothing was written).

    A timer cancelled through its handle while its owner was applying it is
    the one way this happens; the owner re-reads its wakeups and carries on.
    """

    def __init__(self, run_id: str, seq: int) -> None:
        self.run_id = run_id
        self.seq = seq
        super().__init__(f"wakeup {seq} of run {run_id!r} is gone")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.seq))


RefusalReason = Literal["not_live", "step_pending", "full"]


class WakeupRefused(HephaestusError):
    """``add_wakeup`` recorded nothing.

    ``reason`` is ``"not_live"`` (the run is missing or terminal: ``status``
    says which), ``"step_pending"`` (that step already has an unapplied
    resume) or ``"full"`` (the run has ``max_pending`` unapplied resumes).
    """

    def __init__(self, run_id: str, reason: RefusalReason, status: str | None = None) -> None:
        self.run_id = run_id
        self.reason = reason
        self.status = status
        super().__init__(f"wakeup for run {run_id!r} refused: {reason} ({status or '-'})")

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.run_id, self.reason, self.status))


@runtime_checkable
class Storage(Protocol):
    """Where runs, their leases and their wakeups live. Runs are keyed by ``run_id``.

    Edge cases every backend honours (the conformance suite checks each):

    - Use before ``open`` or after ``close`` raises ``StorageError``.
    - ``get`` of an unknown run returns ``None``; ``delete`` of one is a no-op.
    - ``Instance.timers`` as read is the run's pending timer wakeups, in
      ``seq`` order (whatever the written document said).
    - ``query`` returns runs ordered by ``created_at`` then ``run_id``; its
      filters combine with AND and accept ``Status`` members or their values.
    - A terminal ``write`` ends the lease and deletes every wakeup of the run.
    """

    durable: bool

    async def __aenter__(self) -> Storage: ...

    async def __aexit__(self, *exc_info: object) -> None: ...

    async def open(self) -> None:
        """Open connections, create or migrate the schema. Idempotent."""
        ...

    async def close(self) -> None:
        """Flush and release everything. Idempotent."""
        ...

    # -- runs --------------------------------------------------------------------

    async def get(self, run_id: str) -> Instance | None:
        """The run with ``run_id``, or ``None``."""
        ...

    async def query(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
        created_after: datetime | None = None,
        limit: int | None = None,
        after: tuple[datetime, str] | None = None,
    ) -> list[Instance]:
        """Runs matching every given filter, ordered by ``(created_at, run_id)``.

        Paging (keyset, so a page never shifts when runs are added meanwhile):
        ``created_after`` keeps runs created at or after that instant;
        ``after`` keeps runs strictly after that ``(created_at, run_id)``
        (pass the last run of the previous page); ``limit`` returns at most
        that many. A run created meanwhile sorts after every run already
        listed (its ``created_at`` is later), so it shows up on a later page
        and never shifts or repeats one. Datetimes compare as instants,
        whatever their offset.

        Raises:
            ValueError: an unknown status.
            InvalidArgument: ``limit`` is not a positive ``int``, ``after`` is
                not a ``(timezone-aware datetime, str)`` tuple, or
                ``created_after`` is not timezone-aware.
        """
        ...

    async def summary(self, *, now: datetime) -> RunSummary:
        """Counts by workflow and status, the oldest waiting run and the timers due at ``now``.

        Computed by the backend itself (SQL aggregates on indexes); no run's
        document is loaded, so it stays cheap on large stores and safe to call
        while engines run.

        Raises:
            InvalidArgument: ``now`` is not timezone-aware.
        """
        ...

    async def create(
        self, instance: Instance, *, now: datetime, owner: str | None = None, ttl: float = 30.0
    ) -> Lease | None:
        """Insert a new run; with ``owner``, claimed by it in the same write.

        Returns the lease when ``owner`` is given, else ``None`` (the run is
        then claimable at once).

        Raises:
            UniqueViolation: another live run holds ``instance.unique_key``.
            ValueError: a run with this ``run_id`` exists already.
        """
        ...

    async def write(
        self,
        lease: Lease,
        instance: Instance,
        *,
        now: datetime,
        consume: Sequence[int] = (),
        add_timers: Sequence[TimerRecord] = (),
    ) -> list[Wakeup]:
        """Replace the run's state under ``lease``, atomically with its wakeup changes.

        In the same atomic write: delete the ``consume``d wakeups, add one
        timer wakeup per ``add_timers`` record, delete timer wakeups of steps
        not in ``instance.waiting_steps``; and when ``instance`` is terminal,
        delete every wakeup of the run and end the lease. Returns the timer
        wakeups added.

        Raises:
            LeaseLost: the stored owner or epoch is not ``lease``'s (nothing written).
            WakeupGone: a consumed wakeup does not exist (nothing written).
        """
        ...

    async def delete(self, run_id: str) -> None:
        """Remove a run and its wakeups; unknown ids are ignored."""
        ...

    async def purge(self, older_than: datetime) -> int:
        """Delete terminal runs last updated before ``older_than``; returns how many."""
        ...

    # -- leases ------------------------------------------------------------------

    async def claim(
        self,
        owner: str,
        *,
        now: datetime,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        limit: int,
        run_ids: Collection[str] | None = None,
    ) -> list[Lease]:
        """Take live runs that need a driver and are unowned or whose lease expired.

        A run needs a driver when it is pending or running, when a wakeup was
        added since its owner last released it, or when its earliest timer is
        due. Only runs of ``workflows`` (``None``: any) and, if given, of
        ``run_ids`` are taken, at most ``limit``. Each claim bumps the epoch.
        """
        ...

    async def renew(
        self, owner: str, leases: Collection[Lease], *, now: datetime, ttl: float
    ) -> list[Lease]:
        """Extend every lease still held exactly as given; returns the renewed ones.

        A lease missing from the result is lost (taken over, or its run ended).
        It also refreshes ``owner``'s heartbeat (``EngineRecord.last_heartbeat``)
        when ``owner`` is a registered engine, even when ``leases`` is empty.
        """
        ...

    async def release(
        self, lease: Lease, *, now: datetime, wake_at: datetime | None, seen: int
    ) -> bool:
        """Give up ownership of a live run that has nothing to do now (it hibernates).

        ``wake_at`` is when it next needs a driver (its earliest timer, or
        ``None``); ``seen`` is the highest wakeup ``seq`` the owner has read.
        Returns ``True`` when the run got a wakeup above ``seen`` meanwhile:
        it is then claimable at once.

        Raises:
            LeaseLost: the lease is no longer held (nothing changed).
        """
        ...

    async def release_all(self, owner: str, *, now: datetime) -> int:
        """Clean shutdown: every live run ``owner`` holds becomes claimable at once."""
        ...

    async def next_wake(
        self, owner: str, *, workflows: Collection[WorkflowKey] | None
    ) -> datetime | None:
        """Earliest time a run not held by ``owner`` may become claimable, or ``None``."""
        ...

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        """Record a running engine (``info``: host, pid; metadata only)."""
        ...

    async def unregister_engine(self, engine_id: str) -> None:
        """Forget a cleanly stopped engine."""
        ...

    async def engines(self, *, now: datetime) -> list[EngineRecord]:
        """Every registered engine, by ``engine_id``, with its heartbeat and live runs held.

        For operators (the CLI's ``engines`` command); takeover never depends on it.
        ``register_engine`` and every ``renew`` (even of no lease) set the heartbeat.
        """
        ...

    async def reap_engines(self, *, now: datetime) -> list[str]:
        """Expire at once the leases of engines this backend can *prove* dead.

        SQLite proves it with a lock file the kernel released when the process
        died; a backend that cannot prove death returns ``[]`` and leases
        simply expire. Returns the ids of the engines found dead.
        """
        ...

    # -- wakeups -----------------------------------------------------------------

    async def add_wakeup(
        self, wakeup: NewWakeup, *, now: datetime, max_pending: int | None = None
    ) -> Wakeup | None:
        """Record a wakeup; durable before it returns on a durable backend.

        Returns ``None`` (and records nothing) when the resume's ``dedup_key``
        was already recorded for the run, or when a cancel is already
        requested. Makes the run claimable once ``due_at`` has passed.

        Raises:
            WakeupRefused: the run is not live, the step already has an
                unapplied resume, or ``max_pending`` resumes are unapplied.
        """
        ...

    async def add_wakeup_and_claim(
        self,
        wakeup: NewWakeup,
        *,
        now: datetime,
        max_pending: int | None = None,
        owner: str,
        ttl: float,
        workflows: Collection[WorkflowKey] | None,
        advance: Advancer | None = None,
    ) -> tuple[Wakeup | None, ClaimedRun | None]:
        """``add_wakeup``, then, in the same transaction, claim the run for ``owner``.

        The wakeup is recorded (or refused, or deduplicated) exactly as by
        ``add_wakeup``. Once recorded, the run is claimed as ``claim(owner,
        run_ids=[wakeup.run_id], limit=1, ...)`` would claim it: only when it
        needs a driver at ``now`` (a wakeup due by then), is unowned or its
        lease expired, and is of ``workflows`` (``None``: any). A run held by
        anyone, ``owner`` included, is left as it is. Returns the recorded
        wakeup (``None`` as ``add_wakeup`` returns it) and the claimed run
        with its state and unapplied wakeups (``None``: not claimed).

        With ``advance``, once claimed, ``advance(claimed, recorded)`` says what
        applying the recorded wakeup makes of the run; an ``Advance`` is written
        under the new lease as ``write(lease, advance.instance,
        consume=[recorded.seq], add_timers=advance.timers)`` would write it, in
        the same transaction (``MemoryStorage``: under the lease just granted,
        which no other writer can hold), and the claimed run returned is the
        written state with ``applied`` set. ``None``, an exception (logged) or
        a state ``write`` would refuse (logged) leave the claim as without
        ``advance``.

        Raises:
            WakeupRefused: as ``add_wakeup``; nothing is recorded or claimed.
        """
        ...

    async def seen_dedup_key(self, run_id: str, dedup_key: str) -> bool:
        """Whether a resume with ``dedup_key`` was ever recorded for the run."""
        ...

    async def wakeups(self, run_id: str) -> list[Wakeup]:
        """The run's unapplied wakeups, in ``seq`` order."""
        ...

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        """Delete a pending timer wakeup; ``False`` if it was already applied or dropped."""
        ...

    async def owned_wakeups(self, owner: str, *, after: int) -> list[tuple[str, int]]:
        """``(run_id, highest seq)`` of runs held by ``owner`` with wakeups above ``after``."""
        ...

    async def wait_for_change(self, seen: int) -> int:
        """Return a change counter as soon as it differs from ``seen``.

        A hint, never the only way work is found: it moves when this process
        adds a wakeup, creates an unowned run or releases one, and (on a
        backend shared between processes) when another process commits,
        noticed within the backend's poll interval.
        """
        ...
