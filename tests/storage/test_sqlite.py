"""SQLite-specific behaviour: WAL, grouped commits, refusing foreign files, migrations.

The shared behaviour is in ``test_conformance.py``; this file checks what only
the SQLite backend promises. Some tests hold the first batch inside the worker
thread (``Gate``) so that the content of the next batch is deterministic.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from hephaestus_trio import Instance, SQLiteStorage, Status, StorageError
from hephaestus_trio.storage import UniqueViolation
from hephaestus_trio.storage import _sqlite_schema as schema
from hephaestus_trio.storage._queries import Migration

from ._support import T0

Make = Callable[..., Instance]
KEY = "tests.Order::orderid::a1"


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
    return sorted((t, n, tbl, " ".join(sql.split())) for t, n, tbl, sql in rows)


# -- pragmas ------------------------------------------------------------------


async def test_wal_mode_full_sync_and_markers(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.put(make(run_id="r1"))
        assert storage._writer is not None
        assert storage._writer.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        with closing(sqlite3.connect(db_path)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
            assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID


async def test_storage_path_and_repr(db_path: Path) -> None:
    storage = SQLiteStorage(db_path)
    assert storage.path == str(db_path)
    assert repr(storage) == f"SQLiteStorage({str(db_path)!r})"
    assert storage.durable is True


# -- grouped commits ------------------------------------------------------------


async def test_concurrent_writes_share_transactions(db_path: Path, make: Make) -> None:
    async with SQLiteStorage(db_path) as storage:
        commits, writes = storage._commit_count, storage._write_count
        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(storage.put, make(f"orderid::n{n}", run_id=f"r{n:02d}"))
        assert storage._write_count - writes == 50
        assert 1 <= storage._commit_count - commits < 50
        assert len(await storage.query()) == 50


async def test_writes_arriving_during_a_commit_form_the_next_batch(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.put, make(run_id="plug"))
            await gate.wait_entered()
            for n in range(20):
                nursery.start_soon(storage.put, make(run_id=f"r{n:02d}"))
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert gate.sizes == [1, 20]
        assert len(await storage.query()) == 21


async def test_batches_are_bounded(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.put, make(run_id="plug"))
            await gate.wait_entered()
            for n in range(1200):
                nursery.start_soon(storage.delete_resume, n)
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()
        assert gate.sizes == [1, 500, 500, 200]


async def test_a_unique_violation_in_a_batch_keeps_the_other_writes(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        await storage.put(make(run_id="holder", status=Status.WAITING, unique_key=KEY))
        doomed = await storage.add_resume("old", "wait", "go", T0)
        gate = Gate(storage, monkeypatch)
        outcomes: dict[str, object] = {}

        async def attempt(name: str, write: Callable[[], object]) -> None:
            try:
                outcomes[name] = await write()  # type: ignore[misc]
            except UniqueViolation as exc:
                outcomes[name] = exc

        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.put, make(run_id="plug"))
            await gate.wait_entered()
            for n in range(10):
                run = make(f"orderid::n{n}", run_id=f"r{n}", unique_key=f"key{n}")
                nursery.start_soon(attempt, f"r{n}", lambda run=run: storage.put(run))
            loser = make(run_id="loser", unique_key=KEY)
            nursery.start_soon(attempt, "loser", lambda: storage.put(loser))
            nursery.start_soon(
                attempt, "resume", lambda: storage.add_resume("r1", "wait", "go", T0)
            )
            nursery.start_soon(attempt, "drop", lambda: storage.delete_resume(doomed.seq))
            await trio.testing.wait_all_tasks_blocked()
            gate.release.set()

        assert gate.sizes == [1, 13]
        violation = outcomes["loser"]
        assert isinstance(violation, UniqueViolation)
        assert violation.existing_run_id == "holder"
        assert await storage.get("loser") is None
        assert {i.run_id for i in await storage.query()} == {
            "holder",
            "plug",
            *(f"r{n}" for n in range(10)),
        }
        assert await storage.pending_resumes() == [outcomes["resume"]]


async def test_two_new_runs_with_one_key_in_one_batch(
    db_path: Path, make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with SQLiteStorage(db_path) as storage:
        gate = Gate(storage, monkeypatch)
        results: list[object] = []

        async def start(run_id: str) -> None:
            try:
                await storage.put(make(run_id=run_id, unique_key=KEY))
                results.append(run_id)
            except UniqueViolation as exc:
                results.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(storage.put, make(run_id="plug"))
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
            nursery.start_soon(storage.put, make(run_id="plug"))
            await gate.wait_entered()
            with trio.CancelScope() as scope:
                nursery.start_soon(storage.put, make(run_id="kept"))
                scope.cancel()
                await storage.put(make(run_id="cancelled"))
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
                await storage.put(make(run_id="leader"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leader)
            await trio.testing.wait_all_tasks_blocked()
            assert storage._flushing
            for name in ("b", "c"):
                nursery.start_soon(storage.put, make(run_id=name))
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
        nursery.start_soon(storage.put, make(run_id="plug"))
        await gate.wait_entered()
        for n in range(5):
            nursery.start_soon(storage.put, make(run_id=f"r{n}"))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(storage.close)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(StorageError, match="is closed"):
            await storage.put(make(run_id="too-late"))
        gate.release.set()
    async with SQLiteStorage(db_path) as reopened:
        assert len(await reopened.query()) == 6


# -- lifecycle -------------------------------------------------------------------------


async def test_unopened_and_closed_storage_refuses_work(db_path: Path, make: Make) -> None:
    storage = SQLiteStorage(db_path)
    calls = [
        lambda: storage.get("r1"),
        lambda: storage.put(make(run_id="r1")),
        lambda: storage.delete("r1"),
        lambda: storage.query(),
        lambda: storage.add_resume("r1", "wait", "go", T0),
        lambda: storage.pending_resumes(),
        lambda: storage.delete_resume(1),
        lambda: storage.purge(T0),
    ]
    for call in calls:
        with pytest.raises(StorageError, match="not open") as info:
            await call()
        assert str(db_path) in str(info.value)
    async with storage:
        await storage.put(make(run_id="r1"))
    for call in calls:
        with pytest.raises(StorageError, match="closed"):
            await call()
    async with storage:  # a closed storage may be opened again
        assert await storage.get("r1") is not None


async def test_naive_datetimes_are_refused(db_path: Path) -> None:
    from datetime import datetime

    async with SQLiteStorage(db_path) as storage:
        with pytest.raises(ValueError, match="timezone-aware"):
            await storage.add_resume("r1", "wait", "go", datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="timezone-aware"):
            await storage.purge(datetime(2030, 1, 1))


async def test_two_storages_on_one_file_share_uniqueness(db_path: Path, make: Make) -> None:
    winners: list[str] = []
    async with SQLiteStorage(db_path) as one, SQLiteStorage(db_path) as two:

        async def start(storage: SQLiteStorage, run_id: str) -> None:
            try:
                await storage.put(make(run_id=run_id, unique_key=KEY))
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
        await storage.put(make(run_id="r1"))
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
        await storage.put(make(run_id="r1"))
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
        await storage.put(make(run_id="r1"))
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


# -- crash durability --------------------------------------------------------------------

_KILLED_WRITER = """
import os, signal, sys
from datetime import UTC, datetime
import trio
from hephaestus_trio import Instance, SQLiteStorage, Status

async def main() -> None:
    storage = SQLiteStorage(sys.argv[1])
    await storage.open()
    run = Instance.new("tests.Order", {"n": 1}, id="orderid::a1", run_id="r1")
    await storage.put(run)
    record = await storage.add_resume("r1", "wait", "go", datetime.now(UTC))
    print(record.seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
"""


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX")
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
        assert [r.seq for r in await storage.pending_resumes("r1")] == [seq]
