"""``backup_sqlite``: a consistent, self-contained copy of a live database, WAL included.

The fault: copying only ``app.db`` of a running (or killed) engine silently
loses acknowledged work still in ``app.db-wal``. These tests show that loss
with a plain file copy, and that the backup keeps it, also while another
connection keeps writing.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from hephaestus_trio import SQLiteStorage, StorageError
from hephaestus_trio.storage import _sqlite_schema as schema
from hephaestus_trio.storage._sqlite_backup import backup_sqlite

from ._files import Lockdown, connect, insert_runs, populate, run_ids, runs


@pytest.fixture
def lockdown(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lockdown]:
    locks = Lockdown(monkeypatch)
    try:
        yield locks
    finally:
        locks.restore()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """200 runs (a few hundred pages), closed cleanly."""
    path = tmp_path / "app.db"
    await populate(path, runs(200))
    return path


def journal_mode(path: Path) -> str:
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])


def files(folder: Path) -> list[str]:
    """The files of ``folder``, without the empty WAL files a read-only open may leave.

    SQLite creates ``-wal`` and ``-shm`` (the WAL index) for any reader of a WAL
    database, and a read-only connection cannot remove them again.
    """
    names = []
    for path in sorted(folder.iterdir()):
        if path.name.endswith("-shm") or (path.name.endswith("-wal") and not path.stat().st_size):
            continue
        names.append(path.name)
    return names


def page_count(path: Path) -> int:
    with closing(sqlite3.connect(path)) as conn:
        return int(conn.execute("PRAGMA page_count").fetchone()[0])


async def read_back(path: Path) -> list[str]:
    """The run ids of ``path`` as hephaestus-trio reads them (validating the file first)."""
    async with SQLiteStorage(path, read_only=True) as storage:
        return sorted(i.run_id for i in await storage.query())


# -- the copy ------------------------------------------------------------------------------


async def test_the_copy_is_a_self_contained_hephaestus_database(db: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy.db"
    backup_sqlite(db, dest)
    assert files(tmp_path) == ["app.db", "copy.db"]
    assert journal_mode(dest) == "delete"  # no -wal is needed beside it
    assert await read_back(dest) == sorted(f"r{n}" for n in range(200))
    with closing(sqlite3.connect(dest)) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == schema.APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # An engine may run on the copy: opened read-write it goes back to WAL.
    async with SQLiteStorage(dest):
        pass
    assert journal_mode(dest) == "wal"


async def test_progress_counts_pages_up_to_the_total(db: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    backup_sqlite(db, tmp_path / "copy.db", progress=lambda *a: calls.append(a), pages_per_step=7)
    total = page_count(db)
    assert total > 7 * 3
    assert calls[-1] == (total, total)
    assert len(calls) == -(-total // 7)  # one call per step
    copied = [c for c, _ in calls]
    assert copied == sorted(copied)
    assert all(t == total for _, t in calls)
    with pytest.raises(ValueError, match="at least 1"):
        backup_sqlite(db, tmp_path / "other.db", pages_per_step=0)


# -- what copying the .db alone loses ------------------------------------------------------


async def test_commits_still_in_the_wal_are_in_the_backup_not_in_a_file_copy(
    db: Path, tmp_path: Path
) -> None:
    with closing(connect(db)) as writer:
        # An engine between checkpoints (or killed): its latest commits are only in the -wal.
        writer.execute("PRAGMA wal_autocheckpoint=0")
        insert_runs(writer, runs(50, start=200))
        assert os.path.getsize(f"{db}-wal") > 0
        everything = sorted(f"r{n}" for n in range(250))
        assert run_ids(db) == everything

        naive = tmp_path / "naive" / "app.db"
        naive.parent.mkdir()
        shutil.copyfile(db, naive)  # what `cp app.db` does
        lost = set(everything) - set(run_ids(naive))
        assert lost == {f"r{n}" for n in range(200, 250)}  # acknowledged, yet gone

        dest = tmp_path / "backup.db"
        backup_sqlite(db, dest)
    assert await read_back(dest) == everything
    assert not Path(f"{dest}-wal").exists()


async def test_backup_while_another_connection_keeps_writing(db: Path, tmp_path: Path) -> None:
    committed: list[str] = []
    started = threading.Event()
    stop = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            with closing(connect(db)) as writer:
                n = 1000
                while not stop.is_set():
                    insert_runs(writer, runs(1, start=n))
                    committed.append(f"r{n}")
                    n += 1
                    if n == 1020:
                        started.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)
            started.set()

    thread = threading.Thread(target=write)
    thread.start()
    try:
        assert started.wait(10)
        before = {f"r{n}" for n in range(200)} | set(committed)
        steps: list[int] = []
        marks: list[int] = []

        def progress(done: int, total: int) -> None:
            if not steps:
                # The snapshot is taken by now. Let the writer commit more while the
                # copy is under way: every row it lists from mark + 1 on was
                # committed after this point (at most one commit is in flight).
                marks.append(len(committed))
                for _ in range(1000):
                    if len(committed) >= marks[0] + 6 or errors:
                        break
                    threading.Event().wait(0.01)
            steps.append(done)

        dest = tmp_path / "live.db"
        backup_sqlite(db, dest, pages_per_step=2, progress=progress)
    finally:
        stop.set()
        thread.join(10)
    assert not errors
    copy = set(await read_back(dest))
    assert before <= copy  # everything committed before the backup started
    later = committed[marks[0] + 1 :]
    assert len(later) >= 5  # the writer really committed while the copy ran...
    assert not set(later) & copy  # ...and the copy is the snapshot from its start
    new_in_copy = copy - {f"r{n}" for n in range(200)}
    assert new_in_copy == set(committed[: len(new_in_copy)])  # a prefix: one instant
    assert steps == sorted(steps)  # never restarted
    with closing(sqlite3.connect(dest)) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- refusals ------------------------------------------------------------------------------


async def test_an_existing_destination_is_refused_unless_overwrite(
    db: Path, tmp_path: Path
) -> None:
    dest = tmp_path / "copy.db"
    dest.write_bytes(b"precious")
    with pytest.raises(StorageError, match="destination exists; refusing to overwrite") as info:
        backup_sqlite(db, dest)
    assert str(dest) in str(info.value)
    assert dest.read_bytes() == b"precious"
    # A stale -wal of the old file would be replayed onto the copy: it goes too.
    Path(f"{dest}-wal").write_bytes(b"stale wal")
    backup_sqlite(db, dest, overwrite=True)
    assert not Path(f"{dest}-wal").exists()
    assert await read_back(dest) == sorted(f"r{n}" for n in range(200))


async def test_an_orphan_wal_at_the_destination_is_refused(db: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy.db"
    Path(f"{dest}-wal").write_bytes(b"orphan")
    with pytest.raises(StorageError, match="-wal' exists"):
        backup_sqlite(db, dest)
    assert not dest.exists()


async def test_the_source_itself_is_refused_even_with_overwrite(db: Path) -> None:
    before = db.read_bytes()
    with pytest.raises(StorageError, match="the source itself"):
        backup_sqlite(db, db, overwrite=True)
    assert db.read_bytes() == before


async def test_sources_that_are_not_ours_are_refused(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="no such file"):
        backup_sqlite(missing, tmp_path / "a.db")
    assert not missing.exists()
    foreign = tmp_path / "foreign.db"
    with closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
        conn.commit()
    with pytest.raises(StorageError, match="another application"):
        backup_sqlite(foreign, tmp_path / "b.db")
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    with pytest.raises(StorageError, match="empty database"):
        backup_sqlite(empty, tmp_path / "c.db")
    text = tmp_path / "notes.db"
    text.write_text("not a database\n" * 40)
    with pytest.raises(StorageError, match="not a SQLite database"):
        backup_sqlite(text, tmp_path / "d.db")
    assert files(tmp_path) == ["empty.db", "foreign.db", "notes.db"]


async def test_a_missing_destination_directory_is_refused(db: Path, tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        backup_sqlite(db, tmp_path / "no" / "such" / "copy.db")


async def test_a_failed_backup_leaves_nothing_behind(db: Path, tmp_path: Path) -> None:
    def explode(copied: int, total: int) -> None:
        if copied > 10:
            raise RuntimeError("disk pulled out")

    with pytest.raises(RuntimeError, match="disk pulled out"):
        backup_sqlite(db, tmp_path / "copy.db", progress=explode, pages_per_step=5)
    assert files(tmp_path) == ["app.db"]


async def test_a_source_on_read_only_media_is_backed_up(
    db: Path, tmp_path: Path, lockdown: Lockdown
) -> None:
    source = tmp_path / "ro" / "app.db"
    source.parent.mkdir()
    shutil.copyfile(db, source)
    lockdown.read_only(source.parent)
    dest = tmp_path / "copy.db"
    backup_sqlite(source, dest)
    assert await read_back(dest) == sorted(f"r{n}" for n in range(200))
    assert sorted(p.name for p in source.parent.iterdir()) == ["app.db"]  # nothing written
