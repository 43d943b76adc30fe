"""Test helpers for SQLite files: populated databases, and files this process may not write.

``populate`` creates the schema through ``SQLiteStorage.open`` and inserts runs
with plain ``sqlite3``, so it depends on no storage write method.

``Lockdown`` takes write (or read) permission away for real with ``chmod``.
Root ignores file modes, and CI runs the tests as root, so under root it also
makes the process see what a non-root process would: ``os.access`` answers as
the modes say, opening an unreadable file raises ``PermissionError``, and
``sqlite3.connect`` fails where SQLite would (a read-only open of a WAL
database in a read-only directory without its ``-shm`` file; any open of an
unreadable file). Everything else is real SQLite on real files, so the same
test body asserts the same behaviour as root and as any other user.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import stat
from collections.abc import Iterable
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from hephaestus_trio import Instance, SQLiteStorage, Status
from hephaestus_trio.serialization import dumps

from ._support import T0, make_instance

ROOT = os.geteuid() == 0
"""Whether file modes are lost on us (root): ``Lockdown`` then enforces them itself."""


def stamp(value: datetime) -> str:
    """The fixed-width UTC text the SQLite backend stores datetimes as."""
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def row(instance: Instance) -> tuple[Any, ...]:
    return (
        instance.run_id,
        instance.id,
        instance.workflow,
        instance.workflow_version,
        instance.status.value,
        instance.unique_key,
        stamp(instance.created_at),
        stamp(instance.updated_at),
        dumps(instance),
    )


INSERT = (
    "INSERT INTO hephaestus_runs (run_id, id, workflow, workflow_version, status, unique_key, "
    "created_at, updated_at, instance) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def runs(count: int, *, start: int = 0) -> list[Instance]:
    """``count`` distinct waiting runs, ``r<n>`` / ``orderid::o<n>``, created a second apart."""
    return [
        make_instance(
            id=f"orderid::o{n}",
            run_id=f"r{n}",
            status=Status.WAITING,
            created_at=T0 + timedelta(seconds=n),
        )
        for n in range(start, start + count)
    ]


def insert_runs(conn: sqlite3.Connection, instances: Iterable[Instance]) -> None:
    """Insert ``instances`` in one transaction on ``conn`` (autocommit mode)."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(INSERT, [row(i) for i in instances])
    conn.execute("COMMIT")


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)


async def populate(path: Path, instances: Iterable[Instance]) -> None:
    """A hephaestus-trio database at ``path`` (schema from ``open``) holding ``instances``."""
    async with SQLiteStorage(path):
        pass
    with closing(connect(path)) as conn:
        insert_runs(conn, instances)


def run_ids(path: Path) -> list[str]:
    """The run ids stored in ``path``, read with plain sqlite3 (read-only)."""
    with closing(sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)) as conn:
        return [r[0] for r in conn.execute("SELECT run_id FROM hephaestus_runs ORDER BY run_id")]


class Lockdown:
    """Takes permissions away from files and folders, restoring them at teardown."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._monkeypatch = monkeypatch
        self._modes: dict[Path, int] = {}
        self._read_only: set[Path] = set()
        self._unreadable: set[Path] = set()
        self._installed = False

    def read_only(self, folder: Path) -> None:
        """``folder`` and every file in it become read-only (0o555 / 0o444)."""
        for path in [*folder.iterdir(), folder]:
            self._chmod(path, 0o555 if path.is_dir() else 0o444)
            self._read_only.add(path.absolute())
        self._install()

    def unreadable(self, path: Path) -> None:
        """``path`` gets mode 000."""
        self._chmod(path, 0)
        self._unreadable.add(path.absolute())
        self._install()

    def restore(self) -> None:
        for path, mode in reversed(list(self._modes.items())):
            os.chmod(path, mode)
        self._modes.clear()

    def _chmod(self, path: Path, mode: int) -> None:
        self._modes.setdefault(path, stat.S_IMODE(path.stat().st_mode))
        os.chmod(path, mode)

    # -- what a non-root process would see, enforced for root --------------------------------

    def _install(self) -> None:
        if not ROOT or self._installed:
            return
        self._installed = True
        real_access, real_open, real_connect = os.access, builtins.open, sqlite3.connect

        def denied(path: Path, mode: int) -> bool:
            path = path.absolute()
            if path in self._unreadable:
                return True
            return bool(mode & os.W_OK) and path in self._read_only

        def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
            if isinstance(path, str | os.PathLike) and denied(Path(os.fsdecode(path)), mode):
                return False
            return real_access(path, mode, *args, **kwargs)

        def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, str | os.PathLike):
                writing = any(flag in mode for flag in "wax+")
                if denied(Path(os.fsdecode(file)), os.W_OK if writing else os.R_OK):
                    raise PermissionError(13, "Permission denied", os.fsdecode(file))
            return real_open(file, mode, *args, **kwargs)

        def connect_(target: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
            text = os.fsdecode(target) if isinstance(target, str | os.PathLike) else ""
            uri = kwargs.get("uri", False) and text.startswith("file:")
            path = Path(unquote(urlparse(text).path)) if uri else Path(text)
            query = urlparse(text).query if uri else ""
            if path.absolute() in self._unreadable:
                raise sqlite3.OperationalError("unable to open database file")
            folder = path.absolute().parent
            if (
                "mode=ro" in query
                and "immutable=1" not in query
                and folder in self._read_only
                and not Path(f"{path}-shm").exists()
            ):
                # SQLite cannot create the WAL index in a read-only folder.
                raise sqlite3.OperationalError("attempt to write a readonly database")
            return real_connect(target, *args, **kwargs)

        self._monkeypatch.setattr(os, "access", access)
        self._monkeypatch.setattr(builtins, "open", open_)
        self._monkeypatch.setattr(sqlite3, "connect", connect_)
