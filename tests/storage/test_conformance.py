"""The storage conformance suite: every test runs against every backend.

The ``storage`` fixture is an open storage of the current ``backend``
(``conftest.BACKENDS``). ``MemoryStorage`` passes the same suite as the durable
backends, which is what makes it a trustworthy fake.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest
import trio
import trio.testing

from hephaestus_trio import (
    Context,
    ErrorRecord,
    ExecutionEntry,
    Instance,
    Status,
    Storage,
    TimerRecord,
)
from hephaestus_trio.storage import ResumeRecord, UniqueViolation

from ._support import T0, Backend

Make = Callable[..., Instance]
LIVE = [Status.PENDING, Status.RUNNING, Status.WAITING]
TERMINAL = [Status.COMPLETED, Status.FAILED, Status.CANCELLED]


# -- basics -------------------------------------------------------------------


async def test_is_a_storage(storage: Storage, backend: Backend) -> None:
    assert isinstance(storage, Storage)
    assert storage.durable is backend.durable


async def test_get_unknown_returns_none(storage: Storage) -> None:
    assert await storage.get("no-such-run") is None


async def test_put_then_get_round_trips(storage: Storage, make: Make) -> None:
    at = T0 + timedelta(seconds=5)
    instance = make(
        status=Status.FAILED,
        unique_key="tests.Order::orderid::a1",
        context=Context(initial={"items": 3}, steps={"validate": {"ok": True, "n": [1, 2]}}),
        step_configs={"wait": {"seconds": 1.5}},
        active_steps=frozenset({"wait", "ship"}),
        waiting_steps=frozenset({"wait"}),
        completed_steps=frozenset({"validate"}),
        taken_edges=frozenset({("validate", "wait"), ("validate", "ship")}),
        runtime_metadata={"charged": 12.5},
        telemetry_metadata={"tenant": "acme"},
        execution_history=(
            ExecutionEntry(step="validate", event="valid", timestamp=at, context_updates={"ok": 1}),
            ExecutionEntry(step="ship", event="done", timestamp=at, attempt=3),
        ),
        error=ErrorRecord(kind="crash", message="boom", step="ship", exception_type="OSError"),
        updated_at=at,
    )
    await storage.put(instance)
    assert await storage.get(instance.run_id) == instance


async def test_put_replaces_the_run(storage: Storage, make: Make) -> None:
    first = make(run_id="r1")
    await storage.put(first)
    second = attrs.evolve(first, status=Status.RUNNING, updated_at=T0 + timedelta(1))
    await storage.put(second)
    assert await storage.get("r1") == second
    assert await storage.query() == [second]


async def test_delete_removes_the_run_and_unknown_is_a_no_op(storage: Storage, make: Make) -> None:
    await storage.put(make(run_id="r1"))
    await storage.put(make(run_id="r2"))
    await storage.delete("r1")
    await storage.delete("r1")
    await storage.delete("never-existed")
    assert await storage.get("r1") is None
    assert [i.run_id for i in await storage.query()] == ["r2"]


async def test_every_method_checkpoints(storage: Storage, make: Make) -> None:
    instance = make(run_id="r1")
    with trio.testing.assert_checkpoints():
        await storage.put(instance)
    with trio.testing.assert_checkpoints():
        await storage.get("r1")
    with trio.testing.assert_checkpoints():
        await storage.get("unknown")
    with trio.testing.assert_checkpoints():
        await storage.query(status="pending")
    with trio.testing.assert_checkpoints():
        record = await storage.add_resume("r1", "wait", "go", T0)
    with trio.testing.assert_checkpoints():
        await storage.pending_resumes("r1")
    with trio.testing.assert_checkpoints():
        await storage.delete_resume(record.seq)
    with trio.testing.assert_checkpoints():
        await storage.purge(T0)
    with trio.testing.assert_checkpoints():
        await storage.delete("r1")


async def test_open_and_close_are_idempotent(backend: Backend, make: Make) -> None:
    storage = backend.new_storage()
    await storage.open()
    await storage.open()
    await storage.put(make(run_id="r1"))
    assert await storage.get("r1") is not None
    await storage.close()
    await storage.close()


# -- query --------------------------------------------------------------------

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


async def _load_dataset(storage: Storage, make: Make) -> None:
    for run_id, id_, workflow, version, status, minutes in reversed(DATASET):
        await storage.put(
            make(
                id_,
                run_id=run_id,
                workflow=workflow,
                version=version,
                status=status,
                created_at=T0 + timedelta(minutes=minutes),
            )
        )


def _expected(keep: Callable[[str, str, int, Status], bool]) -> list[str]:
    rows = [row for row in DATASET if keep(row[1], row[2], row[3], row[4])]
    return [row[0] for row in sorted(rows, key=lambda row: (row[5], row[0]))]


QUERIES: list[tuple[dict[str, object], Callable[[str, str, int, Status], bool]]] = [
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
        {"workflow": "shop.Order", "status_in": LIVE},
        lambda i, w, v, s: w == "shop.Order" and s.is_live,
    ),
    (
        {"status": "waiting", "status_in": ["waiting", "running"], "workflow": "shop.Signup"},
        lambda i, w, v, s: s is Status.WAITING and w == "shop.Signup",
    ),
    ({"status": "running", "status_in": ["waiting"]}, lambda i, w, v, s: False),
]


@pytest.mark.parametrize(("filters", "keep"), QUERIES, ids=[repr(q[0]) for q in QUERIES])
async def test_query_filters(
    storage: Storage,
    make: Make,
    filters: dict[str, object],
    keep: Callable[[str, str, int, Status], bool],
) -> None:
    await _load_dataset(storage, make)
    found = await storage.query(**filters)  # type: ignore[arg-type]
    assert [i.run_id for i in found] == _expected(keep)


async def test_query_orders_by_created_at_then_run_id(storage: Storage, make: Make) -> None:
    later = T0 + timedelta(microseconds=1)
    for run_id, created in [("b", T0), ("c", later), ("a", T0), ("aa", T0), ("0", later)]:
        await storage.put(make(run_id=run_id, created_at=created))
    assert [i.run_id for i in await storage.query()] == ["a", "aa", "b", "0", "c"]


async def test_query_orders_by_instant_whatever_the_offset(storage: Storage, make: Make) -> None:
    plus_two = timezone(timedelta(hours=2))
    # 01:30 at +02:00 is 23:30 UTC the day before: earlier than T0.
    early = datetime(2030, 1, 1, 1, 30, tzinfo=plus_two)
    await storage.put(make(run_id="a", created_at=T0))
    await storage.put(make(run_id="b", created_at=early))
    assert [i.run_id for i in await storage.query()] == ["b", "a"]


async def test_query_rejects_unknown_statuses(storage: Storage) -> None:
    with pytest.raises(ValueError, match="unknown status"):
        await storage.query(status="sleeping")
    with pytest.raises(ValueError, match="unknown status"):
        await storage.query(status_in=["waiting", "sleeping"])
    with pytest.raises(ValueError, match="status_in takes a list"):
        await storage.query(status_in="waiting")


# -- uniqueness -----------------------------------------------------------------

KEY = "tests.Order::orderid::a1"


@pytest.mark.parametrize("holder_status", LIVE, ids=lambda s: s.value)
async def test_a_live_holder_blocks_another_live_run(
    storage: Storage, make: Make, holder_status: Status
) -> None:
    await storage.put(make("orderid::a1", run_id="r1", status=holder_status, unique_key=KEY))
    with pytest.raises(UniqueViolation) as info:
        await storage.put(make("orderid::a1", run_id="r2", unique_key=KEY))
    assert (info.value.unique_key, info.value.existing_run_id) == (KEY, "r1")
    assert info.value.existing_id == "orderid::a1"
    assert await storage.get("r2") is None


@pytest.mark.parametrize("terminal", TERMINAL, ids=lambda s: s.value)
async def test_a_terminal_run_frees_its_key(storage: Storage, make: Make, terminal: Status) -> None:
    first = make(run_id="r1", status=Status.RUNNING, unique_key=KEY)
    await storage.put(first)
    await storage.put(attrs.evolve(first, status=terminal))
    await storage.put(make(run_id="r2", unique_key=KEY))
    assert (await storage.get("r2")) is not None


@pytest.mark.parametrize("terminal", TERMINAL, ids=lambda s: s.value)
async def test_terminal_runs_never_conflict(storage: Storage, make: Make, terminal: Status) -> None:
    await storage.put(make(run_id="r1", unique_key=KEY))
    await storage.put(make(run_id="r2", status=terminal, unique_key=KEY))
    await storage.put(make(run_id="r3", status=terminal, unique_key=KEY))
    assert len(await storage.query()) == 3


async def test_the_holder_may_be_put_again(storage: Storage, make: Make) -> None:
    run = make(run_id="r1", unique_key=KEY)
    for status in [Status.PENDING, Status.RUNNING, Status.WAITING, Status.RUNNING]:
        run = attrs.evolve(run, status=status)
        await storage.put(run)
    assert await storage.get("r1") == run


async def test_no_key_never_conflicts(storage: Storage, make: Make) -> None:
    for n in range(3):
        await storage.put(make(run_id=f"r{n}", unique_key=None))
    assert len(await storage.query(status="pending")) == 3


async def test_keys_are_independent(storage: Storage, make: Make) -> None:
    await storage.put(make(run_id="r1", unique_key="wf::orderid::a"))
    await storage.put(make(run_id="r2", unique_key="wf::orderid::b"))
    await storage.put(make(run_id="r3", unique_key="other::orderid::a"))
    assert len(await storage.query()) == 3


async def test_delete_frees_the_key(storage: Storage, make: Make) -> None:
    await storage.put(make(run_id="r1", unique_key=KEY))
    await storage.delete("r1")
    await storage.put(make(run_id="r2", unique_key=KEY))


async def test_changing_its_key_frees_the_old_one(storage: Storage, make: Make) -> None:
    run = make(run_id="r1", unique_key=KEY)
    await storage.put(run)
    await storage.put(attrs.evolve(run, unique_key="another::key"))
    await storage.put(make(run_id="r2", unique_key=KEY))
    with pytest.raises(UniqueViolation):
        await storage.put(make(run_id="r3", unique_key="another::key"))


async def test_a_refused_put_writes_nothing(storage: Storage, make: Make) -> None:
    await storage.put(make(run_id="r1", unique_key=KEY))
    loser = make(run_id="r2", status=Status.RUNNING)
    await storage.put(loser)
    record = await storage.add_resume("r2", "wait", "go", T0)
    with pytest.raises(UniqueViolation):
        await storage.put(attrs.evolve(loser, unique_key=KEY), consume=[record.seq])
    assert await storage.get("r2") == loser
    assert await storage.pending_resumes("r2") == [record]


async def test_fifty_concurrent_starts_one_wins(storage: Storage, make: Make) -> None:
    winners: list[str] = []
    losers: list[UniqueViolation] = []

    async def start(n: int) -> None:
        try:
            await storage.put(make(f"orderid::n{n}", run_id=f"r{n:02d}", unique_key=KEY))
        except UniqueViolation as exc:
            losers.append(exc)
        else:
            winners.append(f"r{n:02d}")

    async with trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(start, n)

    assert len(winners) == 1
    assert len(losers) == 49
    (winner,) = winners
    assert {exc.existing_run_id for exc in losers} == {winner}
    assert {exc.existing_id for exc in losers} == {f"orderid::n{int(winner[1:])}"}
    assert [i.run_id for i in await storage.query(status_in=LIVE)] == [winner]


# -- resumes ----------------------------------------------------------------------


async def test_add_resume_returns_increasing_seqs(storage: Storage) -> None:
    at = datetime(2030, 1, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    records = [await storage.add_resume("r1", "wait", f"e{n}", at) for n in range(5)]
    seqs = [r.seq for r in records]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5
    assert records[0] == ResumeRecord(
        seq=seqs[0], run_id="r1", step="wait", event="e0", accepted_at=at
    )
    assert records[0].accepted_at == T0


async def test_pending_resumes_are_filtered_and_ordered(storage: Storage) -> None:
    made = []
    for n, run_id in enumerate(["r1", "r2", "r1", "r3", "r1", "r2"]):
        made.append(await storage.add_resume(run_id, f"s{n}", "go", T0 + timedelta(seconds=n)))
    assert await storage.pending_resumes() == made
    assert await storage.pending_resumes("r1") == [made[0], made[2], made[4]]
    assert await storage.pending_resumes("r2") == [made[1], made[5]]
    assert await storage.pending_resumes("nobody") == []


async def test_put_consumes_resumes_atomically(storage: Storage, make: Make) -> None:
    run = make(run_id="r1", status=Status.WAITING)
    await storage.put(run)
    first = await storage.add_resume("r1", "wait", "go", T0)
    second = await storage.add_resume("r1", "wait", "again", T0)
    other = await storage.add_resume("r2", "wait", "go", T0)
    applied = attrs.evolve(run, status=Status.RUNNING)
    await storage.put(applied, consume=[first.seq, 987654])
    assert await storage.get("r1") == applied
    assert await storage.pending_resumes() == [second, other]


async def test_delete_resume(storage: Storage) -> None:
    first = await storage.add_resume("r1", "wait", "go", T0)
    second = await storage.add_resume("r1", "wait", "go", T0)
    await storage.delete_resume(first.seq)
    await storage.delete_resume(first.seq)
    await storage.delete_resume(424242)
    assert await storage.pending_resumes() == [second]


async def test_seqs_are_never_reused(storage: Storage) -> None:
    first = await storage.add_resume("r1", "wait", "go", T0)
    await storage.delete_resume(first.seq)
    second = await storage.add_resume("r1", "wait", "go", T0)
    assert second.seq > first.seq


async def test_delete_drops_the_runs_resumes(storage: Storage, make: Make) -> None:
    await storage.put(make(run_id="r1"))
    await storage.add_resume("r1", "wait", "go", T0)
    kept = await storage.add_resume("r2", "wait", "go", T0)
    await storage.delete("r1")
    assert await storage.pending_resumes() == [kept]


# -- purge --------------------------------------------------------------------------


async def test_purge_deletes_old_terminal_runs_only(storage: Storage, make: Make) -> None:
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
    for run_id, (status, updated) in runs.items():
        await storage.put(make(run_id=run_id, status=status, updated_at=updated))
    doomed = await storage.add_resume("old-failed", "wait", "go", T0)
    kept = await storage.add_resume("old-waiting", "wait", "go", T0)

    assert await storage.purge(cutoff) == 3
    left = {i.run_id for i in await storage.query()}
    assert left == set(runs) - {"old-completed", "old-failed", "old-cancelled"}
    assert doomed not in await storage.pending_resumes()
    assert await storage.pending_resumes() == [kept]
    assert await storage.purge(cutoff) == 0


# -- durability and timers ------------------------------------------------------------


async def test_timers_round_trip_as_utc(storage: Storage, make: Make) -> None:
    fire_at = datetime(2030, 1, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-5)))
    timers = (
        TimerRecord(step="wait", event="timeout", fire_at=fire_at),
        TimerRecord(step="approval", event="expired", fire_at=T0),
    )
    run = make(run_id="r1", status=Status.WAITING, timers=timers)
    await storage.put(run)
    loaded = await storage.get("r1")
    assert loaded is not None
    assert loaded.timers == timers
    assert loaded.timers[0].fire_at == datetime(2030, 1, 1, 14, 30, 0, 123456, tzinfo=UTC)
    assert all(t.fire_at.utcoffset() == timedelta(0) for t in loaded.timers)


async def test_everything_survives_a_reopen(durable_backend: Backend, make: Make) -> None:
    backend = durable_backend
    runs = [
        make(run_id="r1", status=Status.WAITING, unique_key=KEY),
        make(run_id="r2", status=Status.COMPLETED, updated_at=T0 + timedelta(1)),
        make(
            run_id="r3",
            status=Status.WAITING,
            timers=(TimerRecord(step="wait", event="timeout", fire_at=T0),),
        ),
    ]
    async with backend.new_storage() as storage:
        for run in runs:
            await storage.put(run)
        resumes = [
            await storage.add_resume("r1", "wait", "go", T0),
            await storage.add_resume("r3", "wait", "go", T0),
        ]
    async with backend.new_storage() as reopened:
        assert await reopened.query() == runs
        assert await reopened.pending_resumes() == resumes
        with pytest.raises(UniqueViolation):
            await reopened.put(make(run_id="r9", unique_key=KEY))
        later = await reopened.add_resume("r1", "wait", "go", T0)
        assert later.seq > resumes[-1].seq


# -- concurrency ------------------------------------------------------------------------


async def test_many_concurrent_writes_all_land(storage: Storage, make: Make) -> None:
    seqs: list[int] = []

    async def write(n: int) -> None:
        await storage.put(make(f"orderid::n{n}", run_id=f"r{n:03d}", unique_key=f"k{n}"))
        seqs.append((await storage.add_resume(f"r{n:03d}", "wait", "go", T0)).seq)
        await storage.put(make(f"orderid::n{n}", run_id=f"r{n:03d}", status=Status.RUNNING))

    async with trio.open_nursery() as nursery:
        for n in range(100):
            nursery.start_soon(write, n)

    found = await storage.query(status="running")
    assert [i.run_id for i in found] == [f"r{n:03d}" for n in range(100)]
    assert len(set(seqs)) == 100
    assert sorted(r.seq for r in await storage.pending_resumes()) == sorted(seqs)


async def test_concurrent_readers_and_writers(storage: Storage, make: Make) -> None:
    async def writer(n: int) -> None:
        run = make(run_id=f"w{n}")
        await storage.put(run)
        assert await storage.get(f"w{n}") == run  # read-your-writes

    async def reader() -> None:
        for _ in range(5):
            await storage.query(status="pending")

    async with trio.open_nursery() as nursery:
        for n in range(30):
            nursery.start_soon(writer, n)
            nursery.start_soon(reader)
    assert len(await storage.query()) == 30
