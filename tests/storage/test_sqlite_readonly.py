"""``SQLiteStorage(read_only=True)``, and files this process may not read or write.

Randomized fault injection found that a database on read-only media, or
without permission, failed to open with a raw ``OSError``/``sqlite3`` error or
was called "corrupt". Every such failure is now a ``StorageError`` naming the
file and the cause, and ``read_only=True`` reads such a file without writing.
Permissions are taken away for real; under root (CI) ``Lockdown`` makes the
process see them as any other user would (see ``_files.py``).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import pytest

from hephaestus_trio import SQLiteStorage, StorageError
from hephaestus_trio.storage import _sqlite_access
from hephaestus_trio.storage import _sqlite_schema as schema

from ._files import ROOT, Lockdown, connect, insert_runs, populate, run_ids, runs
from ._support import T0


@pytest.fixture
def lockdown(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lockdown]:
    locks = Lockdown(monkeypatch)
    try:
        yield locks
    finally:
        locks.restore()


@pytest.fixture
async def db(tmp_path: Path) -> Path:
    """Three runs in a database alone in its folder (closed cleanly: no -wal, no -shm)."""
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "app.db"
    await populate(path, runs(3))
    assert sorted(p.name for p in folder.iterdir()) == ["app.db"]
    return path


async def read_all(storage: SQLiteStorage) -> list[str]:
    return [i.run_id for i in await storage.query()]


# -- reading -------------------------------------------------------------------------------


async def test_read_only_reads_without_writing_the_file(db: Path) -> None:
    before = db.read_bytes()
    async with SQLiteStorage(db, read_only=True) as storage:
        assert storage.read_only
        assert await read_all(storage) == ["r0", "r1", "r2"]
        found = await storage.get("r1")
        assert found is not None
        assert found.id == "orderid::o1"
        assert await storage.query(id="orderid::o2") != []
        assert not storage._immutable  # the folder is writable: a plain mode=ro open
    assert db.read_bytes() == before
    assert repr(SQLiteStorage(db, read_only=True)) == f"SQLiteStorage({str(db)!r}, read_only=True)"


async def test_read_only_sees_commits_still_in_the_wal(db: Path) -> None:
    with closing(connect(db)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        insert_runs(writer, runs(2, start=3))
        assert os.path.getsize(f"{db}-wal") > 0
        async with SQLiteStorage(db, read_only=True) as storage:
            assert await read_all(storage) == ["r0", "r1", "r2", "r3", "r4"]


async def test_a_path_needing_uri_quoting_opens(tmp_path: Path) -> None:
    path = tmp_path / "odd ?name#with%25 chars.db"
    await populate(path, runs(1))
    async with SQLiteStorage(path, read_only=True) as storage:
        assert await read_all(storage) == ["r0"]
    uri = _sqlite_access.read_only_target(str(path))
    assert uri.startswith("file:///")
    assert uri.endswith("?mode=ro")
    assert "%3F" in uri
    assert "%23" in uri
    assert "%2525" in uri
    assert "%20" in uri


# -- never writing -------------------------------------------------------------------------


async def test_every_write_is_refused(db: Path) -> None:
    before = db.read_bytes()
    async with SQLiteStorage(db, read_only=True) as storage:
        with pytest.raises(StorageError, match="is open read-only") as info:
            await storage.delete("r1")
        assert str(db) in str(info.value)
        with pytest.raises(StorageError, match="is open read-only"):
            await storage.purge(T0 + timedelta(days=1))
        # Even past the storage's own checks, neither connection can write...
        for conn in (storage._writer, storage._reader):
            assert conn is not None
            with pytest.raises(sqlite3.OperationalError):
                conn.execute("DELETE FROM hephaestus_runs")
        # ...and SQLite's refusal is reported as the storage being read-only.
        refusal = sqlite3.OperationalError("attempt to write a readonly database")
        error = storage._error("write failed", refusal)
        assert "is open read-only" in str(error)
        assert await read_all(storage) == ["r0", "r1", "r2"]
    assert db.read_bytes() == before


async def test_a_missing_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    with pytest.raises(StorageError, match="read-only: no such file") as info:
        await SQLiteStorage(path, read_only=True).open()
    assert str(path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["zero bytes", "empty database"])
async def test_an_empty_database_is_refused_not_created(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "empty.db"
    if kind == "zero bytes":
        path.write_bytes(b"")
    else:
        with closing(sqlite3.connect(path)) as conn:
            conn.execute("VACUUM")
    before = path.read_bytes()
    with pytest.raises(StorageError, match="no hephaestus-trio schema yet.*read-write once"):
        await SQLiteStorage(path, read_only=True).open()
    assert path.read_bytes() == before


async def test_an_older_schema_is_refused_not_migrated(
    db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a newer release would see this file: its schema is one version behind.
    monkeypatch.setattr(_sqlite_access, "SCHEMA_VERSION", schema.SCHEMA_VERSION + 1)
    before = db.read_bytes()
    with pytest.raises(StorageError) as info:
        await SQLiteStorage(db, read_only=True).open()
    message = str(info.value)
    assert f"schema version {schema.SCHEMA_VERSION} is older" in message
    assert "open it once read-write" in message
    assert str(db) in message
    assert db.read_bytes() == before
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"these are my notes\n" * 50, "not a SQLite database"),
        (b"SQLite format 3\x00" + bytes(range(256)) * 32, "corrupt or not a SQLite database"),
    ],
)
async def test_foreign_files_are_refused_read_only_too(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(StorageError, match=reason):
        await SQLiteStorage(path, read_only=True).open()
    assert path.read_bytes() == content


# -- read-only media and permissions ---------------------------------------------------------


async def test_a_read_only_folder_is_read_with_read_only(db: Path, lockdown: Lockdown) -> None:
    lockdown.read_only(db.parent)
    async with SQLiteStorage(db, read_only=True) as storage:
        assert await read_all(storage) == ["r0", "r1", "r2"]
        # No -shm and no way to create one: the fallback that only a file nobody
        # can write allows.
        assert storage._immutable
        with pytest.raises(StorageError, match="is open read-only"):
            await storage.delete("r0")
    assert sorted(p.name for p in db.parent.iterdir()) == ["app.db"]


async def test_a_read_only_file_is_refused_read_write_naming_it(
    db: Path, lockdown: Lockdown
) -> None:
    lockdown.read_only(db.parent)
    storage = SQLiteStorage(db)
    with pytest.raises(StorageError) as info:
        await storage.open()
    message = str(info.value)
    assert str(db) in message
    assert "permission denied: the file is not writable" in message
    assert "read_only=True" in message
    with pytest.raises(StorageError, match="not open"):
        await storage.get("r0")


async def test_a_killed_engines_wal_and_shm_are_read_in_a_read_only_folder(
    db: Path, tmp_path: Path, lockdown: Lockdown
) -> None:
    # What a SIGKILLed engine leaves: the .db, a -wal holding commits, a -shm.
    copy = tmp_path / "killed"
    copy.mkdir()
    with closing(connect(db)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        insert_runs(writer, runs(1, start=3))
        for suffix in ("", "-wal", "-shm"):
            (copy / f"app.db{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    lockdown.read_only(copy)
    async with SQLiteStorage(copy / "app.db", read_only=True) as storage:
        assert not storage._immutable
        assert await read_all(storage) == ["r0", "r1", "r2", "r3"]


async def test_commits_only_in_a_wal_without_shm_are_not_silently_skipped(
    db: Path, tmp_path: Path, lockdown: Lockdown
) -> None:
    # The .db and its -wal copied without the -shm, into a read-only folder: an
    # immutable open would read the .db alone and miss r3, so it is refused.
    copy = tmp_path / "no-shm"
    copy.mkdir()
    with closing(connect(db)) as writer:
        writer.execute("PRAGMA wal_autocheckpoint=0")
        insert_runs(writer, runs(1, start=3))
        for suffix in ("", "-wal"):
            (copy / f"app.db{suffix}").write_bytes(Path(f"{db}{suffix}").read_bytes())
    lockdown.read_only(copy)
    with pytest.raises(StorageError) as info:
        await SQLiteStorage(copy / "app.db", read_only=True).open()
    message = str(info.value)
    assert str(copy / "app.db") in message
    assert "-wal file holds commits not yet in the database file" in message
    assert "corrupt" not in message


async def test_an_unreadable_file_is_a_storage_error_naming_it(
    db: Path, lockdown: Lockdown
) -> None:
    lockdown.unreadable(db)
    for read_only in (False, True):
        with pytest.raises(StorageError) as info:
            await SQLiteStorage(db, read_only=read_only).open()
        message = str(info.value)
        assert str(db) in message
        assert "permission denied" in message.lower()
        assert "corrupt" not in message


async def test_sqlite_refusing_an_unreadable_file_is_named_too(
    db: Path, lockdown: Lockdown, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The header check raced past (the mode changed after it): SQLite's own
    # "unable to open" is still reported as permission denied, not corruption.
    lockdown.unreadable(db)
    monkeypatch.setattr("hephaestus_trio.storage._sqlite.check_header", lambda path: None)
    for read_only in (False, True):
        with pytest.raises(StorageError) as info:
            await SQLiteStorage(db, read_only=read_only).open()
        message = str(info.value)
        assert str(db) in message
        assert "permission denied: the file is not readable" in message


async def test_a_read_only_folder_is_named_when_sqlite_must_create_files(
    tmp_path: Path, lockdown: Lockdown, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    lockdown.read_only(folder)
    path = folder / "new.db"
    if ROOT:
        # Root may create the file anyway: SQLite's answer to anyone else.
        real_connect = sqlite3.connect

        def refuse(target: object, *args: object, **kwargs: object) -> sqlite3.Connection:
            if str(target) == str(path):
                raise sqlite3.OperationalError("unable to open database file")
            return real_connect(target, *args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(sqlite3, "connect", refuse)
    with pytest.raises(StorageError) as info:
        await SQLiteStorage(path).open()
    assert str(path) in str(info.value)
    assert "permission denied: cannot create the file" in str(info.value)
    assert not path.exists()


def _dir_not_writable(db: Path) -> Callable[..., bool]:
    def access(path: object, mode: int, **kwargs: object) -> bool:
        return not (mode & os.W_OK and Path(str(path)) == db.parent)

    return access


@pytest.mark.parametrize(
    ("error", "folder_writable", "cause"),
    [
        (
            sqlite3.OperationalError("attempt to write a readonly database"),
            False,
            "permission denied: its directory",
        ),
        (sqlite3.OperationalError("unable to open database file"), True, "permission denied ("),
        (PermissionError(13, "Permission denied"), True, "permission denied (Permission denied)"),
        (OSError(30, "Read-only file system"), True, "cannot open the database: Read-only file"),
        (sqlite3.OperationalError("disk I/O error"), True, "cannot open the database: disk I/O"),
    ],
)
async def test_errors_from_connecting_are_translated(
    db: Path,
    monkeypatch: pytest.MonkeyPatch,
    error: Exception,
    folder_writable: bool,
    cause: str,
) -> None:
    # Whatever the driver raises while connecting comes out as one StorageError.
    def fail(*args: object, **kwargs: object) -> sqlite3.Connection:
        raise error

    if not folder_writable:
        monkeypatch.setattr(os, "access", _dir_not_writable(db))
    monkeypatch.setattr(sqlite3, "connect", fail)
    with pytest.raises(StorageError) as info:
        await SQLiteStorage(db).open()
    assert str(db) in str(info.value)
    assert cause in str(info.value)
    monkeypatch.undo()
    assert run_ids(db) == ["r0", "r1", "r2"]
