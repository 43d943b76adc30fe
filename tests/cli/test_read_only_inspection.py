"""``list`` and ``show`` open SQLite read-only: they work on read-only media and never write.

Before, a valid database in a read-only folder was reported as "corrupt".
Permissions are taken away with ``chmod``; root (CI) ignores file modes, so
under root ``read_only_folder`` also makes the process see them as any other
user would: ``os.access`` answers as the modes say, and SQLite's read-only open
of a WAL database whose ``-shm`` it cannot create fails as SQLite fails it.
Everything else is real SQLite on real files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import trio

from hephaestus_trio import Instance, SQLiteStorage, engine
from hephaestus_trio.cli import main
from hephaestus_trio.serialization import dumps

from .flows import Approval

ROOT = os.geteuid() == 0


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _stamp(instance: Instance, field: str) -> str:
    value = getattr(instance, field).astimezone(UTC).replace(tzinfo=None)
    return str(value.isoformat(timespec="microseconds")) + "Z"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Two Approval runs (advanced into their first step), alone in their folder.

    The schema comes from ``SQLiteStorage.open``; the rows are inserted with
    plain sqlite3, as the engine would have written them.
    """
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "cli.db"

    async def create() -> None:
        async with SQLiteStorage(path):
            pass

    trio.run(create)
    rows = []
    for value in ("a1", "a2"):
        instance = engine.advance(
            Instance.new(Approval, {"n": value}, id=f"approval::{value}"), workflow=Approval
        )
        rows.append(
            (
                instance.run_id,
                instance.id,
                instance.workflow,
                instance.workflow_version,
                instance.status.value,
                instance.unique_key,
                _stamp(instance, "created_at"),
                _stamp(instance, "updated_at"),
                dumps(instance),
            )
        )
    with closing(sqlite3.connect(path)) as conn, conn:
        conn.executemany(
            "INSERT INTO hephaestus_runs (run_id, id, workflow, workflow_version, status, "
            "unique_key, created_at, updated_at, instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    assert sorted(p.name for p in folder.iterdir()) == ["cli.db"]
    return path


@pytest.fixture
def read_only_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make a folder and its files read-only (0o555 / 0o444) for this process."""
    modes: dict[Path, int] = {}
    protected: set[Path] = set()

    def protect(folder: Path) -> None:
        for path in [*folder.iterdir(), folder]:
            modes[path] = stat.S_IMODE(path.stat().st_mode)
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
            protected.add(path.absolute())
        if not ROOT:
            return
        real_access, real_connect = os.access, sqlite3.connect

        def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
            if mode & os.W_OK and Path(os.fsdecode(path)).absolute() in protected:
                return False
            return real_access(path, mode, *args, **kwargs)

        def connect(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            parsed = urlparse(str(target)) if kwargs.get("uri") else None
            if parsed is not None and "mode=ro" in parsed.query:
                path = Path(unquote(parsed.path))
                if (
                    "immutable=1" not in parsed.query
                    and path.parent in protected
                    and not Path(f"{path}-shm").exists()
                ):
                    raise sqlite3.OperationalError("attempt to write a readonly database")
            return real_connect(target, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
        monkeypatch.setattr(sqlite3, "connect", connect)

    try:
        yield protect
    finally:
        for path, mode in reversed(list(modes.items())):
            os.chmod(path, mode)


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def test_list_and_show_work_in_a_read_only_folder(
    capsys: pytest.CaptureFixture[str], db: Path, read_only_folder: Callable[[Path], None]
) -> None:
    read_only_folder(db.parent)
    before = db.read_bytes()
    code, out, err = run_cli(capsys, "list", "--storage", url(db))
    assert (code, err) == (0, "")
    assert "approval::a1" in out
    assert "approval::a2" in out
    assert "2 run(s)" in out
    code, out, err = run_cli(capsys, "show", "approval::a1", "--storage", url(db))
    assert (code, err) == (0, "")
    assert "status:     running" in out
    assert "running:    prepare" in out
    code, out, _ = run_cli(capsys, "list", "--storage", url(db), "--json")
    assert code == 0
    listed = json.loads(out)["runs"]
    assert sorted(item["id"] for item in listed) == ["approval::a1", "approval::a2"]
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["cli.db"]


def test_list_and_show_never_write_a_writable_database(
    capsys: pytest.CaptureFixture[str], db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[SQLiteStorage] = []
    real_open = SQLiteStorage.open

    async def record(self: SQLiteStorage) -> None:
        opened.append(self)
        await real_open(self)

    monkeypatch.setattr(SQLiteStorage, "open", record)
    before = db.read_bytes()
    assert run_cli(capsys, "list", "--storage", url(db))[0] == 0
    assert run_cli(capsys, "show", "approval::a2", "--storage", url(db))[0] == 0
    assert [s.read_only for s in opened] == [True, True]
    assert db.read_bytes() == before


def test_cancel_in_a_read_only_folder_is_a_one_line_storage_error(
    capsys: pytest.CaptureFixture[str], db: Path, read_only_folder: Callable[[Path], None]
) -> None:
    read_only_folder(db.parent)
    code, _, err = run_cli(capsys, "cancel", "approval::a1", "--storage", url(db))
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert str(db) in err
    assert "ermission denied" in err
