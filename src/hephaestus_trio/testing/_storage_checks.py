"""The storage conformance suite, as a library: ``check_storage`` and ``STORAGE_CHECKS``.

Every backend of ``hephaestus_trio.Storage`` must pass every check here; the
suite *is* the definition of the protocol's semantics where the docstrings of
``storage/_protocol.py`` leave room. It is modelled on
``trio.testing.check_one_way_stream``::

    from hephaestus_trio.testing import check_storage

    async def test_my_backend(tmp_path):
        n = itertools.count()
        def new_location():
            path = tmp_path / f"db{next(n)}"
            return lambda: MyStorage(path)      # a StorageFactory
        await check_storage(new_location, durable=True)

or one pytest test per check, so failures show per check::

    @pytest.mark.parametrize("name", list(STORAGE_CHECKS))
    async def test_conformance(name, tmp_path):
        await STORAGE_CHECKS[name](lambda: MyStorage(tmp_path / "db"), durable=True)

A **storage factory** returns a new, unopened storage object on one location
(one database); calling it twice gives two objects on the same data. Checks
open what they need with ``async with``. With ``durable=False`` a check calls
its factory exactly once (a non-durable backend shares nothing between
objects, so ``lambda: MemoryStorage()`` and a factory returning one object are
both fine); with ``durable=True`` some checks open a second object on the same
data, sequentially (reopen) or side by side (claim races).

Conventions of the checks:

- Time is the explicit ``now`` each call passes (datetimes from ``T0``); no
  check sleeps. The few checks that wait for another task (``wait_for_change``)
  bound the wait with a real-time guard of ``GUARD_SECONDS``, so run the
  checks under Trio's default clock, not an autojump ``MockClock``.
- ``-1`` is never a change counter: ``wait_for_change(-1)`` returns the current
  counter at once.
- Plain ``assert`` with messages; this module imports neither pytest nor
  Hypothesis.

The module is long because it is one list of independent checks; splitting it
would only scatter the table of contents (``STORAGE_CHECKS``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar, cast

import attrs
import trio
import trio.testing

from .._errors import InvalidArgument, LeaseLost, StorageError
from ..core._instance import (
    Context,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    Status,
    TimerRecord,
)
from ..core._shape import DefinitionShape
from ..storage._protocol import (
    Advance,
    Advancer,
    ClaimedRun,
    EngineRecord,
    Lease,
    NewWakeup,
    RunSummary,
    Storage,
    UniqueViolation,
    WaitingRun,
    Wakeup,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
)

__all__ = [
    "GUARD_SECONDS",
    "STORAGE_CHECKS",
    "T0",
    "StorageCheck",
    "StorageFactory",
    "check_storage",
]

StorageFactory = Callable[[], Storage]
"""A new, unopened storage object on one location; each call, the same data."""


class StorageCheck(Protocol):
    """One conformance check: run it on a factory of a fresh, empty location."""

    def __call__(self, new_storage: StorageFactory, *, durable: bool) -> Awaitable[None]: ...


T0 = datetime(2030, 1, 1, tzinfo=UTC)
"""The checks' epoch: every ``now`` they pass is ``T0`` plus some seconds."""

GUARD_SECONDS = 10.0
"""Real-time bound on the few waits for another task (a hang becomes a failure)."""

TTL = 30.0
KEY = "tests.Order::orderid::a1"
LIVE = (Status.PENDING, Status.RUNNING, Status.WAITING)
TERMINAL = (Status.COMPLETED, Status.FAILED, Status.CANCELLED)

_CHECKS: dict[str, StorageCheck] = {}

STORAGE_CHECKS: Mapping[str, StorageCheck] = MappingProxyType(_CHECKS)
"""Every check by name, in a stable order (parametrize one test per check over it)."""

_C = TypeVar("_C", bound=Callable[..., Awaitable[None]])
_E = TypeVar("_E", bound=BaseException)


def _check(fn: _C) -> _C:
    name = fn.__name__.lstrip("_")
    assert name not in _CHECKS, name
    _CHECKS[name] = cast("StorageCheck", fn)
    return fn


async def check_storage(new_storage: Callable[[], StorageFactory], *, durable: bool) -> None:
    """Run every check of ``STORAGE_CHECKS``, each on a fresh location.

    ``new_storage()`` returns the factory of a new, empty location (for a file
    backend: a new file name). ``durable`` says whether the backend's data
    outlives the storage object (``Storage.durable``).

    Raises:
        AssertionError: a check failed; the message names it (the original
            error is the ``__cause__``).
    """
    for name, check in STORAGE_CHECKS.items():
        try:
            await check(new_storage(), durable=durable)
        except Exception as exc:
            raise AssertionError(f"storage check {name!r} failed: {exc!r}") from exc


# -- helpers ---------------------------------------------------------------------------


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_run(
    id: str = "orderid::a1",
    *,
    run_id: str,
    workflow: str = "tests.Order",
    version: int = 1,
    status: Status = Status.PENDING,
    unique_key: str | None = None,
    created_at: datetime = T0,
    updated_at: datetime | None = None,
    **changes: Any,
) -> Instance:
    """A run built the way the engine builds one: ``Instance.new`` then ``attrs.evolve``."""
    instance = Instance.new(
        workflow,
        {"items": 3, "note": "é"},
        id=id,
        version=version,
        run_id=run_id,
        now=created_at,
        unique_key=unique_key,
    )
    return attrs.evolve(instance, status=status, updated_at=updated_at or created_at, **changes)


def _parked(instance: Instance, *steps: str, at: datetime | None = None) -> Instance:
    """The run waiting on ``steps`` (the shape the engine writes when steps park)."""
    return attrs.evolve(
        instance,
        status=Status.WAITING,
        active_steps=frozenset(steps),
        waiting_steps=frozenset(steps),
        updated_at=at or instance.updated_at,
    )


def _resume(
    run_id: str,
    step: str = "wait",
    event: str = "go",
    *,
    at: datetime = T0,
    dedup_key: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> NewWakeup:
    return NewWakeup(
        run_id=run_id,
        kind=WakeupKind.RESUME,
        step=step,
        event=event,
        payload=payload,
        dedup_key=dedup_key,
        due_at=at,
    )


def _timer(run_id: str, step: str = "wait", event: str = "timeout", *, at: datetime) -> NewWakeup:
    return NewWakeup(run_id=run_id, kind=WakeupKind.TIMER, step=step, event=event, due_at=at)


def _cancel(run_id: str, *, at: datetime = T0) -> NewWakeup:
    return NewWakeup(run_id=run_id, kind=WakeupKind.CANCEL, due_at=at)


class _Raised(Generic[_E]):
    def __init__(self) -> None:
        self._value: _E | None = None

    @property
    def value(self) -> _E:
        assert self._value is not None
        return self._value


@contextlib.contextmanager
def _raises(kind: type[_E], what: str) -> Iterator[_Raised[_E]]:
    raised: _Raised[_E] = _Raised()
    try:
        yield raised
    except kind as exc:
        raised._value = exc
        return
    raise AssertionError(f"{what}: expected {kind.__name__}, nothing was raised")


def _eq(actual: object, expected: object, what: str) -> None:
    assert actual == expected, f"{what}:\n  got      {actual!r}\n  expected {expected!r}"


async def _create_owned(
    s: Storage, instance: Instance, owner: str = "A", *, now: datetime = T0, ttl: float = TTL
) -> Lease:
    lease = await s.create(instance, now=now, owner=owner, ttl=ttl)
    assert lease is not None, "create(owner=...) must return the lease"
    return lease


async def _store(s: Storage, instance: Instance) -> None:
    """Store ``instance`` as it is, unowned (a terminal one through a lease's last write)."""
    if instance.status.is_live:
        await s.create(instance, now=instance.updated_at)
        return
    lease = await _create_owned(
        s, attrs.evolve(instance, status=Status.RUNNING), "loader", now=instance.updated_at
    )
    await s.write(lease, instance, now=instance.updated_at)


async def _claim(
    s: Storage,
    owner: str,
    now: datetime,
    *,
    limit: int = 100,
    workflows: Collection[tuple[str, int]] | None = None,
    run_ids: Collection[str] | None = None,
    ttl: float = TTL,
) -> list[Lease]:
    return await s.claim(owner, now=now, ttl=ttl, workflows=workflows, limit=limit, run_ids=run_ids)


def _ids(leases: Sequence[Lease]) -> list[str]:
    return [lease.run_id for lease in leases]


async def _timers(s: Storage, run_id: str) -> tuple[TimerRecord, ...]:
    got = await s.get(run_id)
    assert got is not None, f"run {run_id!r} should exist"
    return got.timers


def _full_run(run_id: str, status: Status, at: datetime) -> Instance:
    """A run with every field of ``Instance`` set to something non-default."""
    return make_run(
        run_id=run_id,
        status=status,
        unique_key=KEY,
        context=Context(initial={"items": 3}, steps={"validate": {"ok": True, "n": [1, 2]}}),
        step_configs={"wait": {"seconds": 1.5}},
        active_steps=frozenset({"wait", "ship"}),
        waiting_steps=frozenset({"wait"}),
        completed_steps=frozenset({"validate"}),
        taken_edges=frozenset({("validate", "wait"), ("validate", "ship")}),
        runtime_metadata={"charged": 12.5, "tags": ["a", "ü"], "nested": {"x": None}},
        telemetry_metadata={"tenant": "acme"},
        execution_history=(
            ExecutionEntry(step="validate", event="valid", timestamp=at, context_updates={"ok": 1}),
            ExecutionEntry(
                step="ship",
                event="",
                timestamp=at,
                attempt=2,
                error=ErrorRecord(
                    kind="timeout",
                    message="too slow",
                    step="ship",
                    exception_type="trio.TooSlowError",
                    attempt=2,
                    traceback='Traceback (most recent call last):\n  File "x.py"\nTooSlowError\n',
                ),
            ),
            ExecutionEntry(step="ship", event="done", timestamp=at, attempt=3, wakeup=7),
        ),
        error=ErrorRecord(
            kind="crash",
            message="boom",
            step="ship",
            exception_type="OSError",
            attempt=2,
            traceback="Traceback (most recent call last):\nOSError: boom \u00fc\n",
        ),
        definition_fingerprint="sha256:" + "0" * 64,
        definition_shape=DefinitionShape(
            start="validate",
            steps=("done", "ship", "validate", "wait"),
            events=(("ship", "done"), ("validate", "valid"), ("wait", "timeout")),
            transitions=(("validate", "valid", "ship"), ("validate", "valid", "wait")),
        ),
        updated_at=at,
    )


# -- basics ----------------------------------------------------------------------------


@_check
async def _is_a_storage(new_storage: StorageFactory, *, durable: bool) -> None:
    storage = new_storage()
    assert isinstance(storage, Storage), f"{storage!r} does not implement Storage"
    _eq(storage.durable, durable, "the backend's durable attribute")
    async with storage as opened:
        assert opened is storage, "async with storage must yield the storage itself"


@_check
async def _get_unknown_returns_none(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        _eq(await s.get("no-such-run"), None, "get of an unknown run")
        _eq(await s.query(), [], "query of an empty storage")
        _eq(await s.wakeups("no-such-run"), [], "wakeups of an unknown run")


@_check
async def _create_then_get_round_trips(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        live = _full_run("r1", Status.WAITING, _at(5))
        _eq(await s.create(live, now=_at(5)), None, "create without owner returns")
        _eq(await s.get("r1"), live, "get after create (every field)")
        _eq(await s.query(), [live], "query after create (every field)")
        lease = await _create_owned(
            s, make_run("orderid::b", run_id="r2", status=Status.RUNNING, created_at=_at(6))
        )
        final = attrs.evolve(
            _full_run("r2", Status.FAILED, _at(7)),
            id="orderid::b",
            unique_key=None,
            created_at=_at(6),
        )
        _eq(await s.write(lease, final, now=_at(7)), [], "write returns the timers added")
        _eq(await s.get("r2"), final, "get after a terminal write (every field)")


@_check
async def _write_replaces_the_run(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        first = make_run(run_id="r1")
        lease = await _create_owned(s, first)
        second = attrs.evolve(first, status=Status.RUNNING, updated_at=_at(1))
        await s.write(lease, second, now=_at(1))
        _eq(await s.get("r1"), second, "get after write")
        _eq(await s.query(), [second], "query after write")
        third = attrs.evolve(second, runtime_metadata={"n": 2}, updated_at=_at(2))
        await s.write(lease, third, now=_at(2))
        _eq(await s.get("r1"), third, "get after a second write under the same lease")
        # Instance.timers as read is the pending timer wakeups, whatever the document says.
        stray = TimerRecord(step="wait", event="timeout", fire_at=_at(9))
        fourth = _parked(attrs.evolve(third, timers=(stray,)), "wait", at=_at(3))
        await s.write(lease, fourth, now=_at(3))
        _eq(await s.get("r1"), attrs.evolve(fourth, timers=()), "a document's timers are ignored")
        _eq(await s.wakeups("r1"), [], "no timer wakeup from a document's timers")
        _eq(await s.create(attrs.evolve(make_run(run_id="r2"), timers=()), now=T0), None, "r2")
        (found,) = await s.query(status="waiting")
        _eq(found.timers, (), "query ignores a document's timers too")


@_check
async def _create_refuses_bad_runs(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for status in TERMINAL:
            with _raises(ValueError, f"create of a {status.value} run"):
                await s.create(make_run(run_id="dead", status=status), now=T0)
            _eq(await s.get("dead"), None, f"a refused {status.value} create writes nothing")
        first = make_run(run_id="r1")
        await s.create(first, now=T0)
        with _raises(ValueError, "create of an existing run_id") as info:
            await s.create(make_run("orderid::other", run_id="r1"), now=T0)
        assert "r1" in str(info.value), f"the error should name the run: {info.value}"
        with _raises(ValueError, "create with owner of an existing run_id"):
            await s.create(make_run(run_id="r1"), now=T0, owner="A")
        _eq(await s.get("r1"), first, "the existing run is unchanged")
        _eq(
            await _claim(s, "A", T0),
            [Lease(run_id="r1", owner="A", epoch=1, expires_at=_at(TTL))],
            "the existing run stays unowned and claimable",
        )


@_check
async def _delete_removes_the_run(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.create(make_run(run_id="r1", unique_key=KEY), now=T0)
        await s.create(make_run(run_id="r2"), now=T0)
        await s.add_wakeup(_resume("r1", dedup_key="d"), now=T0)
        await s.add_wakeup(_timer("r1", at=_at(9)), now=T0)
        kept = await s.add_wakeup(_resume("r2"), now=T0)
        await s.delete("r1")
        await s.delete("r1")
        await s.delete("never-existed")
        _eq(await s.get("r1"), None, "get after delete")
        _eq([i.run_id for i in await s.query()], ["r2"], "query after delete")
        _eq(await s.wakeups("r1"), [], "wakeups of a deleted run")
        _eq(await s.wakeups("r2"), [kept], "wakeups of another run survive a delete")
        _eq(_ids(await _claim(s, "A", T0)), ["r2"], "a deleted run is never claimed")
        # The run_id, its key and its dedup keys are free again.
        await s.create(make_run(run_id="r1", unique_key=KEY), now=T0)
        again = await s.add_wakeup(_resume("r1", dedup_key="d"), now=T0)
        assert again is not None, "dedup keys of a deleted run must be forgotten"


@_check
async def _every_method_checkpoints(new_storage: StorageFactory, *, durable: bool) -> None:
    storage = new_storage()
    with trio.testing.assert_checkpoints():
        await storage.open()
    s = storage
    run = make_run(run_id="r1")

    @contextlib.contextmanager
    def checkpoints(name: str) -> Iterator[None]:
        try:
            with trio.testing.assert_checkpoints():
                yield
        except AssertionError:
            raise AssertionError(f"{name} did not checkpoint") from None

    try:
        with checkpoints("create"):
            lease = await s.create(run, now=T0, owner="A")
        assert lease is not None
        with checkpoints("create (unowned)"):
            await s.create(make_run(run_id="r2"), now=T0)
        with checkpoints("get"):
            await s.get("r1")
        with checkpoints("get (unknown)"):
            await s.get("unknown")
        with checkpoints("query"):
            await s.query(status="pending")
        with checkpoints("query (paged)"):
            await s.query(created_after=T0, limit=1, after=(T0, "r0"))
        with checkpoints("summary"):
            await s.summary(now=T0)
        with checkpoints("add_wakeup"):
            timer = await s.add_wakeup(_timer("r1", at=_at(50)), now=T0)
        assert timer is not None
        with checkpoints("add_wakeup (deduplicated)"):
            await s.add_wakeup(_cancel("r1"), now=T0)
            await s.add_wakeup(_cancel("r1"), now=T0)
        with checkpoints("wakeups"):
            await s.wakeups("r1")
        with checkpoints("owned_wakeups"):
            await s.owned_wakeups("A", after=0)
        with checkpoints("cancel_timer"):
            await s.cancel_timer("r1", timer.seq)
        with checkpoints("write"):
            await s.write(lease, _parked(run, "wait"), now=T0)
        with checkpoints("renew"):
            (lease,) = await s.renew("A", [lease], now=T0, ttl=TTL)
        with checkpoints("next_wake"):
            await s.next_wake("A", workflows=None)
        with checkpoints("claim"):
            await _claim(s, "B", T0)
        with checkpoints("release"):
            await s.release(lease, now=T0, wake_at=None, seen=0)
        with checkpoints("release_all"):
            await s.release_all("B", now=T0)
        with checkpoints("register_engine"):
            await s.register_engine("A", now=T0, info={"pid": 1})
        with checkpoints("reap_engines"):
            await s.reap_engines(now=T0)
        with checkpoints("engines"):
            await s.engines(now=T0)
        with checkpoints("unregister_engine"):
            await s.unregister_engine("A")
        with checkpoints("wait_for_change"):
            await s.wait_for_change(-1)
        with checkpoints("purge"):
            await s.purge(T0)
        with checkpoints("delete"):
            await s.delete("r1")
    finally:
        with trio.testing.assert_checkpoints():
            await storage.close()


# -- lifecycle -------------------------------------------------------------------------


def _every_call(s: Storage) -> list[tuple[str, Callable[[], Awaitable[object]]]]:
    """One call of every method but ``open``/``close``, with plausible arguments."""
    lease = Lease(run_id="r1", owner="A", epoch=1, expires_at=_at(TTL))
    run = make_run(run_id="r1")
    return [
        ("get", lambda: s.get("r1")),
        ("query", lambda: s.query()),
        ("query (paged)", lambda: s.query(limit=1, after=(T0, "r0"))),
        ("summary", lambda: s.summary(now=T0)),
        ("create", lambda: s.create(run, now=T0)),
        ("write", lambda: s.write(lease, run, now=T0)),
        ("delete", lambda: s.delete("r1")),
        ("purge", lambda: s.purge(T0)),
        ("claim", lambda: _claim(s, "A", T0)),
        ("renew", lambda: s.renew("A", [lease], now=T0, ttl=TTL)),
        ("release", lambda: s.release(lease, now=T0, wake_at=None, seen=0)),
        ("release_all", lambda: s.release_all("A", now=T0)),
        ("next_wake", lambda: s.next_wake("A", workflows=None)),
        ("register_engine", lambda: s.register_engine("A", now=T0, info={})),
        ("unregister_engine", lambda: s.unregister_engine("A")),
        ("reap_engines", lambda: s.reap_engines(now=T0)),
        ("engines", lambda: s.engines(now=T0)),
        ("add_wakeup", lambda: s.add_wakeup(_resume("r1"), now=T0)),
        (
            "add_wakeup_and_claim",
            lambda: s.add_wakeup_and_claim(
                _resume("r1"), now=T0, owner="A", ttl=TTL, workflows=None
            ),
        ),
        ("wakeups", lambda: s.wakeups("r1")),
        ("seen_dedup_key", lambda: s.seen_dedup_key("r1", "k")),
        ("cancel_timer", lambda: s.cancel_timer("r1", 1)),
        ("owned_wakeups", lambda: s.owned_wakeups("A", after=0)),
        ("wait_for_change", lambda: s.wait_for_change(-1)),
    ]


async def _refuses_every_call(s: Storage, when: str, words: str) -> None:
    for name, call in _every_call(s):
        with _raises(StorageError, f"{name} {when}") as info:
            await call()
        assert words in str(info.value), (
            f"{name} {when}: message should say {words!r}: {info.value}"
        )


@_check
async def _methods_refuse_before_open(new_storage: StorageFactory, *, durable: bool) -> None:
    await _refuses_every_call(new_storage(), "before open", "not open")


@_check
async def _methods_refuse_after_close(new_storage: StorageFactory, *, durable: bool) -> None:
    storage = new_storage()
    async with storage:
        await storage.create(make_run(run_id="r1"), now=T0)
    await _refuses_every_call(storage, "after close", "closed")


@_check
async def _open_and_close_are_idempotent(new_storage: StorageFactory, *, durable: bool) -> None:
    storage = new_storage()
    await storage.open()
    await storage.open()
    await storage.create(make_run(run_id="r1"), now=T0)
    assert await storage.get("r1") is not None, "a run created between two opens"
    await storage.close()
    await storage.close()


@_check
async def _reopen_after_close(new_storage: StorageFactory, *, durable: bool) -> None:
    storage = new_storage()
    run = make_run(run_id="r1")
    async with storage:
        await storage.create(run, now=T0)
    async with storage:
        _eq(await storage.get("r1"), run, "the same object, reopened, keeps its data")
        await storage.create(make_run(run_id="r2"), now=T0)
        _eq(len(await storage.query()), 2, "the reopened object writes")


@_check
async def _durable_data_survives_another_object(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    if not durable:
        return  # nothing outlives the object; reopen_after_close covers the one object
    runs = [
        _parked(make_run(run_id="r1", unique_key=KEY), "wait"),
        make_run(run_id="r2", status=Status.COMPLETED, updated_at=_at(1)),
        _parked(make_run(run_id="r3"), "wait"),
    ]
    timer = TimerRecord(step="wait", event="timeout", fire_at=_at(100))
    async with new_storage() as s:
        lease = await _create_owned(s, runs[0])
        await _store(s, runs[1])
        await s.create(attrs.evolve(runs[2], timers=(timer,)), now=T0)
        resume = await s.add_wakeup(_resume("r1", dedup_key="d1"), now=_at(1))
        assert resume is not None
        await s.register_engine("A", now=T0, info={"pid": 1})
        before = await s.wakeups("r1") + await s.wakeups("r3")
    async with new_storage() as reopened:
        _eq(
            await reopened.query(),
            [runs[0], runs[1], attrs.evolve(runs[2], timers=(timer,))],
            "every run, through another object",
        )
        _eq(await reopened.wakeups("r1") + await reopened.wakeups("r3"), before, "every wakeup")
        _eq(
            await reopened.add_wakeup(_resume("r1", dedup_key="d1"), now=T0),
            None,
            "a dedup key recorded by the first object",
        )
        with _raises(UniqueViolation, "the unique key held through the first object"):
            await reopened.create(make_run(run_id="r9", unique_key=KEY), now=T0)
        _eq(_ids(await _claim(reopened, "B", _at(1))), ["r3"], "r1 is still leased to A")
        (renewed,) = await reopened.renew("A", [lease], now=_at(2), ttl=TTL)
        _eq(renewed.epoch, lease.epoch, "the lease survives the reopen")
        await reopened.write(
            lease, attrs.evolve(runs[0], updated_at=_at(3)), now=_at(3), consume=[resume.seq]
        )
        later = await reopened.add_wakeup(_resume("r1", "other"), now=_at(4))
        assert later is not None
        assert later.seq > max(w.seq for w in before), "seqs keep increasing across objects"


# -- query -----------------------------------------------------------------------------

# (run_id, id, workflow, version, status, minutes after T0)
DATASET = [
    ("r01", "orderid::a", "shop.Order", 1, Status.PENDING, 5),
    ("r02", "orderid::b", "shop.Order", 1, Status.RUNNING, 1),
    ("r03", "orderid::c", "shop.Order", 2, Status.WAITING, 3),
    ("r04", "orderid::a", "shop.Order", 2, Status.COMPLETED, 0),
    ("r05", "orderid::a", "shop.Refund", 1, Status.FAILED, 4),
    ("r06", "userid::u", "shop.Signup", 1, Status.CANCELLED, 2),
    ("r07", "userid::u", "shop.Signup", 1, Status.WAITING, 3),
]

_Keep = Callable[[str, str, int, Status], bool]

QUERIES: list[tuple[dict[str, Any], _Keep]] = [
    ({}, lambda i, w, v, s: True),
    ({"status": Status.WAITING}, lambda i, w, v, s: s is Status.WAITING),
    ({"status": "waiting"}, lambda i, w, v, s: s is Status.WAITING),
    ({"status_in": ["pending", "running"]}, lambda i, w, v, s: s.value in {"pending", "running"}),
    (
        {"status_in": [Status.COMPLETED, "failed", Status.CANCELLED]},
        lambda i, w, v, s: s.is_terminal,
    ),
    ({"status_in": []}, lambda i, w, v, s: False),
    ({"workflow": "shop.Order"}, lambda i, w, v, s: w == "shop.Order"),
    ({"workflow": "nope"}, lambda i, w, v, s: False),
    ({"workflow_version": 2}, lambda i, w, v, s: v == 2),
    ({"id": "orderid::a"}, lambda i, w, v, s: i == "orderid::a"),
    (
        {"id": "orderid::a", "workflow": "shop.Order", "workflow_version": 2},
        lambda i, w, v, s: i == "orderid::a" and w == "shop.Order" and v == 2,
    ),
    (
        {"workflow": "shop.Order", "status_in": list(LIVE)},
        lambda i, w, v, s: w == "shop.Order" and s.is_live,
    ),
    (
        {"status": "waiting", "status_in": ["waiting", "running"], "workflow": "shop.Signup"},
        lambda i, w, v, s: s is Status.WAITING and w == "shop.Signup",
    ),
    ({"status": "running", "status_in": ["waiting"]}, lambda i, w, v, s: False),
]


def _expected(keep: _Keep) -> list[str]:
    rows = [row for row in DATASET if keep(row[1], row[2], row[3], row[4])]
    return [row[0] for row in sorted(rows, key=lambda row: (row[5], row[0]))]


@_check
async def _query_filters(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for run_id, id_, workflow, version, status, minutes in reversed(DATASET):
            at = T0 + timedelta(minutes=minutes)
            run = make_run(
                id_, run_id=run_id, workflow=workflow, version=version, status=status, created_at=at
            )
            await _store(s, run)
        for filters, keep in QUERIES:
            found = await s.query(**filters)
            _eq([i.run_id for i in found], _expected(keep), f"query(**{filters!r})")


@_check
async def _query_orders_by_created_at_then_run_id(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    later = T0 + timedelta(microseconds=1)
    async with new_storage() as s:
        for run_id, created in [("b", T0), ("c", later), ("a", T0), ("aa", T0), ("0", later)]:
            await s.create(make_run(run_id=run_id, created_at=created), now=T0)
        _eq([i.run_id for i in await s.query()], ["a", "aa", "b", "0", "c"], "query order")


@_check
async def _query_orders_by_instant_whatever_the_offset(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:30 at +02:00 is 23:30 UTC the day before: earlier than T0.
    early = datetime(2030, 1, 1, 1, 30, tzinfo=plus_two)
    async with new_storage() as s:
        await s.create(make_run(run_id="a", created_at=T0), now=T0)
        await s.create(make_run(run_id="b", created_at=early), now=T0)
        found = await s.query()
        _eq([i.run_id for i in found], ["b", "a"], "query order across offsets")
        _eq(found[0].created_at, early, "created_at is the same instant")
        _eq(found[0].created_at.utcoffset(), timedelta(0), "created_at comes back in UTC")


@_check
async def _query_rejects_unknown_statuses(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"status": "sleeping"}, "unknown status"),
            ({"status_in": ["waiting", "sleeping"]}, "unknown status"),
            ({"status_in": "waiting"}, "status_in takes a list"),
        ]
        for kwargs, words in cases:
            with _raises(ValueError, f"query(**{kwargs!r})") as info:
                await s.query(**kwargs)
            assert words in str(info.value), f"query(**{kwargs!r}): {info.value}"


async def _store_dataset(s: Storage) -> None:
    for run_id, id_, workflow, version, status, minutes in reversed(DATASET):
        at = T0 + timedelta(minutes=minutes)
        run = make_run(
            id_, run_id=run_id, workflow=workflow, version=version, status=status, created_at=at
        )
        await _store(s, run)


async def _all_pages(s: Storage, size: int, **filters: Any) -> list[list[str]]:
    """Every page of ``query(**filters)``, ``size`` runs each, by keyset cursor."""
    pages: list[list[str]] = []
    after: tuple[datetime, str] | None = None
    while True:
        page = await s.query(**filters, limit=size, after=after)
        assert len(page) <= size, f"query(limit={size}) returned {len(page)} runs"
        if not page:
            return pages
        pages.append([i.run_id for i in page])
        after = (page[-1].created_at, page[-1].run_id)
        assert len(pages) <= len(DATASET) + 1, "paging does not end"


@_check
async def _query_pages_by_keyset(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await _store_dataset(s)
        for filters, keep in QUERIES:
            expected = _expected(keep)
            for size in (1, 2, 3, len(DATASET)):
                pages = await _all_pages(s, size, **filters)
                _eq(
                    [run_id for page in pages for run_id in page],
                    expected,
                    f"pages of {size} of query(**{filters!r}), joined",
                )
                _eq(
                    [len(page) for page in pages[:-1]],
                    [size] * (len(pages) - 1),
                    f"every page but the last is full (size {size}, {filters!r})",
                )
        everything = await s.query()
        _eq(
            [i.run_id for i in await s.query(limit=3)],
            [i.run_id for i in everything[:3]],
            "limit keeps the first runs in query order",
        )
        # The cursor is the (created_at, run_id) of the last run seen, as an
        # instant: the same moment at another offset pages the same way.
        third = everything[2]
        plus_two = timezone(timedelta(hours=2))
        for cursor in [
            (third.created_at, third.run_id),
            (third.created_at.astimezone(plus_two), third.run_id),
        ]:
            _eq(
                [i.run_id for i in await s.query(after=cursor)],
                [i.run_id for i in everything[3:]],
                f"query(after={cursor!r})",
            )
        # A cursor between two runs of the same instant: run_id breaks the tie.
        _eq(
            [i.run_id for i in await s.query(after=(T0 + timedelta(minutes=3), "r03"))],
            ["r07", "r05", "r01"],
            "after= a run_id that ties on created_at",
        )
        _eq(await s.query(after=(T0 + timedelta(days=1), "")), [], "after the last run")


@_check
async def _query_created_after_is_inclusive(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await _store_dataset(s)
        bound = T0 + timedelta(minutes=3)
        expected = [row[0] for row in sorted(DATASET, key=lambda r: (r[5], r[0])) if row[5] >= 3]
        _eq(
            [i.run_id for i in await s.query(created_after=bound)],
            expected,
            "created_after keeps the runs created at or after the bound",
        )
        _eq(
            [
                i.run_id
                for i in await s.query(
                    created_after=bound.astimezone(timezone(timedelta(hours=-5)))
                )
            ],
            expected,
            "created_after compares instants",
        )
        _eq(
            [
                i.run_id
                for i in await s.query(
                    created_after=bound, status="waiting", limit=1, after=(bound, "r03")
                )
            ],
            ["r07"],
            "created_after, status, after and limit combine",
        )
        _eq(await s.query(created_after=T0 + timedelta(hours=1)), [], "a bound after every run")


@_check
async def _query_pages_are_stable_under_inserts(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        for n in range(6):
            await s.create(make_run(run_id=f"r{n}", created_at=_at(n)), now=_at(n))
        first = await s.query(limit=3)
        _eq([i.run_id for i in first], ["r0", "r1", "r2"], "the first page")
        # Runs start while the pages are read: they are created later, so they
        # sort after every listed run and never shift a page.
        for n in range(6, 9):
            await s.create(make_run(run_id=f"r{n}", created_at=_at(n)), now=_at(n))
        cursor = (first[-1].created_at, first[-1].run_id)
        second = await s.query(limit=3, after=cursor)
        _eq([i.run_id for i in second], ["r3", "r4", "r5"], "the second page, after inserts")
        # A run that ends between two pages keeps its place too.
        lease = (await _claim(s, "A", _at(10), run_ids=["r6"]))[0]
        await s.write(
            lease,
            make_run(run_id="r6", created_at=_at(6), status=Status.COMPLETED, updated_at=_at(10)),
            now=_at(10),
        )
        cursor = (second[-1].created_at, second[-1].run_id)
        _eq(
            [i.run_id for i in await s.query(limit=3, after=cursor)],
            ["r6", "r7", "r8"],
            "the third page",
        )


@_check
async def _query_rejects_bad_paging(new_storage: StorageFactory, *, durable: bool) -> None:
    naive = datetime(2030, 1, 1)
    async with new_storage() as s:
        await s.create(make_run(run_id="r1"), now=T0)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"limit": 0}, "limit"),
            ({"limit": -1}, "limit"),
            ({"limit": True}, "limit"),
            ({"limit": 1.5}, "limit"),
            ({"limit": "3"}, "limit"),
            ({"after": ("2030-01-01", "r1")}, "after"),
            ({"after": (naive, "r1")}, "after"),
            ({"after": (T0, 5)}, "after"),
            ({"after": [T0, "r1"]}, "after"),
            ({"after": (T0,)}, "after"),
            ({"created_after": naive}, "created_after"),
            ({"created_after": "2030-01-01"}, "created_after"),
        ]
        for kwargs, name in cases:
            with _raises(InvalidArgument, f"query(**{kwargs!r})") as info:
                await s.query(**kwargs)
            assert isinstance(info.value, ValueError), "InvalidArgument is a ValueError"
            _eq(info.value.name, name, f"the argument query(**{kwargs!r}) names")
            assert "expected" in str(info.value), (
                f"query(**{kwargs!r}) should say what is allowed: {info.value}"
            )


def _summary(
    counts: Mapping[tuple[str, Status], int],
    oldest: WaitingRun | None = None,
    due: int = 0,
    oldest_due: datetime | None = None,
    upcoming: datetime | None = None,
) -> RunSummary:
    return RunSummary(
        counts=counts,
        oldest_waiting=oldest,
        due_timers=due,
        oldest_due_timer_at=oldest_due,
        next_timer_at=upcoming,
    )


@_check
async def _summary_of_an_empty_storage(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        _eq(await s.summary(now=T0), _summary({}), "summary with no runs")


@_check
async def _summary_counts_runs_by_workflow_and_status(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        await _store_dataset(s)
        got = await s.summary(now=T0)
        expected: dict[tuple[str, Status], int] = {}
        for _, _, workflow, _, status, _ in DATASET:
            expected[(workflow, status)] = expected.get((workflow, status), 0) + 1
        _eq(dict(got.counts), expected, "counts by (workflow, status), versions together")
        _eq(got.count(), len(DATASET), "count() of everything")
        _eq(got.count(workflow="shop.Order"), 4, "count(workflow=)")
        _eq(got.count(status="waiting"), 2, "count(status=)")
        _eq(got.count(workflow="shop.Signup", status=Status.WAITING), 1, "count(both)")
        # r03 and r07 are both waiting and created at minute 3: run_id breaks the tie.
        at = T0 + timedelta(minutes=3)
        _eq(
            got.oldest_waiting,
            WaitingRun(
                run_id="r03", id="orderid::c", workflow="shop.Order", created_at=at, updated_at=at
            ),
            "the oldest waiting run",
        )
        assert got.oldest_waiting is not None
        _eq(got.oldest_waiting.created_at.utcoffset(), timedelta(0), "its times are UTC")


@_check
async def _summary_counts_due_timers(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        lease = await _create_owned(s, _parked(make_run(run_id="r1"), "wait", "other"))
        await s.create(_parked(make_run(run_id="r2", created_at=_at(1)), "wait"), now=T0)
        for run_id, step, seconds in [
            ("r1", "wait", 10),
            ("r1", "other", 30),
            ("r2", "wait", 20),
            ("r2", "wait", 60),
        ]:
            assert await s.add_wakeup(_timer(run_id, step, at=_at(seconds)), now=T0) is not None
        # Resumes and cancel requests are not timers, whatever their due_at.
        await s.add_wakeup(_resume("r2", at=T0), now=T0)
        await s.add_wakeup(_cancel("r1", at=T0), now=T0)
        cases = [
            (_at(0), 0, None, _at(10)),
            (_at(10), 1, _at(10), _at(20)),
            (_at(25), 2, _at(10), _at(30)),
            (_at(60), 4, _at(10), None),
        ]
        for now, due, oldest_due, upcoming in cases:
            got = await s.summary(now=now)
            _eq(
                (got.due_timers, got.oldest_due_timer_at, got.next_timer_at),
                (due, oldest_due, upcoming),
                f"timers due at {now}",
            )
        plus_two = timezone(timedelta(hours=2))
        got = await s.summary(now=_at(25).astimezone(plus_two))
        _eq(got.due_timers, 2, "now compares as an instant")
        assert got.next_timer_at is not None
        _eq(got.next_timer_at.utcoffset(), timedelta(0), "timer times come back in UTC")
        # A terminal write drops the run's timers: they are never due again.
        await s.write(
            lease, make_run(run_id="r1", status=Status.COMPLETED, updated_at=_at(5)), now=_at(5)
        )
        got = await s.summary(now=_at(60))
        _eq((got.due_timers, got.oldest_due_timer_at), (2, _at(20)), "timers of ended runs")
        _eq(got.count(status="completed"), 1, "the ended run is counted as completed")
        waiting = got.oldest_waiting
        assert waiting is not None
        _eq(waiting.run_id, "r2", "the oldest waiting run once r1 ended")


@_check
async def _summary_rejects_a_naive_now(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        with _raises(InvalidArgument, "summary(now=naive)") as info:
            await s.summary(now=datetime(2030, 1, 1))
        _eq(info.value.name, "now", "the argument named")


@_check
async def _query_fills_timers(new_storage: StorageFactory, *, durable: bool) -> None:
    timer = TimerRecord(step="wait", event="timeout", fire_at=_at(60))
    async with new_storage() as s:
        await s.create(_parked(make_run(run_id="r1"), "wait", at=T0), now=T0)
        added = await s.add_wakeup(_timer("r1", at=_at(60)), now=T0)
        assert added is not None
        _eq(added.timer_record(), timer, "timer_record of the added wakeup")
        (found,) = await s.query(status="waiting")
        _eq(found.timers, (timer,), "query returns the run's timer wakeups as Instance.timers")
        _eq(await _timers(s, "r1"), (timer,), "so does get")


# -- uniqueness ------------------------------------------------------------------------


@_check
async def _a_live_holder_blocks_another_live_run(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        for n, status in enumerate(LIVE):
            key = f"{KEY}#{n}"
            holder = make_run(run_id=f"h{n}", status=status, unique_key=key)
            await s.create(holder, now=T0)
            for owner in (None, "A"):
                what = f"second run of a key held by a {status.value} run"
                with _raises(UniqueViolation, what) as info:
                    await s.create(make_run(run_id=f"x{n}", unique_key=key), now=T0, owner=owner)
                exc = info.value
                _eq(
                    (exc.unique_key, exc.existing_run_id, exc.existing_id),
                    (key, f"h{n}", "orderid::a1"),
                    "UniqueViolation names the holder",
                )
                _eq(await s.get(f"x{n}"), None, "a refused create writes nothing")
        _eq(_ids(await _claim(s, "A", T0)), ["h0", "h1", "h2"], "refused creates are not claimable")


@_check
async def _a_terminal_write_frees_the_key(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n, terminal in enumerate(TERMINAL):
            first = make_run(run_id=f"first{n}", status=Status.RUNNING, unique_key=KEY)
            lease = await _create_owned(s, first)
            await s.write(lease, attrs.evolve(first, status=terminal), now=_at(1))
            second = make_run(run_id=f"second{n}", unique_key=KEY)
            again = await _create_owned(s, second, "B", now=_at(1))
            assert await s.get(f"second{n}") is not None, f"key free after {terminal.value}"
            await s.write(again, attrs.evolve(second, status=terminal), now=_at(2))
        _eq(len(await s.query(status_in=list(TERMINAL))), 6, "terminal runs share the key freely")


@_check
async def _the_holder_may_be_written_again(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1", unique_key=KEY)
        lease = await _create_owned(s, run)
        for n, status in enumerate(
            [Status.RUNNING, Status.WAITING, Status.RUNNING, Status.PENDING]
        ):
            run = attrs.evolve(run, status=status, updated_at=_at(n))
            await s.write(lease, run, now=_at(n))
        _eq(await s.get("r1"), run, "the holder after four writes")
        with _raises(UniqueViolation, "the key is still held"):
            await s.create(make_run(run_id="r2", unique_key=KEY), now=T0)


@_check
async def _no_key_never_conflicts(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n in range(3):
            await s.create(make_run(run_id=f"r{n}", unique_key=None), now=T0)
        _eq(len(await s.query(status="pending")), 3, "runs without a key")


@_check
async def _keys_are_independent(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.create(make_run(run_id="r1", unique_key="wf::orderid::a"), now=T0)
        await s.create(make_run(run_id="r2", unique_key="wf::orderid::b"), now=T0)
        await s.create(make_run(run_id="r3", unique_key="other::orderid::a"), now=T0)
        _eq(len(await s.query()), 3, "three runs with three keys")


@_check
async def _delete_frees_the_key(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.create(make_run(run_id="r1", unique_key=KEY), now=T0)
        await s.delete("r1")
        await s.create(make_run(run_id="r2", unique_key=KEY), now=T0)
        with _raises(UniqueViolation, "r2 holds the key"):
            await s.create(make_run(run_id="r3", unique_key=KEY), now=T0)


@_check
async def _write_cannot_change_the_unique_key(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    # Decision: the key is claimed by create; a write that changes it is a ValueError.
    async with new_storage() as s:
        run = make_run(run_id="r1", unique_key=KEY)
        lease = await _create_owned(s, run)
        for key in ("another::key", None):
            with _raises(ValueError, f"write changing unique_key to {key!r}"):
                await s.write(
                    lease, attrs.evolve(run, unique_key=key, status=Status.RUNNING), now=_at(1)
                )
        with _raises(ValueError, "write of another run_id than the lease's"):
            await s.write(lease, make_run(run_id="r9"), now=_at(1))
        _eq(await s.get("r9"), None, "the write of another run_id wrote nothing")
        _eq(await s.get("r1"), run, "a refused write writes nothing")
        with _raises(UniqueViolation, "the original key stays held"):
            await s.create(make_run(run_id="r2", unique_key=KEY), now=T0)


@_check
async def _fifty_concurrent_creates_one_wins(new_storage: StorageFactory, *, durable: bool) -> None:
    winners: list[str] = []
    losers: list[UniqueViolation] = []
    async with new_storage() as s:

        async def start(n: int) -> None:
            try:
                await s.create(
                    make_run(f"orderid::n{n}", run_id=f"r{n:02d}", unique_key=KEY),
                    now=T0,
                    owner=f"E{n % 2}",
                )
            except UniqueViolation as exc:
                losers.append(exc)
            else:
                winners.append(f"r{n:02d}")

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(start, n)

        _eq((len(winners), len(losers)), (1, 49), "winners and losers of one key")
        (winner,) = winners
        _eq({exc.existing_run_id for exc in losers}, {winner}, "every loser names the winner")
        _eq(
            {exc.existing_id for exc in losers},
            {f"orderid::n{int(winner[1:])}"},
            "every loser names the winner's business id",
        )
        _eq([i.run_id for i in await s.query(status_in=list(LIVE))], [winner], "one live run")


# -- claims ----------------------------------------------------------------------------


@_check
async def _an_unowned_run_is_claimable(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        _eq(await s.create(make_run(run_id="r1"), now=T0), None, "create without owner")
        _eq(
            await _claim(s, "A", _at(1)),
            [Lease(run_id="r1", owner="A", epoch=1, expires_at=_at(1 + TTL))],
            "claim of an unowned run bumps the epoch from 0",
        )
        _eq(await _claim(s, "B", _at(2)), [], "a live lease is not claimed again")
        _eq(await _claim(s, "A", _at(2)), [], "not even by its own owner")
        _eq(await _claim(s, "B", _at(TTL)), [], "the lease is live until expires_at")
        _eq(
            await _claim(s, "B", _at(1 + TTL)),
            [Lease(run_id="r1", owner="B", epoch=2, expires_at=_at(1 + 2 * TTL))],
            "at expires_at another owner claims, epoch + 1",
        )


@_check
async def _create_with_owner_holds_a_lease(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        lease = await s.create(make_run(run_id="r1"), now=_at(5), owner="A", ttl=10.0)
        _eq(lease, Lease(run_id="r1", owner="A", epoch=1, expires_at=_at(15)), "lease of create")
        _eq(await _claim(s, "B", _at(14.999)), [], "held until expires_at")
        _eq(
            await _claim(s, "A", _at(15)),
            [Lease(run_id="r1", owner="A", epoch=2, expires_at=_at(15 + TTL))],
            "the same owner reclaims its expired lease, epoch + 1",
        )


@_check
async def _lease_times_are_utc_instants(new_storage: StorageFactory, *, durable: bool) -> None:
    plus_two = timezone(timedelta(hours=2))
    local = T0.astimezone(plus_two)  # T0, seen from +02:00
    async with new_storage() as s:
        lease = await s.create(make_run(run_id="r1"), now=local, owner="A", ttl=5.0)
        assert lease is not None
        _eq(lease.expires_at, _at(5), "expires_at is now + ttl, as an instant")
        _eq(lease.expires_at.utcoffset(), timedelta(0), "create's lease comes back in UTC")
        (renewed,) = await s.renew("A", [lease], now=local + timedelta(seconds=1), ttl=5.0)
        _eq(renewed.expires_at, _at(6), "renewed expires_at")
        _eq(renewed.expires_at.utcoffset(), timedelta(0), "renew's lease comes back in UTC")
        _eq(await _claim(s, "B", local + timedelta(seconds=5.999)), [], "still held (offset)")
        (claimed,) = await _claim(s, "B", local + timedelta(seconds=6))
        _eq(claimed.expires_at.utcoffset(), timedelta(0), "claim's lease comes back in UTC")
        await s.release(claimed, now=local, wake_at=local + timedelta(seconds=60), seen=0)
        wake = await s.next_wake("A", workflows=None)
        _eq(wake, _at(60), "next_wake is the release's wake_at, as an instant")
        assert wake is not None
        _eq(wake.utcoffset(), timedelta(0), "next_wake comes back in UTC")
        naive = datetime(2030, 1, 1)
        with _raises(ValueError, "create with a naive now"):
            await s.create(make_run(run_id="r2"), now=naive)
        _eq(await s.get("r2"), None, "a refused create writes nothing")


@_check
async def _claim_filters_workflows(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for run_id, wf, v in [
            ("r1", "shop.Order", 1),
            ("r2", "shop.Order", 2),
            ("r3", "shop.Refund", 1),
        ]:
            await s.create(make_run(run_id=run_id, workflow=wf, version=v), now=T0)
        _eq(
            await s.next_wake("A", workflows=[("shop.Order", 3)]),
            None,
            "next_wake of no matching workflow",
        )
        _eq(await s.next_wake("A", workflows=[("shop.Order", 2)]), T0, "next_wake of one")
        _eq(await _claim(s, "A", T0, workflows=[]), [], "claim of no workflows")
        _eq(
            await _claim(s, "A", T0, workflows=[("shop.Order", 3), ("shop.Nope", 1)]),
            [],
            "claim of workflows with no runs",
        )
        _eq(
            _ids(await _claim(s, "A", T0, workflows=[("shop.Order", 2)])),
            ["r2"],
            "the version is part of the filter",
        )
        _eq(
            _ids(await _claim(s, "A", T0, workflows={("shop.Order", 1), ("shop.Refund", 1)})),
            ["r1", "r3"],
            "a set of workflows",
        )


@_check
async def _claim_filters_run_ids_and_limit(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n in range(1, 5):
            await s.create(make_run(run_id=f"r{n}"), now=T0)
        _eq(await _claim(s, "A", T0, run_ids=[]), [], "claim of no run_ids")
        _eq(_ids(await _claim(s, "A", T0, run_ids=["r2", "nope"])), ["r2"], "claim of run_ids")
        _eq(await _claim(s, "A", T0, limit=0), [], "limit 0")
        _eq(_ids(await _claim(s, "A", T0, limit=2)), ["r1", "r3"], "limit 2, in order")
        _eq(_ids(await _claim(s, "B", T0, limit=2)), ["r4"], "what is left")


@_check
async def _claim_order(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        # wake_at is the create's now; ties go by created_at, then run_id.
        await s.create(make_run(run_id="r1", created_at=T0), now=_at(2))
        await s.create(make_run(run_id="r2", created_at=_at(1)), now=_at(1))
        await s.create(make_run(run_id="r4", created_at=T0), now=_at(1))
        await s.create(make_run(run_id="r3", created_at=T0), now=_at(1))
        order = [_ids(await _claim(s, "A", _at(10), limit=1)) for _ in range(5)]
        _eq(order, [["r3"], ["r4"], ["r2"], ["r1"], []], "claims by (wake_at, created_at, run_id)")


@_check
async def _terminal_runs_are_never_claimed(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n, status in enumerate(TERMINAL):
            await _store(s, make_run(run_id=f"r{n}", status=status))
        _eq(await _claim(s, "A", _at(1000)), [], "terminal runs")
        _eq(await s.next_wake("A", workflows=None), None, "next_wake of terminal runs")


@_check
async def _released_without_wake_at_waits_for_a_wakeup(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1")
        lease = await _create_owned(s, run)
        await s.write(lease, _parked(run, "wait", at=_at(1)), now=_at(1))
        _eq(await s.release(lease, now=_at(2), wake_at=None, seen=0), False, "release returns")
        _eq(await _claim(s, "A", _at(10_000)), [], "a hibernating run with nothing to do")
        _eq(await s.next_wake("A", workflows=None), None, "next_wake of a hibernating run")
        await s.add_wakeup(_resume("r1", at=_at(20)), now=_at(20))
        _eq(await s.next_wake("A", workflows=None), _at(20), "next_wake after a resume")
        _eq(
            await _claim(s, "B", _at(20)),
            [Lease(run_id="r1", owner="B", epoch=2, expires_at=_at(20 + TTL))],
            "a resume makes it claimable at its due_at",
        )


@_check
async def _released_with_a_future_wake_at(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1")
        lease = await _create_owned(s, run)
        await s.write(lease, _parked(run, "wait"), now=T0)
        await s.release(lease, now=_at(1), wake_at=_at(60), seen=0)
        _eq(await s.next_wake("A", workflows=None), _at(60), "next_wake is the given wake_at")
        _eq(await _claim(s, "A", _at(59)), [], "not claimable before wake_at")
        _eq(_ids(await _claim(s, "A", _at(60))), ["r1"], "claimable from wake_at on")


@_check
async def _a_timer_wakeup_makes_a_run_claimable_when_due(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1")
        lease = await _create_owned(s, run)
        await s.write(lease, _parked(run, "wait"), now=T0)
        await s.release(lease, now=_at(1), wake_at=None, seen=0)
        await s.add_wakeup(_timer("r1", at=_at(90)), now=_at(2))
        _eq(await s.next_wake("A", workflows=None), _at(90), "next_wake is the timer's due_at")
        _eq(await _claim(s, "A", _at(89)), [], "not before the timer is due")
        await s.add_wakeup(_timer("r1", "wait", "early", at=_at(50)), now=_at(2))
        _eq(await s.next_wake("A", workflows=None), _at(50), "an earlier timer moves it earlier")
        _eq(_ids(await _claim(s, "A", _at(50))), ["r1"], "claimable when the earliest is due")


@_check
async def _next_wake(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        _eq(await s.next_wake("A", workflows=None), None, "next_wake of an empty storage")
        await s.create(make_run(run_id="mine"), now=_at(1), owner="A")
        _eq(await s.next_wake("A", workflows=None), None, "runs held by the asker are ignored")
        _eq(
            await s.next_wake("B", workflows=None),
            _at(1 + TTL),
            "a run held by another owner: when its lease expires",
        )
        await s.create(make_run(run_id="free"), now=_at(5))
        _eq(await s.next_wake("A", workflows=None), _at(5), "an unowned run: its wake_at")
        _eq(await s.next_wake("B", workflows=None), _at(5), "the earliest of both")
        _eq(await s.next_wake("B", workflows=[("tests.Other", 1)]), None, "workflows filter")


@_check
async def _release_all(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n in range(3):
            run = make_run(run_id=f"a{n}")
            lease = await _create_owned(s, run, "A")
            if n == 0:
                await s.write(lease, _parked(run, "wait"), now=T0)
                await s.release(lease, now=T0, wake_at=None, seen=0)
        await s.create(make_run(run_id="b0"), now=T0, owner="B")
        _eq(await s.release_all("A", now=_at(3)), 2, "release_all counts the runs A held")
        _eq(await s.release_all("A", now=_at(3)), 0, "nothing left to release")
        _eq(
            await _claim(s, "C", _at(3)),
            [Lease(run_id=f"a{n}", owner="C", epoch=2, expires_at=_at(3 + TTL)) for n in (1, 2)],
            "released runs are claimable at once; others' leases stay",
        )


# -- fencing ---------------------------------------------------------------------------


@_check
async def _write_after_takeover_is_lease_lost(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1")
        old = await _create_owned(s, run, "A")
        (new,) = await _claim(s, "B", _at(TTL))
        _eq((new.owner, new.epoch), ("B", 2), "the takeover's lease")
        theirs = attrs.evolve(run, status=Status.RUNNING, runtime_metadata={"by": "B"})
        await s.write(new, theirs, now=_at(TTL + 1))
        for status in (Status.RUNNING, Status.COMPLETED):
            with _raises(LeaseLost, f"write ({status.value}) under the lost lease") as info:
                await s.write(old, attrs.evolve(run, status=status), now=_at(TTL + 2))
            _eq(
                (info.value.run_id, info.value.owner, info.value.epoch),
                ("r1", "A", 1),
                "LeaseLost names the lost lease",
            )
        _eq(await s.get("r1"), theirs, "the stored state is the new owner's")
        # The epoch fences the same owner too: A reclaiming after expiry voids A's old lease.
        mine = await _create_owned(s, make_run(run_id="r2"), "A", now=_at(TTL))
        (again,) = await _claim(s, "A", _at(2 * TTL), run_ids=["r2"])
        _eq((again.owner, again.epoch), ("A", 2), "the same owner's reclaim bumps the epoch")
        with _raises(LeaseLost, "write under the same owner's older epoch"):
            await s.write(mine, make_run(run_id="r2", status=Status.RUNNING), now=_at(2 * TTL))
        with _raises(LeaseLost, "release under the same owner's older epoch"):
            await s.release(mine, now=_at(2 * TTL), wake_at=None, seen=0)
        _eq(await s.renew("A", [mine], now=_at(2 * TTL), ttl=TTL), [], "renew of the older epoch")
        _eq(await s.get("r2"), make_run(run_id="r2"), "nothing written under the older epoch")
        forged = attrs.evolve(new, owner="A")
        with _raises(LeaseLost, "write under the right epoch but another owner"):
            await s.write(forged, run, now=_at(TTL + 2))
        with _raises(LeaseLost, "write under an unknown run's lease"):
            await s.write(attrs.evolve(old, run_id="nope"), make_run(run_id="nope"), now=T0)


@_check
async def _release_after_takeover_is_lease_lost(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        old = await _create_owned(s, make_run(run_id="r1"), "A")
        (new,) = await _claim(s, "B", _at(TTL))
        with _raises(LeaseLost, "release under the lost lease"):
            await s.release(old, now=_at(TTL + 1), wake_at=None, seen=0)
        _eq(await _claim(s, "C", _at(TTL + 1)), [], "the failed release changed nothing")
        _eq(
            await s.renew("B", [new], now=_at(TTL + 1), ttl=TTL),
            [attrs.evolve(new, expires_at=_at(2 * TTL + 1))],
            "the new owner still holds it",
        )
        await s.release(new, now=_at(TTL + 2), wake_at=None, seen=0)
        with _raises(LeaseLost, "a second release of the same lease"):
            await s.release(new, now=_at(TTL + 2), wake_at=None, seen=0)


@_check
async def _an_expired_lease_not_yet_taken_still_writes(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1")
        lease = await _create_owned(s, run, "A")
        late = attrs.evolve(run, status=Status.RUNNING, updated_at=_at(100))
        await s.write(lease, late, now=_at(100))
        _eq(await s.get("r1"), late, "the epoch is the fence, not the clock")
        _eq(
            await s.renew("A", [lease], now=_at(101), ttl=TTL),
            [attrs.evolve(lease, expires_at=_at(101 + TTL))],
            "and it may still be renewed",
        )


@_check
async def _renew_keeps_live_leases(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        a1 = await _create_owned(s, make_run(run_id="r1"), "A")
        a2 = await _create_owned(s, make_run(run_id="r2"), "A")
        b3 = await _create_owned(s, make_run(run_id="r3"), "B")
        renewed = await s.renew("A", [a1, a2], now=_at(20), ttl=TTL)
        _eq(
            sorted(renewed, key=lambda lease: lease.run_id),
            [
                attrs.evolve(a1, expires_at=_at(20 + TTL)),
                attrs.evolve(a2, expires_at=_at(20 + TTL)),
            ],
            "renew pushes expires_at and keeps the epoch",
        )
        _eq(_ids(await _claim(s, "C", _at(TTL))), ["r3"], "renewed leases are not claimable")
        _eq(_ids(await _claim(s, "C", _at(20 + TTL))), ["r1", "r2"], "until they expire again")
        _eq(await s.renew("A", [b3], now=_at(1), ttl=TTL), [], "renew of another owner's lease")
        _eq(await s.renew("A", [], now=_at(1), ttl=TTL), [], "renew of nothing")
        (a1,) = await s.renew("C", [attrs.evolve(a1, owner="C", epoch=2)], now=_at(50), ttl=TTL)
        _eq(
            await s.renew("X", [a1], now=_at(51), ttl=TTL),
            [],
            "renew by an engine that is not the lease's owner",
        )
        _eq(
            _ids(await _claim(s, "D", _at(50 + TTL), run_ids=["r1"])),
            ["r1"],
            "that renew did not push expires_at",
        )


@_check
async def _renew_drops_lost_leases(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        taken = await _create_owned(s, make_run(run_id="r1"), "A")
        kept = await _create_owned(s, make_run(run_id="r2"), "A", now=_at(10))
        ended_run = make_run(run_id="r3")
        ended = await _create_owned(s, ended_run, "A", now=_at(10))
        released = await _create_owned(s, make_run(run_id="r4"), "A", now=_at(10))
        await _create_owned(s, make_run(run_id="r5"), "A", now=_at(10))
        gone = Lease(run_id="r5", owner="A", epoch=1, expires_at=_at(10 + TTL))
        await s.delete("r5")
        _eq(_ids(await _claim(s, "B", _at(TTL), run_ids=["r1"])), ["r1"], "the takeover")
        await s.write(ended, attrs.evolve(ended_run, status=Status.COMPLETED), now=_at(TTL))
        await s.release(released, now=_at(TTL), wake_at=None, seen=0)
        renewed = await s.renew("A", [taken, kept, ended, released, gone], now=_at(TTL), ttl=TTL)
        _eq(
            renewed,
            [attrs.evolve(kept, expires_at=_at(2 * TTL))],
            "only the lease still held is renewed (taken over, ended, released, deleted: lost)",
        )


@_check
async def _two_owners_race_to_claim(new_storage: StorageFactory, *, durable: bool) -> None:
    runs = [f"r{n:02d}" for n in range(40)]
    async with contextlib.AsyncExitStack() as stack:
        first = await stack.enter_async_context(new_storage())
        # On a durable backend the two owners use two objects on the same data.
        second = await stack.enter_async_context(new_storage()) if durable else first
        for run_id in runs:
            await first.create(make_run(run_id=run_id), now=T0)
        got: dict[str, list[Lease]] = {"A": [], "B": []}

        async def drain(s: Storage, owner: str) -> None:
            while leases := await _claim(s, owner, _at(1), limit=3):
                got[owner].extend(leases)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain, first, "A")
            nursery.start_soon(drain, second, "B")
        claimed = _ids(got["A"]) + _ids(got["B"])
        _eq(sorted(claimed), runs, "every run claimed exactly once by the two owners")
        assert all(lease.epoch == 1 for lease in got["A"] + got["B"]), "one claim per run"
        for owner, leases in got.items():
            for lease in leases:
                await first.write(
                    lease,
                    make_run(
                        run_id=lease.run_id, status=Status.RUNNING, runtime_metadata={"by": owner}
                    ),
                    now=_at(2),
                )


# -- wakeups ---------------------------------------------------------------------------


@_check
async def _add_wakeup_returns_the_recorded_wakeup(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    plus_two = timezone(timedelta(hours=2))
    at = datetime(2030, 1, 1, 2, tzinfo=plus_two)  # T0, seen from +02:00
    async with new_storage() as s:
        await s.create(make_run(run_id="r1"), now=T0)
        added = await s.add_wakeup(
            _resume("r1", "wait", "go", at=at, dedup_key="d1", payload={"n": [1, "é"]}),
            now=at + timedelta(seconds=1),
        )
        assert added is not None, "add_wakeup of a new resume returns it"
        expected = Wakeup(
            seq=added.seq,
            run_id="r1",
            kind=WakeupKind.RESUME,
            step="wait",
            event="go",
            payload={"n": [1, "é"]},
            dedup_key="d1",
            due_at=T0,
            created_at=_at(1),
        )
        _eq(added, expected, "the recorded resume")
        for value, what in [(added.due_at, "due_at"), (added.created_at, "created_at")]:
            _eq(value.utcoffset(), timedelta(0), f"{what} comes back in UTC")
        _eq(await s.wakeups("r1"), [expected], "wakeups lists it")


@_check
async def _a_wakeup_keeps_the_trace_context_of_its_sender(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    headers = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    async with new_storage() as s:
        await s.create(make_run(run_id="r1"), now=T0)
        sent = attrs.evolve(_resume("r1", "wait", "go"), trace_context=headers)
        added = await s.add_wakeup(sent, now=T0)
        assert added is not None
        _eq(added.trace_context, headers, "add_wakeup returns the trace context")
        cancel = await s.add_wakeup(_cancel("r1"), now=T0)
        assert cancel is not None
        _eq(cancel.trace_context, None, "a wakeup sent without one has none")
        _eq(
            [w.trace_context for w in await s.wakeups("r1")],
            [headers, None],
            "the trace contexts as stored",
        )
    if durable:
        async with new_storage() as again:
            _eq(
                [w.trace_context for w in await again.wakeups("r1")],
                [headers, None],
                "the trace contexts as another object on the same data reads them",
            )


@_check
async def _seqs_increase_across_runs_and_kinds(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        timers = (TimerRecord(step="wait", event="t", fire_at=_at(100)),)
        lease1 = await _create_owned(s, _parked(make_run(run_id="r1"), "wait", at=T0))
        await s.create(attrs.evolve(_parked(make_run(run_id="r2"), "wait"), timers=timers), now=T0)
        seqs = [w.seq for w in await s.wakeups("r2")]
        for run_id in ["r1", "r2", "r1"]:
            added = await s.add_wakeup(_resume(run_id, step=f"s{len(seqs)}"), now=T0)
            assert added is not None
            seqs.append(added.seq)
        (timer,) = await s.write(
            lease1,
            _parked(make_run(run_id="r1"), "wait"),
            now=T0,
            add_timers=[TimerRecord(step="wait", event="t", fire_at=_at(5))],
        )
        seqs.append(timer.seq)
        cancel = await s.add_wakeup(_cancel("r2"), now=T0)
        assert cancel is not None
        seqs.append(cancel.seq)
        _eq(seqs, sorted(set(seqs)), "seqs strictly increase across runs and kinds")
        everything = await s.wakeups("r1") + await s.wakeups("r2")
        _eq(sorted(w.seq for w in everything), seqs, "every seq is pending")
        for run_id in ("r1", "r2"):
            mine = [w.seq for w in await s.wakeups(run_id)]
            _eq(mine, sorted(mine), f"wakeups of {run_id} in seq order")


@_check
async def _seqs_are_never_reused(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait")
        lease = await _create_owned(s, run)
        first = await s.add_wakeup(_resume("r1"), now=T0)
        assert first is not None
        await s.write(lease, run, now=T0, consume=[first.seq])
        timer = await s.add_wakeup(_timer("r1", at=_at(5)), now=T0)
        assert timer is not None
        assert timer.seq > first.seq, "seqs grow after the newest was consumed"
        await s.cancel_timer("r1", timer.seq)
        await s.delete("r1")
        await s.create(make_run(run_id="r1"), now=T0)
        last = await s.add_wakeup(_resume("r1"), now=T0)
        assert last is not None
        assert last.seq > timer.seq, "seqs never go back, not even after a delete"


@_check
async def _a_non_owner_adds_wakeups_to_an_owned_run(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "approve")
        lease = await _create_owned(s, run, "A")
        resume = await s.add_wakeup(_resume("r1"), now=_at(1))
        cancel = await s.add_wakeup(_cancel("r1", at=_at(1)), now=_at(1))
        assert resume is not None
        assert cancel is not None
        _eq(await s.wakeups("r1"), [resume, cancel], "wakeups added while A owns the run")
        _eq(await s.owned_wakeups("A", after=0), [("r1", cancel.seq)], "A finds them")
        _eq(await _claim(s, "B", _at(2)), [], "adding a wakeup does not break A's lease")
        _eq(
            await s.renew("A", [lease], now=_at(2), ttl=TTL),
            [attrs.evolve(lease, expires_at=_at(2 + TTL))],
            "A still holds the lease",
        )


@_check
async def _a_write_consumes_wakeups_exactly_once(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "other")
        lease = await _create_owned(s, run)
        other_lease = await _create_owned(s, _parked(make_run(run_id="r2"), "wait"))
        first = await s.add_wakeup(_resume("r1", "wait"), now=T0)
        second = await s.add_wakeup(_resume("r1", "other"), now=T0)
        foreign = await s.add_wakeup(_resume("r2", "wait"), now=T0)
        assert first is not None
        assert second is not None
        assert foreign is not None
        applied = attrs.evolve(
            run, status=Status.RUNNING, waiting_steps=frozenset({"other"}), updated_at=_at(1)
        )
        await s.write(lease, applied, now=_at(1), consume=[first.seq])
        _eq(await s.get("r1"), applied, "the write that consumed the wakeup")
        _eq(await s.wakeups("r1"), [second], "the consumed wakeup is gone, the other stays")
        for seqs, missing, what in [
            ([first.seq], first.seq, "a second consume of the same wakeup"),
            ([second.seq, 987_654], 987_654, "a consume of an unknown seq"),
            ([foreign.seq], foreign.seq, "a consume of another run's wakeup"),
        ]:
            with _raises(WakeupGone, what) as info:
                await s.write(
                    lease, attrs.evolve(applied, updated_at=_at(2)), now=_at(2), consume=seqs
                )
            _eq((info.value.run_id, info.value.seq), ("r1", missing), f"{what}: WakeupGone names")
            _eq(await s.get("r1"), applied, f"{what}: nothing written")
            _eq(await s.wakeups("r1"), [second], f"{what}: no wakeup consumed")
        _eq(await s.wakeups("r2"), [foreign], "the other run's wakeup is untouched")
        await s.write(
            other_lease,
            make_run(run_id="r2", status=Status.RUNNING),
            now=_at(2),
            consume=[foreign.seq],
        )
        _eq(await s.wakeups("r2"), [], "consumed by its own run's owner")


@_check
async def _dedup_keys_make_resumes_no_ops(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "other")
        lease = await _create_owned(s, run)
        await s.create(_parked(make_run(run_id="r2"), "wait"), now=T0)
        first = await s.add_wakeup(_resume("r1", dedup_key="d1"), now=T0)
        assert first is not None, "the first resume with a key is recorded"
        _eq(
            await s.add_wakeup(_resume("r1", dedup_key="d1"), now=T0),
            None,
            "the same key again (pending): a no-op",
        )
        _eq(
            await s.add_wakeup(_resume("r1", "other", dedup_key="d1"), now=T0),
            None,
            "the same key for another step: still a no-op (no step_pending error either)",
        )
        _eq(await s.wakeups("r1"), [first], "nothing recorded by the no-ops")
        await s.write(lease, run, now=_at(1), consume=[first.seq])
        _eq(
            await s.add_wakeup(_resume("r1", dedup_key="d1"), now=_at(2)),
            None,
            "the same key after the resume was applied: still a no-op",
        )
        _eq(await s.wakeups("r1"), [], "nothing recorded after the apply either")
        assert await s.add_wakeup(_resume("r2", dedup_key="d1"), now=T0) is not None, (
            "dedup keys are per run"
        )
        assert await s.add_wakeup(_resume("r1", dedup_key="d2"), now=T0) is not None, (
            "another key is recorded"
        )
        assert await s.seen_dedup_key("r1", "d1"), "seen_dedup_key knows an applied key"
        assert await s.seen_dedup_key("r2", "d1"), "seen_dedup_key is per run"
        assert not await s.seen_dedup_key("r1", "d9"), "an unknown key was not seen"
        assert not await s.seen_dedup_key("nope", "d1"), "an unknown run saw no key"


@_check
async def _a_pending_resume_of_the_step_refuses_another(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "other")
        lease = await _create_owned(s, run)
        first = await s.add_wakeup(_resume("r1", "wait"), now=T0)
        assert first is not None
        with _raises(WakeupRefused, "a second resume of a step with one pending") as info:
            await s.add_wakeup(_resume("r1", "wait", "again"), now=T0)
        _eq((info.value.run_id, info.value.reason), ("r1", "step_pending"), "the refusal")
        assert await s.add_wakeup(_resume("r1", "other"), now=T0) is not None, "another step"
        assert await s.add_wakeup(_timer("r1", "wait", at=_at(9)), now=T0) is not None, (
            "a timer of the step is not a resume"
        )
        await s.write(lease, run, now=_at(1), consume=[first.seq])
        assert await s.add_wakeup(_resume("r1", "wait"), now=_at(2)) is not None, (
            "once applied, the step accepts a resume again"
        )


@_check
async def _max_pending_refuses_when_full(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.create(_parked(make_run(run_id="r1"), "a", "b", "c"), now=T0)
        assert await s.add_wakeup(_timer("r1", "a", at=_at(5)), now=T0, max_pending=0), (
            "timers do not count toward max_pending"
        )
        assert await s.add_wakeup(_cancel("r1"), now=T0, max_pending=0), "nor do cancels"
        assert await s.add_wakeup(_resume("r1", "a"), now=T0, max_pending=2)
        assert await s.add_wakeup(_resume("r1", "b"), now=T0, max_pending=2)
        before = await s.wakeups("r1")
        with _raises(WakeupRefused, "a third resume with max_pending=2") as info:
            await s.add_wakeup(_resume("r1", "c"), now=T0, max_pending=2)
        _eq((info.value.run_id, info.value.reason), ("r1", "full"), "the refusal")
        _eq(await s.wakeups("r1"), before, "nothing recorded")
        assert await s.add_wakeup(_resume("r1", "c"), now=T0), "max_pending=None: no bound"


@_check
async def _wakeups_of_runs_not_live_are_refused(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        for kind in (_resume("nope"), _timer("nope", at=T0), _cancel("nope")):
            with _raises(WakeupRefused, f"a {kind.kind.value} of a missing run") as info:
                await s.add_wakeup(kind, now=T0)
            _eq(
                (info.value.run_id, info.value.reason, info.value.status),
                ("nope", "not_live", "missing"),
                "the refusal",
            )
        for status in TERMINAL:
            run_id = f"dead-{status.value}"
            await _store(s, make_run(run_id=run_id, status=status))
            for kind in (_resume(run_id), _timer(run_id, at=T0), _cancel(run_id)):
                what = f"a {kind.kind.value} of a {status.value} run"
                with _raises(WakeupRefused, what) as info:
                    await s.add_wakeup(kind, now=T0)
                _eq(
                    (info.value.run_id, info.value.reason, info.value.status),
                    (run_id, "not_live", status.value),
                    "the refusal",
                )
            _eq(await s.wakeups(run_id), [], "nothing recorded")


@_check
async def _cancel_requests_are_deduplicated(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        run = make_run(run_id="r1", status=Status.RUNNING)
        lease = await _create_owned(s, run)
        first = await s.add_wakeup(_cancel("r1"), now=T0)
        assert first is not None
        _eq(first.kind, WakeupKind.CANCEL, "the kind of a cancel")
        _eq((first.step, first.event, first.payload), (None, None, None), "a cancel's fields")
        _eq(
            await s.add_wakeup(_cancel("r1", at=_at(1)), now=_at(1)),
            None,
            "a second cancel while one is pending: a no-op",
        )
        _eq(await s.wakeups("r1"), [first], "one cancel pending")
        await s.write(lease, run, now=_at(2), consume=[first.seq])
        assert await s.add_wakeup(_cancel("r1", at=_at(3)), now=_at(3)) is not None, (
            "a cancel after the previous one was consumed is recorded"
        )


@_check
async def _timer_wakeups_are_the_instance_timers(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    minus_five = timezone(timedelta(hours=-5))
    fire_at = datetime(2030, 1, 1, 9, 30, 0, 123456, tzinfo=minus_five)
    t1 = TimerRecord(step="wait", event="timeout", fire_at=fire_at)
    t2 = TimerRecord(step="approval", event="expired", fire_at=T0)
    t3 = TimerRecord(step="wait", event="reminder", fire_at=_at(30))
    t4 = TimerRecord(step="approval", event="late", fire_at=_at(40))
    async with new_storage() as s:
        run = attrs.evolve(_parked(make_run(run_id="r1"), "wait", "approval"), timers=(t1, t2))
        lease = await _create_owned(s, run)
        _eq(await _timers(s, "r1"), (t1, t2), "create turns instance.timers into timer wakeups")
        loaded = await s.get("r1")
        assert loaded is not None
        _eq(
            loaded.timers[0].fire_at,
            datetime(2030, 1, 1, 14, 30, 0, 123456, tzinfo=UTC),
            "fire_at as UTC",
        )
        assert all(t.fire_at.utcoffset() == timedelta(0) for t in loaded.timers), "UTC timers"
        await s.add_wakeup(_resume("r1", "wait"), now=T0)
        added = await s.add_wakeup(_timer("r1", "wait", "reminder", at=_at(30)), now=T0)
        assert added is not None
        _eq(await _timers(s, "r1"), (t1, t2, t3), "resumes are not timers; seq order")
        # The document's own timers are ignored on write: the wakeups are the truth.
        doc = attrs.evolve(run, timers=(t4,), updated_at=_at(1))
        (new,) = await s.write(lease, doc, now=_at(1), add_timers=[t4])
        _eq(
            new,
            Wakeup(
                seq=new.seq,
                run_id="r1",
                kind=WakeupKind.TIMER,
                step="approval",
                event="late",
                payload=None,
                dedup_key=None,
                due_at=_at(40),
                created_at=_at(1),
            ),
            "the timer wakeup write added",
        )
        _eq(await _timers(s, "r1"), (t1, t2, t3, t4), "get after write with add_timers")
        (found,) = await s.query()
        _eq(found.timers, (t1, t2, t3, t4), "query after write with add_timers")
        await s.write(lease, attrs.evolve(doc, timers=(t4,)), now=_at(2))
        _eq(await _timers(s, "r1"), (t1, t2, t3, t4), "write's document timers are not stored")
        await s.write(lease, attrs.evolve(doc, timers=()), now=_at(3))
        _eq(await _timers(s, "r1"), (t1, t2, t3, t4), "nor are they deleted by an empty tuple")


@_check
async def _a_write_drops_timers_of_steps_not_parked(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "approval")
        lease = await _create_owned(s, run)
        (w1, w2) = await s.write(
            lease,
            run,
            now=T0,
            add_timers=[
                TimerRecord(step="wait", event="timeout", fire_at=_at(10)),
                TimerRecord(step="approval", event="expired", fire_at=_at(20)),
            ],
        )
        resume = await s.add_wakeup(_resume("r1", "approval"), now=T0)
        assert resume is not None
        only_approval = attrs.evolve(
            run,
            status=Status.WAITING,
            active_steps=frozenset({"approval", "ship"}),
            waiting_steps=frozenset({"approval"}),
        )
        await s.write(lease, only_approval, now=_at(1))
        _eq(
            await s.wakeups("r1"),
            [w2, resume],
            "the timer of the step that stopped waiting is deleted; other kinds stay",
        )
        # Decision: add_timers are always inserted, even for a step the document
        # does not list as parked (the next write prunes them).
        (w3,) = await s.write(
            lease,
            only_approval,
            now=_at(2),
            add_timers=[TimerRecord(step="ship", event="late", fire_at=_at(30))],
        )
        _eq(await s.wakeups("r1"), [w2, resume, w3], "add_timers are inserted as given")
        await s.write(lease, attrs.evolve(only_approval, waiting_steps=frozenset()), now=_at(3))
        _eq(await s.wakeups("r1"), [resume], "no step parked: every timer goes")
        assert w1 not in await s.wakeups("r1")


@_check
async def _a_terminal_write_ends_everything(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for n, status in enumerate(TERMINAL):
            run_id = f"r{n}"
            run = _parked(make_run(run_id=run_id, unique_key=KEY), "wait")
            lease = await _create_owned(s, run, "A", now=_at(n))
            await s.write(
                lease,
                run,
                now=_at(n),
                add_timers=[TimerRecord(step="wait", event="timeout", fire_at=_at(100))],
            )
            resume = await s.add_wakeup(_resume(run_id), now=_at(n))
            await s.add_wakeup(_cancel(run_id), now=_at(n))
            assert resume is not None
            final = attrs.evolve(
                run,
                status=status,
                active_steps=frozenset(),
                waiting_steps=frozenset(),
                updated_at=_at(n + 0.5),
            )
            _eq(
                await s.write(lease, final, now=_at(n + 0.5), consume=[resume.seq]),
                [],
                f"a {status.value} write adds no timers",
            )
            _eq(await s.get(run_id), final, f"the {status.value} run as written")
            _eq(await s.wakeups(run_id), [], f"a {status.value} write deletes every wakeup")
            _eq(await s.owned_wakeups("A", after=0), [], "nothing owned is left")
            _eq(await s.renew("A", [lease], now=_at(n + 1), ttl=TTL), [], "the lease ended")
            with _raises(LeaseLost, f"a write after the {status.value} write"):
                await s.write(lease, final, now=_at(n + 1))
            with _raises(LeaseLost, f"a release after the {status.value} write"):
                await s.release(lease, now=_at(n + 1), wake_at=None, seen=0)
            _eq(await _claim(s, "B", _at(10_000)), [], "a terminal run is never claimed")
            _eq(await s.next_wake("B", workflows=None), None, "nor awaited by next_wake")
        # Every round re-used KEY: each terminal write freed it.
        await s.create(make_run(run_id="after", unique_key=KEY), now=_at(9))


@_check
async def _cancel_timer_applies_once(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.create(_parked(make_run(run_id="r1"), "wait"), now=T0)
        await s.create(_parked(make_run(run_id="r2"), "wait"), now=T0)
        timer = await s.add_wakeup(_timer("r1", at=_at(10)), now=T0)
        resume = await s.add_wakeup(_resume("r1"), now=T0)
        assert timer is not None
        assert resume is not None
        _eq(await s.cancel_timer("r2", timer.seq), False, "cancel_timer through another run")
        _eq(await s.cancel_timer("r1", resume.seq), False, "cancel_timer of a resume")
        _eq(await s.cancel_timer("r1", 987_654), False, "cancel_timer of an unknown seq")
        _eq(await s.cancel_timer("nope", timer.seq), False, "cancel_timer of an unknown run")
        _eq(await s.cancel_timer("r1", timer.seq), True, "cancel_timer of the pending timer")
        _eq(await s.cancel_timer("r1", timer.seq), False, "a second cancel_timer")
        _eq(await s.wakeups("r1"), [resume], "only the timer was deleted")
        _eq(await _timers(s, "r1"), (), "the cancelled timer is gone from Instance.timers")


@_check
async def _owned_wakeups(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        for run_id, owner in [("r2", "A"), ("r1", "A"), ("r3", "B"), ("r0", "A")]:
            await s.create(_parked(make_run(run_id=run_id), "a", "b"), now=T0, owner=owner)
        await s.create(_parked(make_run(run_id="r4"), "a"), now=T0)
        seqs: dict[str, list[int]] = {}
        for run_id, step in [("r1", "a"), ("r2", "a"), ("r1", "b"), ("r3", "a"), ("r4", "a")]:
            added = await s.add_wakeup(_resume(run_id, step), now=T0)
            assert added is not None
            seqs.setdefault(run_id, []).append(added.seq)
        top1, top2 = seqs["r1"][-1], seqs["r2"][-1]
        _eq(
            await s.owned_wakeups("A", after=0),
            [("r1", top1), ("r2", top2)],
            "runs A holds with wakeups, by run_id, with their highest seq",
        )
        _eq(await s.owned_wakeups("A", after=seqs["r2"][0]), [("r1", top1)], "only above after")
        _eq(await s.owned_wakeups("A", after=top1), [], "nothing above the highest")
        _eq(await s.owned_wakeups("C", after=0), [], "an owner with no runs")


@_check
async def _release_reports_wakeups_it_did_not_see(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        run = _parked(make_run(run_id="r1"), "wait", "other")
        lease = await _create_owned(s, run, "A")
        seen_one = await s.add_wakeup(_resume("r1", "wait"), now=T0)
        assert seen_one is not None
        _eq(
            await s.release(lease, now=_at(1), wake_at=None, seen=seen_one.seq),
            False,
            "release with every wakeup seen",
        )
        _eq(await _claim(s, "B", _at(500)), [], "wake_at None: not claimable")
        await s.add_wakeup(_resume("r1", "other"), now=_at(501))
        (lease,) = await _claim(s, "A", _at(501))
        _eq(
            await s.release(lease, now=_at(502), wake_at=_at(10_000), seen=seen_one.seq),
            True,
            "release while a wakeup above seen exists",
        )
        _eq(await s.next_wake("A", workflows=None), _at(502), "wake_at became now")
        _eq(
            await _claim(s, "B", _at(502)),
            [Lease(run_id="r1", owner="B", epoch=3, expires_at=_at(502 + TTL))],
            "claimable at once",
        )


# -- change notification -------------------------------------------------------------


async def _changed_since(s: Storage, seen: int, what: str) -> int:
    """``wait_for_change(seen)``, which must return (within the guard) a new counter."""
    with trio.move_on_after(GUARD_SECONDS):
        new = await s.wait_for_change(seen)
        assert new != seen, f"after {what}: wait_for_change({seen}) returned the same counter"
        return new
    raise AssertionError(
        f"after {what}: wait_for_change({seen}) did not return within {GUARD_SECONDS}s"
    )


@_check
async def _wait_for_change_returns_at_once_when_behind(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        start = await _changed_since(s, -1, "nothing")
        run = make_run(run_id="r1")
        counter = start
        await s.create(run, now=T0)
        counter = await _changed_since(s, counter, "create (unowned)")
        await s.add_wakeup(_resume("r1"), now=T0)
        counter = await _changed_since(s, counter, "add_wakeup")
        _eq(await s.wait_for_change(start), counter, "an older seen returns the current counter")
        (lease,) = await _claim(s, "A", T0)
        await s.release(lease, now=T0, wake_at=None, seen=0)
        counter = await _changed_since(s, counter, "release")
        await _claim(s, "A", T0)
        await s.release_all("A", now=T0)
        await _changed_since(s, counter, "release_all")


@_check
async def _wait_for_change_wakes_on_a_wakeup_from_another_task(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        await s.create(make_run(run_id="r1"), now=T0)
        seen = await s.wait_for_change(-1)
        got: list[int] = []

        async def waiter() -> None:
            got.append(await s.wait_for_change(seen))

        with trio.move_on_after(GUARD_SECONDS) as guard:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                assert got == [], f"wait_for_change({seen}) returned {got} with nothing changed"
                await s.add_wakeup(_resume("r1"), now=T0)
        assert not guard.cancelled_caught, (
            f"wait_for_change did not wake within {GUARD_SECONDS}s of add_wakeup in another task"
        )
        assert len(got) == 1, f"the waiter returned {got}"
        assert got[0] != seen, f"the waiter returned the counter it had seen ({seen})"


@_check
async def _wait_for_change_is_cancellable(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        seen = await s.wait_for_change(-1)
        returned: list[int] = []
        with trio.move_on_after(GUARD_SECONDS) as guard:
            async with trio.open_nursery() as nursery:

                async def waiter() -> None:
                    returned.append(await s.wait_for_change(seen))

                nursery.start_soon(waiter)
                await trio.testing.wait_all_tasks_blocked()
                nursery.cancel_scope.cancel()
        assert not guard.cancelled_caught, "wait_for_change did not end when cancelled"
        _eq(returned, [], "a cancelled wait_for_change returns nothing")
        # The storage is still usable after the cancelled wait.
        await s.create(make_run(run_id="r1"), now=T0)
        assert await s.get("r1") is not None


# -- engines, purge, concurrency ------------------------------------------------------


@_check
async def _engine_registry(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.register_engine("E1", now=T0, info={"host": "here", "pid": 1})
        await s.register_engine("E1", now=_at(1), info={"host": "here", "pid": 1})
        await s.create(make_run(run_id="r1"), now=T0, owner="E1")
        reaped = await s.reap_engines(now=_at(1))
        assert isinstance(reaped, list), f"reap_engines returns a list, got {reaped!r}"
        await s.unregister_engine("E1")
        await s.unregister_engine("E1")
        await s.unregister_engine("never-registered")
        assert await s.get("r1") is not None, "the registry never touches runs"


@_check
async def _engines_lists_the_registered_engines(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        _eq(await s.engines(now=T0), [], "engines of an empty storage")
        await s.register_engine("E2", now=_at(1), info={"host": "h2", "pid": 22})
        await s.register_engine("E1", now=T0, info={"host": "h1", "pid": 11})
        await s.create(make_run(run_id="r1"), now=T0, owner="E1")
        ended_run = make_run(run_id="r2")
        ended = await _create_owned(s, ended_run, "E1")
        await s.write(ended, attrs.evolve(ended_run, status=Status.COMPLETED), now=_at(1))
        await s.create(make_run(run_id="r3"), now=T0, owner="E2")
        await s.create(make_run(run_id="r4"), now=T0)
        records = await s.engines(now=_at(2))
        assert all(isinstance(r, EngineRecord) for r in records), f"records: {records!r}"
        _eq(
            [
                (r.engine_id, r.host, r.pid, r.started_at, r.last_heartbeat, r.runs_owned)
                for r in records
            ],
            [("E1", "h1", 11, T0, T0, 1), ("E2", "h2", 22, _at(1), _at(1), 1)],
            "engines by id, registration as heartbeat, live runs held (a terminal one is not)",
        )
        for record in records:
            _eq(record.started_at.utcoffset(), timedelta(0), "started_at comes back in UTC")
        await s.unregister_engine("E2")
        _eq([r.engine_id for r in await s.engines(now=_at(3))], ["E1"], "after unregister")


@_check
async def _renew_beats_the_engines_heart(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        await s.register_engine("E1", now=T0, info={"host": "h1", "pid": 11})
        lease = await _create_owned(s, make_run(run_id="r1"), "E1")

        async def heartbeat() -> datetime | None:
            (record,) = await s.engines(now=_at(100))
            return record.last_heartbeat

        await s.renew("E1", [lease], now=_at(5), ttl=TTL)
        _eq(await heartbeat(), _at(5), "a renewal beats the heart")
        await s.renew("E1", [], now=_at(9), ttl=TTL)
        _eq(await heartbeat(), _at(9), "a renewal of no lease too (an idle engine is alive)")
        (taken,) = await _claim(s, "E2", _at(9 + TTL))
        _eq(await s.renew("E1", [lease], now=_at(50), ttl=TTL), [], "a lost lease")
        _eq(await heartbeat(), _at(50), "a renewal that renewed nothing still beats the heart")
        _eq(await s.renew("X", [], now=_at(60), ttl=TTL), [], "an unregistered owner renews")
        _eq(await heartbeat(), _at(50), "and beats nobody's heart")
        _eq(taken.owner, "E2", "the takeover")


@_check
async def _purge_deletes_old_terminal_runs_only(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    cutoff = T0 + timedelta(days=7)
    old, new = cutoff - timedelta(microseconds=1), cutoff
    runs = {
        "old-completed": (Status.COMPLETED, old),
        "old-failed": (Status.FAILED, old - timedelta(days=30)),
        "old-cancelled": (Status.CANCELLED, old),
        "old-pending": (Status.PENDING, old),
        "old-running": (Status.RUNNING, old),
        "old-waiting": (Status.WAITING, old),
        "new-completed": (Status.COMPLETED, new),
        "new-failed": (Status.FAILED, new + timedelta(days=1)),
    }
    async with new_storage() as s:
        for run_id, (status, updated) in runs.items():
            if run_id == "old-failed":
                # Give it a dedup key before it ends: purge must forget it.
                lease = await _create_owned(s, make_run(run_id=run_id, status=Status.WAITING))
                await s.add_wakeup(_resume(run_id, dedup_key="d"), now=T0)
                await s.write(
                    lease, make_run(run_id=run_id, status=status, updated_at=updated), now=updated
                )
            else:
                await _store(s, make_run(run_id=run_id, status=status, updated_at=updated))
        kept = await s.add_wakeup(_resume("old-waiting", dedup_key="d"), now=T0)
        plus_two = timezone(timedelta(hours=2))
        _eq(await s.purge(cutoff.astimezone(plus_two)), 3, "purge counts what it deleted")
        left = {i.run_id for i in await s.query()}
        _eq(left, set(runs) - {"old-completed", "old-failed", "old-cancelled"}, "what is left")
        _eq(await s.wakeups("old-waiting"), [kept], "live runs keep their wakeups")
        _eq(await s.purge(cutoff), 0, "a second purge")
        await s.create(make_run(run_id="old-failed"), now=T0)
        assert await s.add_wakeup(_resume("old-failed", dedup_key="d"), now=T0) is not None, (
            "purge forgets the dedup keys of the runs it deletes"
        )


@_check
async def _many_concurrent_writes_all_land(new_storage: StorageFactory, *, durable: bool) -> None:
    seqs: list[int] = []
    async with new_storage() as s:

        async def write(n: int) -> None:
            run = make_run(f"orderid::n{n}", run_id=f"r{n:03d}", unique_key=f"k{n}")
            lease = await _create_owned(s, _parked(run, "wait"), f"E{n % 3}")
            added = await s.add_wakeup(_resume(f"r{n:03d}"), now=T0)
            assert added is not None
            seqs.append(added.seq)
            await s.write(lease, attrs.evolve(run, status=Status.RUNNING), now=_at(1))

        async with trio.open_nursery() as nursery:
            for n in range(100):
                nursery.start_soon(write, n)

        found = await s.query(status="running")
        _eq([i.run_id for i in found], [f"r{n:03d}" for n in range(100)], "every write landed")
        _eq(len(set(seqs)), 100, "every wakeup got its own seq")
        pending = [w.seq for n in range(100) for w in await s.wakeups(f"r{n:03d}")]
        _eq(sorted(pending), sorted(seqs), "every wakeup is pending")


@_check
async def _concurrent_readers_and_writers(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:

        async def writer(n: int) -> None:
            run = make_run(run_id=f"w{n}")
            lease = await _create_owned(s, run, "A")
            _eq(await s.get(f"w{n}"), run, "read-your-writes after create")
            later = attrs.evolve(run, status=Status.RUNNING)
            await s.write(lease, later, now=_at(1))
            _eq(await s.get(f"w{n}"), later, "read-your-writes after write")

        async def reader() -> None:
            for _ in range(5):
                await s.query(status="pending")
                await s.claim("B", now=_at(1), ttl=TTL, workflows=None, limit=5)

        async with trio.open_nursery() as nursery:
            for n in range(30):
                nursery.start_soon(writer, n)
                nursery.start_soon(reader)
        _eq(len(await s.query()), 30, "every run written")


# -- a resume that claims -------------------------------------------------------------


async def _resume_and_claim(
    s: Storage,
    wakeup: NewWakeup,
    owner: str,
    now: datetime,
    *,
    workflows: Collection[tuple[str, int]] | None = None,
    max_pending: int | None = None,
    advance: Advancer | None = None,
) -> tuple[Wakeup | None, ClaimedRun | None]:
    if advance is None:  # as a caller that predates ``advance`` calls it
        return await s.add_wakeup_and_claim(
            wakeup, now=now, max_pending=max_pending, owner=owner, ttl=TTL, workflows=workflows
        )
    return await s.add_wakeup_and_claim(
        wakeup,
        now=now,
        max_pending=max_pending,
        owner=owner,
        ttl=TTL,
        workflows=workflows,
        advance=advance,
    )


async def _hibernated_with_timer(s: Storage, run_id: str) -> tuple[Lease, Wakeup]:
    """A run parked on ``wait`` with a timer due at 500 s, handed back at 2 s by A."""
    lease = await _create_owned(s, make_run(run_id=run_id))
    await s.write(lease, _parked(make_run(run_id=run_id), "wait"), now=_at(1))
    timer = await s.add_wakeup(_timer(run_id, "wait", at=_at(500)), now=_at(1))
    assert timer is not None
    await s.release(lease, now=_at(2), wake_at=_at(500), seen=timer.seq)
    return lease, timer


class _Advancing:
    """An ``Advancer`` that completes the resumed step, parking on ``then`` with a timer;
    it remembers what it was called with (``make`` may spoil the state it returns)."""

    def __init__(
        self,
        then: str = "other",
        make: Callable[[Instance], Instance] | None = None,
        fail: bool = False,
        decline: bool = False,
    ) -> None:
        self.then, self.make, self.fail, self.decline = then, make, fail, decline
        self.calls: list[tuple[ClaimedRun, Wakeup]] = []

    def __call__(self, claimed: ClaimedRun, recorded: Wakeup) -> Advance | None:
        self.calls.append((claimed, recorded))
        if self.fail:
            raise RuntimeError("an advancer that fails")
        if self.decline:
            return None
        inst = claimed.instance
        new = attrs.evolve(
            inst,
            active_steps=frozenset({self.then}),
            waiting_steps=frozenset({self.then}),
            updated_at=recorded.created_at,
            timers=(),
        )
        if self.make is not None:
            new = self.make(new)
        timer = TimerRecord(step=self.then, event="timeout", fire_at=_at(900))
        return Advance(instance=new, timers=(timer,))


@_check
async def _a_resume_is_applied_in_its_claim(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        lease, stale = await _hibernated_with_timer(s, "r1")
        advance = _Advancing()
        payload = {"paid": True}
        added, claimed = await _resume_and_claim(
            s, _resume("r1", at=_at(3), payload=payload), "B", _at(3), advance=advance
        )
        assert added is not None, "recorded"
        assert claimed is not None, "claimed"
        _eq(len(advance.calls), 1, "the advancer is called once")
        seen, recorded = advance.calls[0]
        _eq(recorded, added, "with the wakeup recorded")
        _eq(recorded.payload, payload, "its payload as recorded")
        _eq(seen.lease, claimed.lease, "and the claim as granted")
        _eq(seen.instance.waiting_steps, frozenset({"wait"}), "the state before the resume")
        _eq([w.seq for w in seen.wakeups], [stale.seq, added.seq], "its wakeups, the new one too")
        _eq(claimed.applied, added, "the claim says it applied the resume")
        _eq(claimed.lease.epoch, lease.epoch + 1, "under the claim's new lease")
        stored = await s.get("r1")
        _eq(claimed.instance, stored, "the state written, as get returns it")
        assert stored is not None
        _eq(stored.waiting_steps, frozenset({"other"}), "the advanced state is stored")
        pending = await s.wakeups("r1")
        _eq(list(claimed.wakeups), pending, "its wakeups as wakeups returns them")
        _eq(
            [(w.kind, w.step) for w in pending],
            [(WakeupKind.TIMER, "other")],
            "the resume consumed, the timer of the step no longer parked dropped, the new added",
        )
        _eq([t.step for t in stored.timers], ["other"], "the added timer is among the run's timers")
        _eq(await _claim(s, "C", _at(4)), [], "held: nobody else claims it")
        with _raises(LeaseLost, "the lease it had before"):
            await s.write(lease, stored, now=_at(5))
        await s.write(claimed.lease, attrs.evolve(stored, updated_at=_at(5)), now=_at(5))


@_check
async def _an_advance_not_written_leaves_the_claim_as_without_it(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        spoilers: dict[str, _Advancing] = {
            "declines": _Advancing(decline=True),
            "fails": _Advancing(fail=True),
            "renames": _Advancing(make=lambda i: attrs.evolve(i, id="orderid::other")),
            "ends": _Advancing(make=lambda i: attrs.evolve(i, status=Status.COMPLETED)),
            "moves": _Advancing(make=lambda i: attrs.evolve(i, workflow_version=2)),
        }
        for n, (name, advance) in enumerate(spoilers.items()):
            run_id = f"r{n}"
            parked = _parked(make_run(f"orderid::{name}", run_id=run_id), "wait")
            await s.create(parked, now=T0)
            before = await s.get(run_id)

            async def bystander(run_id: str = run_id) -> None:
                # Committed in the same batch where a backend groups writes.
                await s.create(make_run(f"orderid::by-{run_id}", run_id=f"by-{run_id}"), now=T0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(bystander)
                added, claimed = await _resume_and_claim(
                    s,
                    _resume(run_id, at=_at(1)),
                    "B",
                    _at(1),
                    advance=advance,
                )
            assert added is not None, f"{name}: recorded"
            assert claimed is not None, f"{name}: claimed"
            _eq(claimed.applied, None, f"{name}: not applied")
            _eq(claimed.instance, before, f"{name}: the run as it was")
            _eq(await s.get(run_id), before, f"{name}: stored as it was")
            _eq(
                [w.seq for w in await s.wakeups(run_id)],
                [added.seq],
                f"{name}: the resume still pending",
            )
            _eq(list(claimed.wakeups), await s.wakeups(run_id), f"{name}: its wakeups")
            _eq(len(advance.calls), 1, f"{name}: the advancer was called once")
            assert await s.get(f"by-{run_id}") is not None, f"{name}: the other write stands"
            _eq(
                await _claim(s, "C", _at(2), run_ids=[run_id]),
                [],
                f"{name}: held by B all the same",
            )


@_check
async def _an_advance_is_only_asked_for_a_claimed_run(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        lease = await _create_owned(s, _parked(make_run(run_id="r1"), "wait", "other"))
        advance = _Advancing()
        added, claimed = await _resume_and_claim(
            s, _resume("r1", dedup_key="k"), "B", _at(1), advance=advance
        )
        assert added is not None, "recorded"
        _eq(claimed, None, "held by A: not claimed")
        _eq(advance.calls, [], "a run not claimed is not advanced")
        await s.release(lease, now=_at(2), wake_at=_at(1), seen=0)
        again = await _resume_and_claim(
            s, _resume("r1", dedup_key="k"), "B", _at(3), advance=advance
        )
        _eq(again, (None, None), "deduplicated: nothing recorded, nothing claimed")
        _eq(advance.calls, [], "nor advanced")


@_check
async def _a_resume_claims_a_hibernated_run(new_storage: StorageFactory, *, durable: bool) -> None:
    async with new_storage() as s:
        lease, timer = await _hibernated_with_timer(s, "r1")
        added, claimed = await _resume_and_claim(s, _resume("r1", at=_at(3)), "B", _at(3))
        assert added is not None, "recorded"
        assert claimed is not None, "an unowned run, due now: claimed"
        _eq(
            claimed.lease,
            Lease(run_id="r1", owner="B", epoch=lease.epoch + 1, expires_at=_at(3 + TTL)),
            "the lease granted, as claim grants it",
        )
        _eq(claimed.instance, await s.get("r1"), "the run as get returns it")
        _eq(list(claimed.wakeups), await s.wakeups("r1"), "its wakeups as wakeups returns them")
        _eq([w.seq for w in claimed.wakeups], [timer.seq, added.seq], "the new one included")
        _eq(await _claim(s, "C", _at(4)), [], "held: nobody else claims it")
        parked = await s.get("r1")
        assert parked is not None
        done = attrs.evolve(parked, status=Status.COMPLETED, updated_at=_at(5))
        await s.write(claimed.lease, done, now=_at(5), consume=[added.seq])
        with _raises(LeaseLost, "the lease it had before"):
            await s.write(lease, done, now=_at(5))


@_check
async def _a_resume_leaves_a_held_run_to_its_owner(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        lease = await _create_owned(s, _parked(make_run(run_id="r1"), "wait", "other"))
        for owner in ("B", "A"):
            step = "wait" if owner == "B" else "other"
            added, claimed = await _resume_and_claim(s, _resume("r1", step), owner, _at(1))
            assert added is not None, f"recorded for {owner}"
            _eq(claimed, None, f"held by A: not claimed for {owner}")
        got = await s.get("r1")
        assert got is not None
        await s.write(lease, got, now=_at(2))  # A's lease stands
        _eq([w.step for w in await s.wakeups("r1")], ["wait", "other"], "both resumes recorded")
        # Lapsed: the resume claims it, epoch + 1.
        added, claimed = await _resume_and_claim(
            s, _resume("r1", "third", at=_at(1 + TTL)), "B", _at(1 + TTL)
        )
        assert added is not None, "recorded"
        assert claimed is not None, "an expired lease is claimed"
        _eq(claimed.lease.epoch, lease.epoch + 1, "the epoch of a takeover")


@_check
async def _a_resume_claims_only_what_claim_would(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        await s.create(_parked(make_run(run_id="r1"), "wait", "later"), now=T0)
        added, claimed = await _resume_and_claim(
            s, _resume("r1", at=_at(1)), "A", _at(1), workflows=[("tests.Other", 1)]
        )
        assert added is not None, "recorded whatever the filter"
        _eq(claimed, None, "a workflow the claimer does not run: not claimed")
        early = _resume("r1", "later", at=_at(60))
        added, claimed = await _resume_and_claim(
            s, early, "A", _at(1), workflows=[("tests.Order", 1)]
        )
        assert added is not None
        assert claimed is not None, "claimable: the first resume is due"
        _eq(claimed.lease.owner, "A", "claimed for A")


@_check
async def _a_resume_that_records_nothing_claims_nothing(
    new_storage: StorageFactory, *, durable: bool
) -> None:
    async with new_storage() as s:
        await s.create(_parked(make_run(run_id="r1"), "wait"), now=T0)
        keyed = _resume("r1", at=_at(1), dedup_key="k")
        added, claimed = await _resume_and_claim(s, keyed, "A", _at(1))
        assert added is not None, "recorded"
        assert claimed is not None, "claimed"
        # Handed back with the resume unapplied: due, so claimable again.
        await s.release(claimed.lease, now=_at(2), wake_at=_at(1), seen=added.seq)
        _eq(
            await _resume_and_claim(s, keyed, "B", _at(3)),
            (None, None),
            "a deduplicated resume: nothing recorded, nothing claimed",
        )
        with _raises(WakeupRefused, "a second resume of the pending step") as info:
            await _resume_and_claim(s, _resume("r1", at=_at(3)), "B", _at(3))
        _eq(info.value.reason, "step_pending", "the refusal's reason")
        leases = await _claim(s, "C", _at(3))
        _eq(_ids(leases), ["r1"], "unclaimed by the refused resume: C claims it")
        lease = await _create_owned(s, make_run("orderid::a2", run_id="r2"))
        await s.write(
            lease,
            attrs.evolve(make_run("orderid::a2", run_id="r2"), status=Status.COMPLETED),
            now=_at(4),
        )
        with _raises(WakeupRefused, "a resume of a terminal run") as info:
            await _resume_and_claim(s, _resume("r2", at=_at(5)), "B", _at(5))
        _eq(info.value.reason, "not_live", "the refusal's reason")
