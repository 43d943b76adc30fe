"""SQLite-specific behaviour: WAL, grouped commits, leases across objects, migrations.

The shared behaviour is in ``test_conformance.py``; this file checks what only
the SQLite backend promises: grouped commits (some tests hold the first batch
inside the worker thread with ``Gate`` so that the content of the next batch is
deterministic), several storage objects and processes on one file, engine
lock files, refusing foreign files and migrating old ones.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from hephaestus_trio import Instance, SQLiteStorage, Status, StorageError, TimerRecord
from hephaestus_trio._errors import LeaseLost
from hephaestus_trio.core._serialization import dumps
from hephaestus_trio.storage import _sqlite_schema as schema
from hephaestus_trio.storage._protocol import (
    Lease,
    NewWakeup,
    UniqueViolation,
    WakeupGone,
    WakeupKind,
    WakeupRefused,
)
from hephaestus_trio.storage._queries import Migration
from hephaestus_trio.storage._sqlite_rows import timestamp

from ._support import T0

Make = Callable[..., Instance]
KEY = "tests.Order::orderid::a1"
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL are POSIX")


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "app.db"


class Gate:
    """Holds the first batch in the worker thread until released; records batch sizes."""

    def __init__(self, storage: SQLiteStorage, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        original = storage._apply_batch

        def gated(batch: list[object]) -> None:
            self.sizes.append(len(batch))
            if len(self.sizes) == 1:
                self.entered.set()
                assert self.release.wait(10)
            original(batch)  # type: ignore[arg-type]

        monkeypatch.setattr(storage, "_apply_batch", gated)

    async def wait_entered(self) -> None:
        assert await trio.to_thread.run_sync(self.entered.wait, 10)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _schema_objects(conn: sqlite3.Connection) -> list[tuple[str, str, str, str]]:
    rows = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
    ).fetchall()
    # ALTER TABLE ... ADD COLUMN splices its text in as " , col TYPE)": compare
    # the statements up to whitespace, including whitespace before , and ).
    return sorted(
        (t, n, tbl, re.sub(r"\s+([,)])", r"\1", " ".join(sql.split()))) for t, n, tbl, sql in rows
    )


def _resume(run_id: str, step: str = "wait", **changes: object) -> NewWakeup:
    fields: dict[str, object] = {"step": step, "event": "go", "due_at": T0}
    fields.update(changes)
    return NewWakeup(run_id=run_id, kind=WakeupKind.RESUME, **fields)  # type: ignore[arg-type]


async def _owned(storage: SQLiteStorage, instance: Instance, owner: str = "e1") -> Lease:
    lease = await storage.create(instance, now=T0, owner=owner, ttl=30)
    assert lease is not None
    return lease


def _parked(instance: Instance, step: str = "wait") -> Instance:
    return attrs.evolve(
        instance,
        status=Status.WAITING,
        active_steps=frozenset({step}),
        waiting_steps=frozenset({step}),
    )


# -- pragmas ------------------------------------------------------------------


async def test_wal_mode_full_sync_and_markers(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.create(make(run_id="r1"), now=T0)
        assert storage._writer is not None
        assert storage._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
            assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID


async def test_storage_path_repr_and_settings(db_path: Path) -> None:
    storage = SQLiteStorage(db_path)
    assert storage.path == str(db_path)
    assert repr(storage) == f"SQLiteStorage({str(db_path)!r})"
    assert storage.durable is True
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="poll_interval"):
            SQLiteStorage(db_path, poll_interval=bad)


# -- grouped commits ------------------------------------------------------------


async def test_concurrent_writes_share_transactions(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        commits, writes = storage._commit_count, storage._write_count
        async with trio.open_nursery() as nursery:
            for n in range(50):
                run = make(f"orderid::n{n}", run_id=f"r{n:02d}")
                nursery.start_soon(lambda run=run: storage.create(run, now=T0))
        assert storage._write_count - writes == 50
        assert 1 <= storage._commit_count - commits < 50
        assert len(await storage.query()) == 50


async def test_writes_arriving_during_a_commit_form_the_next_batch(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            for n in range(20):
                run = make(run_id=f"r{n:02d}")
                nursery.start_soon(lambda run=run: storage.create(run, now=T0))
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert gate.sizes == [1, 20]
        assert len(await storage.query()) == 21


async def test_fenced_writes_are_grouped_too(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        runs = [make(run_id=f"r{n:02d}") for n in range(20)]
        leases = [await _owned(storage, run) for run in runs]
        gate = Gate(storage, monkeypatch)
        later = T0 + timedelta(seconds=1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            for lease, run in zip(leases, runs, strict=True):
                running = attrs.evolve(run, status=Status.RUNNING, updated_at=later)
                nursery.start_soon(
                    lambda lease=lease, running=running: storage.write(lease, running, now=later)
                )
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert gate.sizes == [1, 20]
        assert {i.status for i in await storage.query(status_in=["running"])} == {Status.RUNNING}
        assert len(await storage.query(status="running")) == 20


async def test_batches_are_bounded(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            for n in range(1200):
                nursery.start_soon(storage.cancel_timer, "plug", n)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert gate.sizes == [1, 500, 500, 200]


async def test_a_unique_violation_in_a_batch_keeps_the_other_writes(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.create(make(run_id="holder", status=Status.WAITING, unique_key=KEY), now=T0)
        gate = Gate(storage, monkeypatch)
        outcomes: dict[str, object] = {}

        async def attempt(name: str, write: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await write()
            except UniqueViolation as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            for n in range(10):
                run = make(f"orderid::n{n}", run_id=f"r{n}", unique_key=f"key{n}")
                nursery.start_soon(attempt, f"r{n}", lambda run=run: storage.create(run, now=T0))
            loser = make(run_id="loser", unique_key=KEY)
            nursery.start_soon(attempt, "loser", lambda: storage.create(loser, now=T0))
            nursery.start_soon(
                attempt, "resume", lambda: storage.add_wakeup(_resume("holder"), now=T0)
            )
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert gate.sizes == [1, 12]
        violation = outcomes["loser"]
        assert isinstance(violation, UniqueViolation)
        assert violation.existing_run_id == "holder"
        assert await storage.get("loser") is None
        assert {i.run_id for i in await storage.query()} == {
            "holder",
            "plug",
            *(f"r{n}" for n in range(10)),
        }
        assert await storage.wakeups("holder") == [outcomes["resume"]]


async def test_a_refused_fenced_write_in_a_batch_rolls_back_only_itself(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        a, b, c = (_parked(make(run_id=name)) for name in "abc")
        lease_a, lease_b, lease_c = [await _owned(storage, run) for run in (a, b, c)]
        stale_b = attrs.evolve(lease_b, epoch=lease_b.epoch + 7)
        later = T0 + timedelta(seconds=1)
        timer = TimerRecord(step="wait", event="late", fire_at=T0 + timedelta(hours=1))
        gate = Gate(storage, monkeypatch)
        outcomes: dict[str, object] = {}

        async def attempt(name: str, write: Callable[[], Awaitable[object]]) -> None:
            try:
                outcomes[name] = await write()
            except (LeaseLost, WakeupGone) as exc:
                outcomes[name] = exc

        def moved(run: Instance) -> Instance:
            return attrs.evolve(run, updated_at=later, runtime_metadata={"moved": True})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            nursery.start_soon(
                attempt,
                "a",
                lambda: storage.write(lease_a, moved(a), now=later, add_timers=[timer]),
            )
            nursery.start_soon(attempt, "b", lambda: storage.write(stale_b, moved(b), now=later))
            nursery.start_soon(
                attempt,
                "c",
                lambda: storage.write(
                    lease_c, moved(c), now=later, consume=[9999], add_timers=[timer]
                ),
            )
            nursery.start_soon(attempt, "resume", lambda: storage.add_wakeup(_resume("b"), now=T0))
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert gate.sizes == [1, 4]
        assert isinstance(outcomes["b"], LeaseLost)
        assert (outcomes["b"].run_id, outcomes["b"].epoch) == ("b", lease_b.epoch + 7)
        assert isinstance(outcomes["c"], WakeupGone)
        assert outcomes["c"].seq == 9999
        got_a, got_b, got_c = [await storage.get(name) for name in "abc"]
        assert got_a is not None
        assert got_a.runtime_metadata == {"moved": True}
        assert got_a.timers == (timer,)
        assert got_b == b
        assert got_c == c  # the run update and its timer were rolled back together
        assert await storage.wakeups("c") == []
        assert [w.kind for w in await storage.wakeups("b")] == [WakeupKind.RESUME]


async def test_two_new_runs_with_one_key_in_one_batch(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        results: list[object] = []

        async def start(run_id: str) -> None:
            try:
                await storage.create(make(run_id=run_id, unique_key=KEY), now=T0)
                results.append(run_id)
            except UniqueViolation as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            nursery.start_soon(start, "a")
            nursery.start_soon(start, "b")
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert gate.sizes == [1, 2]
        (winner,) = [r for r in results if isinstance(r, str)]
        (loss,) = [r for r in results if isinstance(r, UniqueViolation)]
        assert loss.existing_run_id == winner


async def test_a_write_cancelled_while_queued_never_happens(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
            await gate.wait_entered()
            with trio.CancelScope() as scope:
                nursery.start_soon(lambda: storage.create(make(run_id="kept"), now=T0))
                scope.cancel()
                await storage.create(make(run_id="cancelled"), now=T0)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert sorted(i.run_id for i in await storage.query()) == ["kept", "plug"]
        assert storage._queue == []


async def test_a_flusher_cancelled_before_its_thread_hands_the_batch_on(
    db_path: Path, make: Make
) -> None:
    async with SQLiteStorage(db_path) as storage:
        # Hold the writer's limiter so that flushers wait before starting their thread.
        await storage._write_limiter.acquire()
        cancel_leader = trio.CancelScope()

        async def leader() -> None:
            with cancel_leader:
                await storage.create(make(run_id="leader"), now=T0)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            assert storage._flushing
            for name in ("b", "c"):
                nursery.start_soon(lambda name=name: storage.create(make(run_id=name), now=T0))
            await trio.testing.wait_all_tasks_blocked()
            cancel_leader.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert cancel_leader.cancelled_caught
            # "b" or "c" took over the flush and waits for the limiter in turn.
            assert storage._flushing
            assert [w.state.name for w in storage._queue] == []
            storage._write_limiter.release()
        assert sorted(i.run_id for i in await storage.query()) == ["b", "c"]


async def test_close_commits_queued_writes_first(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SQLiteStorage(db_path)
    await storage.open()
    gate = Gate(storage, monkeypatch)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: storage.create(make(run_id="plug"), now=T0))
        await gate.wait_entered()
        for n in range(5):
            run = make(run_id=f"r{n}")
            nursery.start_soon(lambda run=run: storage.create(run, now=T0))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(storage.close)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(StorageError, match="is closed"):
            await storage.create(make(run_id="too-late"), now=T0)
        gate.release.set()
    async with SQLiteStorage(db_path) as reopened:
        assert len(await reopened.query()) == 6


# -- reads --------------------------------------------------------------------------


async def test_query_reads_every_runs_timers_with_one_statement(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        for n in range(10):
            timer = TimerRecord(step="wait", event="late", fire_at=T0 + timedelta(minutes=n))
            run = _parked(make(f"orderid::n{n}", run_id=f"r{n}"), step="wait")
            await storage.create(attrs.evolve(run, timers=(timer,)), now=T0)
        statements: list[str] = []
        assert storage._reader is not None
        storage._reader.set_trace_callback(statements.append)
        try:
            runs = await storage.query()
        finally:
            storage._reader.set_trace_callback(None)
        assert [len(run.timers) for run in runs] == [1] * 10
        selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
        assert len(selects) == 2  # the runs, then the timers of all of them


async def test_documents_are_stored_without_their_timers(db_path: Path, make: Make) -> None:
    timer = TimerRecord(step="wait", event="late", fire_at=T0 + timedelta(seconds=1.5))
    async with SQLiteStorage(db_path) as storage:
        await storage.create(attrs.evolve(_parked(make(run_id="r1")), timers=(timer,)), now=T0)
        got = await storage.get("r1")
        assert got is not None
        assert got.timers == (timer,)
    with closing(sqlite3.connect(db_path)) as conn:
        (text,) = conn.execute("SELECT instance FROM hephaestus_runs").fetchone()
        assert json.loads(text)["timers"] == []
        assert conn.execute("SELECT due_at FROM hephaestus_wakeups").fetchall() == [
            ("2030-01-01T00:00:01.500000Z",)
        ]


async def test_claims_and_next_wake_walk_the_claimable_index(db_path: Path) -> None:
    async with SQLiteStorage(db_path):
        pass
    params = {"now": timestamp(T0), "workflows": None, "run_ids": "[]", "limit": 5, "owner": "e"}
    with closing(sqlite3.connect(db_path)) as conn:

        def plan(name: str) -> str:
            rows = conn.execute("EXPLAIN QUERY PLAN " + schema.SQL.queries[name], params)
            return " ".join(str(row[3]) for row in rows)

        assert "USING INDEX hephaestus_runs_claimable_idx" in plan("claimable")
        assert "TEMP B-TREE" not in plan("claimable")  # the index order is the claim order
        assert "USING INDEX hephaestus_runs_claimable_idx" in plan("next_wake")
        assert "TEMP B-TREE" not in plan("next_wake")
        assert "sqlite_autoindex_hephaestus_runs_1 (run_id=?)" in plan("claimable_among")


async def test_payloads_are_json(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.create(_parked(make(run_id="r1")), now=T0)
        recorded = await storage.add_wakeup(_resume("r1", payload={"b": [1, 2], "a": "é"}), now=T0)
        assert recorded is not None
        assert recorded.payload == {"a": "é", "b": [1, 2]}
        assert await storage.wakeups("r1") == [recorded]
        with pytest.raises(ValueError):
            await storage.add_wakeup(_resume("r1", "other", payload={"x": float("nan")}), now=T0)
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("SELECT payload FROM hephaestus_wakeups").fetchall() == [
                ('{"a":"\\u00e9","b":[1,2]}',)
            ]


# -- several storage objects on one file --------------------------------------------------


async def test_two_storages_on_one_file_share_uniqueness(db_path: Path, make: Make) -> None:
    winners: list[str] = []
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:

        async def start(storage: SQLiteStorage, run_id: str) -> None:
            try:
                await storage.create(make(run_id=run_id, unique_key=KEY), now=T0)
                winners.append(run_id)
            except UniqueViolation:
                pass

        async with trio.open_nursery() as nursery:
            for n in range(10):
                nursery.start_soon(start, one, f"one{n}")
                nursery.start_soon(start, two, f"two{n}")
        assert len(winners) == 1
        assert [i.run_id for i in await two.query()] == winners
        assert [i.run_id for i in await one.query()] == winners


async def test_two_storages_claim_each_run_once(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:
        for n in range(40):
            await one.create(make(f"orderid::n{n}", run_id=f"r{n:02d}"), now=T0)
        claimed: dict[str, list[str]] = {"one": [], "two": []}

        async def claim_all(name: str, storage: SQLiteStorage) -> None:
            while True:
                leases = await storage.claim(name, now=T0, ttl=30, workflows=None, limit=3)
                if not leases:
                    return
                claimed[name].extend(lease.run_id for lease in leases)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claim_all, "one", one)
            nursery.start_soon(claim_all, "two", two)
        both = claimed["one"] + claimed["two"]
        assert sorted(both) == [f"r{n:02d}" for n in range(40)]  # each exactly once


async def test_a_fenced_write_after_a_takeover_is_refused(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:
        run = make(run_id="r1")
        await one.create(run, now=T0)
        (old,) = await one.claim("one", now=T0, ttl=10, workflows=None, limit=1)
        later = T0 + timedelta(seconds=11)  # the lease of "one" lapsed
        (new,) = await two.claim("two", now=later, ttl=10, workflows=None, limit=1)
        assert (old.epoch, new.epoch) == (1, 2)
        stale = attrs.evolve(run, status=Status.RUNNING, runtime_metadata={"by": "one"})
        with pytest.raises(LeaseLost) as info:
            await one.write(old, stale, now=later)
        assert (info.value.run_id, info.value.owner, info.value.epoch) == ("r1", "one", 1)
        assert await one.renew("one", [old], now=later, ttl=10) == []
        with pytest.raises(LeaseLost):
            await one.release(old, now=later, wake_at=None, seen=0)
        fresh = attrs.evolve(run, status=Status.RUNNING, runtime_metadata={"by": "two"})
        await two.write(new, fresh, now=later)
        assert await one.get("r1") == fresh


async def test_a_wakeup_added_through_another_object_reaches_the_owner(
    db_path: Path, make: Make
) -> None:
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:
        lease = await _owned(one, _parked(make(run_id="r1")), owner="one")
        recorded = await two.add_wakeup(_resume("r1"), now=T0)
        assert recorded is not None
        assert await one.owned_wakeups("one", after=0) == [("r1", recorded.seq)]
        assert await one.wakeups("r1") == [recorded]
        assert await two.claim("two", now=T0, ttl=30, workflows=None, limit=5) == []
        done = attrs.evolve(make(run_id="r1"), status=Status.COMPLETED)
        await one.write(lease, done, now=T0, consume=[recorded.seq])
        assert await two.wakeups("r1") == []


@pytest.mark.slow
async def test_wait_for_change_notices_another_objects_commit(db_path: Path, make: Make) -> None:
    poll = 0.05
    async with SQLiteStorage(db_path, poll_interval=poll) as one, SQLiteStorage(db_path) as two:
        await one.create(_parked(make(run_id="r1")), now=T0)
        seen = await one.wait_for_change(-1)
        await one.write(
            await _owned(one, make(run_id="r2")), make(run_id="r2", status=Status.RUNNING), now=T0
        )
        with trio.move_on_after(4 * poll) as idle:
            await one.wait_for_change(seen)
        assert idle.cancelled_caught  # only its own commits: it keeps waiting
        async with trio.open_nursery() as nursery:

            async def add_soon() -> None:
                await trio.sleep(poll / 2)
                await two.add_wakeup(_resume("r1"), now=T0)

            nursery.start_soon(add_soon)
            started = trio.current_time()
            with trio.fail_after(5):
                assert await one.wait_for_change(seen) != seen
            # Noticed at the first look after the commit (generous margin for slow machines).
            assert trio.current_time() - started < 20 * poll


# -- engines: lock files prove death ------------------------------------------------------

_DOOMED_ENGINE = """
import sys
from datetime import UTC, datetime
import trio
from hephaestus_trio import Instance, SQLiteStorage

async def main() -> None:
    storage = SQLiteStorage(sys.argv[1])
    await storage.open()
    now = datetime(2030, 1, 1, tzinfo=UTC)
    await storage.register_engine("doomed", now=now, info={"host": "h", "pid": 1})
    run = Instance.new("tests.Order", {}, id="orderid::d", run_id="held", now=now)
    await storage.create(run, now=now, owner="doomed", ttl=3600)
    print("ready", flush=True)
    await trio.sleep_forever()

trio.run(main)
"""


async def _start_doomed_engine(db_path: Path) -> trio.Process:
    process = await trio.lowlevel.open_process(
        [sys.executable, "-c", _DOOMED_ENGINE, os.fspath(db_path)], stdout=subprocess.PIPE
    )
    assert process.stdout is not None
    output = b""
    with trio.fail_after(30):
        while b"ready\n" not in output:
            chunk = await process.stdout.receive_some()
            assert chunk, "the engine process ended early"
            output += chunk
    return process


@pytest.mark.slow
@POSIX
async def test_a_killed_engine_is_reaped_and_a_live_one_is_not(db_path: Path, make: Make) -> None:
    locks = Path(f"{db_path}.engines")
    process = await _start_doomed_engine(db_path)
    async with SQLiteStorage(db_path) as reaper, SQLiteStorage(db_path) as neighbour:
        await reaper.register_engine("reaper", now=T0, info={})
        await neighbour.register_engine("neighbour", now=T0, info={})
        await _owned(neighbour, make("orderid::n", run_id="neighbours"), owner="neighbour")
        soon = T0 + timedelta(seconds=1)
        # The doomed engine is alive: nothing is reaped, its lease holds.
        assert await reaper.reap_engines(now=soon) == []
        assert await reaper.claim("reaper", now=soon, ttl=30, workflows=None, limit=9) == []

        process.kill()
        await process.wait()
        assert process.returncode == -signal.SIGKILL
        assert (locks / "doomed.lock").exists()  # SIGKILL left the file, but not its lock

        assert await reaper.reap_engines(now=soon) == ["doomed"]
        assert not (locks / "doomed.lock").exists()
        (lease,) = await reaper.claim("reaper", now=soon, ttl=30, workflows=None, limit=9)
        assert (lease.run_id, lease.epoch) == ("held", 2)
        # Engines of this process, on another storage object or this one, stay.
        assert await reaper.reap_engines(now=soon) == []
        assert sorted(p.name for p in locks.iterdir()) == ["neighbour.lock", "reaper.lock"]
        with closing(sqlite3.connect(db_path)) as conn:
            rows = conn.execute("SELECT engine_id FROM hephaestus_engines ORDER BY 1").fetchall()
        assert rows == [("neighbour",), ("reaper",)]


@POSIX
async def test_engine_registration_and_its_lock_file(db_path: Path, make: Make) -> None:
    locks = Path(f"{db_path}.engines")
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:
        await one.register_engine("e-1", now=T0, info={"host": "box", "pid": 42, "v": [1]})
        assert (locks / "e-1.lock").exists()
        with pytest.raises(StorageError, match="held by a live engine"):
            await two.register_engine("e-1", now=T0, info={})
        with pytest.raises(ValueError, match="engine id"):
            await two.register_engine("../escape", now=T0, info={})
        with closing(sqlite3.connect(db_path)) as conn:
            row = conn.execute(
                "SELECT engine_id, host, pid, started_at, info FROM hephaestus_engines"
            ).fetchone()
        assert row == ("e-1", "box", 42, timestamp(T0), '{"host":"box","pid":42,"v":[1]}')
        # A row whose lock file is missing is an engine that never got (or lost) its proof.
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute(
                "INSERT INTO hephaestus_engines VALUES ('ghost', NULL, NULL, ?, '{}', NULL)",
                (timestamp(T0),),
            )
            conn.commit()
        assert await two.reap_engines(now=T0) == ["ghost"]
        await one.unregister_engine("e-1")
        await one.unregister_engine("e-1")  # unknown: a no-op
        assert not (locks / "e-1.lock").exists()
        assert await two.reap_engines(now=T0) == []
        # Closing the storage releases its engines' locks: they are reapable.
        await one.register_engine("e-2", now=T0, info={})
    async with SQLiteStorage(db_path) as three:
        assert await three.reap_engines(now=T0) == ["e-2"]


# -- lifecycle -------------------------------------------------------------------------


async def test_unopened_and_closed_storage_refuses_work(db_path: Path, make: Make) -> None:
    storage = SQLiteStorage(db_path)
    lease = Lease(run_id="r1", owner="e1", epoch=1, expires_at=T0)
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: storage.get("r1"),
        lambda: storage.query(),
        lambda: storage.create(make(run_id="r2"), now=T0),
        lambda: storage.write(lease, make(run_id="r1"), now=T0),
        lambda: storage.delete("r1"),
        lambda: storage.purge(T0),
        lambda: storage.claim("e1", now=T0, ttl=1, workflows=None, limit=1),
        lambda: storage.claim("e1", now=T0, ttl=1, workflows=None, limit=0),
        lambda: storage.renew("e1", [lease], now=T0, ttl=1),
        lambda: storage.renew("e1", [], now=T0, ttl=1),
        lambda: storage.release(lease, now=T0, wake_at=None, seen=0),
        lambda: storage.release_all("e1", now=T0),
        lambda: storage.next_wake("e1", workflows=None),
        lambda: storage.register_engine("e9", now=T0, info={}),
        lambda: storage.unregister_engine("e9"),
        lambda: storage.reap_engines(now=T0),
        lambda: storage.add_wakeup(_resume("r1"), now=T0),
        lambda: storage.wakeups("r1"),
        lambda: storage.cancel_timer("r1", 1),
        lambda: storage.owned_wakeups("e1", after=0),
        lambda: storage.wait_for_change(0),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="not open") as info:
            await call()
        assert str(db_path) in str(info.value)
    async with storage:
        await storage.create(make(run_id="r1"), now=T0)
    for call in calls:
        with pytest.raises(StorageError, match="closed"):
            await call()
    async with storage:  # a closed storage may be opened again
        assert await storage.get("r1") is not None


async def test_naive_datetimes_are_refused(db_path: Path, make: Make) -> None:
    naive = datetime(2030, 1, 1)
    async with SQLiteStorage(db_path) as storage:
        with pytest.raises(ValueError, match="timezone-aware"):
            await storage.create(make(run_id="r1"), now=naive)
        with pytest.raises(ValueError, match="timezone-aware"):
            await storage.add_wakeup(_resume("r1", due_at=naive), now=T0)
        with pytest.raises(ValueError, match="timezone-aware"):
            await storage.purge(naive)


async def test_add_wakeup_refusals_are_enforced_by_the_schema(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.create(_parked(make(run_id="r1")), now=T0)
        await storage.add_wakeup(_resume("r1"), now=T0)
        with pytest.raises(WakeupRefused) as info:
            await storage.add_wakeup(_resume("r1"), now=T0)
        assert info.value.reason == "step_pending"
    with closing(sqlite3.connect(db_path)) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO hephaestus_wakeups (run_id, kind, step, event, due_at, created_at) "
            "VALUES ('r1', 'resume', 'wait', 'go', 'x', 'x')"
        )


# -- refusing files that are not ours ----------------------------------------------------


def _text_file(path: Path) -> None:
    path.write_text("these are my notes, not a database\n" * 50)


def _garbage_after_header(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 32)


def _corrupt(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    data = bytearray(path.read_bytes())
    data[100:4096] = b"\xa5" * (4096 - 100)  # the schema page, right after the header
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.execute("INSERT INTO users VALUES ('ada')")
        conn.commit()


def _foreign_application(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA application_id = 42")


def _foreign_with_our_table_names(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE hephaestus_runs (run_id TEXT)")
        conn.execute("CREATE TABLE hephaestus_resumes (seq INTEGER)")
        conn.execute("PRAGMA user_version = 1")


def _newer(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in schema.schema_statements():
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION + 1}")


def _damaged(path: Path) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")


BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "text file": (_text_file, "not a SQLite database"),
    "garbage after the header": (_garbage_after_header, "corrupt or not a SQLite database"),
    "corrupt schema page": (_corrupt, "corrupt"),
    "foreign database": (_foreign, "another application"),
    "foreign application_id": (_foreign_application, "another application"),
    "foreign with our table names": (_foreign_with_our_table_names, "another application"),
    "newer schema": (_newer, "newer than this release"),
    "damaged schema": (_damaged, "damaged"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
async def test_refuses_files_that_are_not_ours(db_path: Path, make: Make, kind: str) -> None:
    make_file, reason = BAD_FILES[kind]
    make_file(db_path)
    before = _snapshot(db_path.parent)
    storage = SQLiteStorage(db_path)
    with pytest.raises(StorageError, match=reason) as info:
        await storage.open()
    assert str(db_path) in str(info.value)
    assert "left unchanged" in str(info.value)
    assert _snapshot(db_path.parent) == before
    with pytest.raises(StorageError, match="not open"):
        await storage.create(make(run_id="r1"), now=T0)
    assert _snapshot(db_path.parent) == before


async def test_refuses_a_directory(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="directory") as info:
        await SQLiteStorage(tmp_path).open()
    assert str(tmp_path) in str(info.value)


async def test_reports_an_unreachable_path(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "app.db"
    with pytest.raises(StorageError, match="cannot open the database") as info:
        await SQLiteStorage(missing).open()
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("kind", ["zero bytes", "empty database"])
async def test_an_empty_file_gets_the_schema(db_path: Path, make: Make, kind: str) -> None:
    if kind == "zero bytes":
        db_path.write_bytes(b"")
    else:
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("VACUUM")  # writes a header, no tables
        assert db_path.stat().st_size > 0
    async with SQLiteStorage(db_path) as storage:
        await storage.create(make(run_id="r1"), now=T0)
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


# -- schema and migrations -------------------------------------------------------------


def test_migrations_from_empty_equal_schema_sql() -> None:
    with closing(sqlite3.connect(":memory:")) as migrated:
        for statement in schema.migration_statements(0):
            migrated.execute(statement)
        with closing(sqlite3.connect(":memory:")) as fresh:
            for statement in schema.schema_statements():
                fresh.execute(statement)
            assert _schema_objects(migrated) == _schema_objects(fresh)
            assert _schema_objects(fresh)  # not vacuously equal


async def test_a_created_database_equals_schema_sql(db_path: Path) -> None:
    async with SQLiteStorage(db_path):
        pass
    with closing(sqlite3.connect(":memory:")) as fresh:
        for statement in schema.schema_statements():
            fresh.execute(statement)
        with closing(sqlite3.connect(db_path)) as created:
            assert _schema_objects(created) == _schema_objects(fresh)


def test_migrations_are_numbered_from_one() -> None:
    versions = [m.version for m in schema.SQL.migrations]
    assert versions == list(range(1, schema.SCHEMA_VERSION + 1))
    assert schema.SQL.migrations[0].name == "0001_initial.sql"


async def test_an_older_database_is_migrated_on_open(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.create(make(run_id="r1"), now=T0)
    step = Migration(
        version=schema.SCHEMA_VERSION + 1,
        name="9999_test.sql",
        text="-- a test migration\nCREATE TABLE hephaestus_test_extra (x INTEGER);\n",
    )
    sql = attrs.evolve(schema.SQL, migrations=(*schema.SQL.migrations, step))
    monkeypatch.setattr(schema, "SQL", sql)
    monkeypatch.setattr(schema, "SCHEMA_VERSION", step.version)
    async with SQLiteStorage(db_path) as storage:
        assert await storage.get("r1") is not None
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == step.version
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert "hephaestus_test_extra" in names


def _v1_database(path: Path, runs: list[Instance], resumes: list[tuple[int, str, str]]) -> None:
    """A version-1 file, as release 1 wrote it: runs (timers in the document) and resumes."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for statement in schema.split_statements(schema.SQL.migrations[0].text):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
        for run in runs:
            conn.execute(
                "INSERT INTO hephaestus_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run.run_id,
                    run.id,
                    run.workflow,
                    run.workflow_version,
                    run.status.value,
                    run.unique_key,
                    timestamp(run.created_at),
                    timestamp(run.updated_at),
                    dumps(run),
                ),
            )
        for seq, run_id, step in [*resumes, (10, "r1", "gone")]:
            conn.execute(
                "INSERT INTO hephaestus_resumes VALUES (?, ?, ?, 'go', ?)",
                (seq, run_id, step, timestamp(T0)),
            )
        # The newest record was applied: the counter stays at 10 with no row there.
        conn.execute("DELETE FROM hephaestus_resumes WHERE seq = 10")


async def test_a_version_1_database_is_carried_over(db_path: Path, make: Make) -> None:
    early = TimerRecord(step="wait", event="late", fire_at=T0 + timedelta(seconds=5))
    odd = TimerRecord(step="wait", event="later", fire_at=T0 + timedelta(seconds=7.25))
    parked = attrs.evolve(
        _parked(make(run_id="r1", unique_key=KEY)),
        timers=(odd, early),
        updated_at=T0 + timedelta(minutes=2),
    )
    running = make("orderid::b", run_id="r2", status=Status.RUNNING, updated_at=T0)
    done = attrs.evolve(
        make("orderid::c", run_id="r3", status=Status.COMPLETED, unique_key=KEY), timers=(early,)
    )
    resumes = [(3, "r1", "wait"), (5, "r1", "wait"), (6, "r1", "other"), (7, "r3", "wait")]
    _v1_database(db_path, [parked, running, done], resumes)

    async with SQLiteStorage(db_path) as storage:
        wakeups = await storage.wakeups("r1")
        assert [(w.seq, w.kind, w.step, w.event) for w in wakeups] == [
            (3, WakeupKind.RESUME, "wait", "go"),  # seq 5 was a second resume of a parked step
            (6, WakeupKind.RESUME, "other", "go"),
            (11, WakeupKind.TIMER, "wait", "later"),  # above every seq release 1 handed out
            (12, WakeupKind.TIMER, "wait", "late"),
        ]
        assert [(w.due_at, w.created_at) for w in wakeups[:1]] == [(T0, T0)]
        assert [w.due_at for w in wakeups[2:]] == [odd.fire_at, early.fire_at]
        assert await storage.get("r1") == parked
        assert await storage.get("r3") == attrs.evolve(done, timers=())
        assert await storage.wakeups("r2") == await storage.wakeups("r3") == []
        # Live runs are unowned and claimable at once, earliest update first.
        assert await storage.next_wake("new", workflows=None) == T0
        leases = await storage.claim(
            "new", now=T0 + timedelta(minutes=5), ttl=30, workflows=None, limit=9
        )
        assert [(lease.run_id, lease.epoch) for lease in leases] == [("r2", 1), ("r1", 1)]
        recorded = await storage.add_wakeup(_resume("r2"), now=T0)
        assert recorded is not None
        assert recorded.seq == 13
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        documents = conn.execute("SELECT instance FROM hephaestus_runs").fetchall()
        assert [json.loads(text)["timers"] for (text,) in documents] == [[], [], []]
        with closing(sqlite3.connect(":memory:")) as fresh:
            for statement in schema.schema_statements():
                fresh.execute(statement)
            assert _schema_objects(conn) == _schema_objects(fresh)


async def test_an_empty_version_1_database_is_migrated(db_path: Path) -> None:
    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        for statement in schema.split_statements(schema.SQL.migrations[0].text):
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 1")
    async with SQLiteStorage(db_path) as storage:
        assert await storage.query() == []
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


# -- crash durability --------------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
import trio
from hephaestus_trio import Instance, SQLiteStorage
from hephaestus_trio.storage._protocol import NewWakeup, WakeupKind

async def main() -> None:
    storage = SQLiteStorage(sys.argv[1])
    await storage.open()
    now = datetime.now(UTC)
    run = Instance.new("tests.Order", {"n": 1}, id="orderid::a1", run_id="r1", now=now)
    await storage.create(run, now=now)
    wakeup = NewWakeup(run_id="r1", kind=WakeupKind.RESUME, step="wait", event="go", due_at=now)
    record = await storage.add_wakeup(wakeup, now=now)
    print(record.seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
"""


@pytest.mark.slow
@POSIX
async def test_acknowledged_writes_survive_sigkill(db_path: Path) -> None:
    done = await trio.run_process(
        [sys.executable, "-c", _KILLED_WRITER, os.fspath(db_path)],
        capture_stdout=True,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL
    seq = int(done.stdout.decode().strip())
    async with SQLiteStorage(db_path) as storage:
        run = await storage.get("r1")
        assert run is not None
        assert run.status is Status.PENDING
        assert [w.seq for w in await storage.wakeups("r1")] == [seq]
