"""``backup_sqlite``: a consistent, self-contained copy of a live SQLite database.

Copying ``app.db`` with ``cp`` is not a backup: in WAL mode the latest
committed transactions may live only in ``app.db-wal`` until a checkpoint
moves them into ``app.db`` (``docs/durability.md``, "Backups"). This module
uses SQLite's online backup API instead, which reads the database through
SQLite, WAL included, while engines keep running.

How (all blocking; call it from a thread or a command):

- **A snapshot.** The source is opened read-only (``mode=ro``, so the backup
  never writes it) and a read transaction is held for the whole copy. In WAL
  mode that does not block writers, and the copy is exactly the database as
  committed when the backup started: incremental steps never restart because
  of a concurrent writer (they would without the transaction, and a busy
  database could then starve the backup).
- **Steps, with progress.** ``pages_per_step`` pages per step;
  ``progress(copied, total)`` is called after each step.
- **Self-contained.** The copy is switched to ``journal_mode=DELETE`` (the
  backup copies the WAL flag of the source header), checked with
  ``PRAGMA quick_check``, fsynced, and only then renamed onto ``dest``: no
  ``-wal`` is needed beside it, and a failed backup leaves nothing at ``dest``.
  Opening the copy read-write (an engine) switches it back to WAL.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable

from .._errors import StorageError
from ._sqlite_access import connect_read_only, open_error, read_only_target
from ._sqlite_schema import check_header, inspect

__all__ = ["DEFAULT_PAGES_PER_STEP", "backup_sqlite"]

DEFAULT_PAGES_PER_STEP = 1024
"""Pages copied per step: 4 MiB with SQLite's default 4 KiB pages."""


def backup_sqlite(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str],
    *,
    progress: Callable[[int, int], None] | None = None,
    pages_per_step: int = DEFAULT_PAGES_PER_STEP,
    overwrite: bool = False,
) -> None:
    """Copy the hephaestus-trio database ``source`` to the new file ``dest``, safely while in use.

    The copy holds every transaction committed before the call (the WAL
    included), is consistent, and needs no ``-wal`` file. Writers on
    ``source`` are not blocked; their commits after the start are not in it.

    Synopsis::

        backup_sqlite("app.db", "app-backup.db", progress=lambda done, total: ...)

    Args:
        progress: called with ``(pages copied, total pages)`` after every step.
        pages_per_step: pages per step (at least 1).
        overwrite: replace an existing ``dest`` (and its stale ``-wal``/``-shm``).

    Raises:
        StorageError: ``source`` is missing, unreadable or not a hephaestus-trio
            database; ``dest`` exists (without ``overwrite``), is ``source``, or
            cannot be written; the copy failed (``dest`` is then untouched).
        ValueError: ``pages_per_step`` is below 1.
    """
    if pages_per_step < 1:
        raise ValueError(f"pages_per_step must be at least 1, got {pages_per_step!r}")
    source, dest = os.fspath(source), os.fspath(dest)
    _check_dest(source, dest, overwrite)
    src = _open_source(source, dest)
    try:
        temp = _temp_file(source, dest)
        try:
            _copy(src, temp, progress, pages_per_step, source, dest)
            _install(temp, dest)
        except BaseException:
            for leftover in (temp, f"{temp}-journal", f"{temp}-wal", f"{temp}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(leftover)
            raise
    finally:
        src.close()


def _refuse(source: str, dest: str, why: str) -> StorageError:
    return StorageError(f"cannot back up SQLite storage {source!r} to {dest!r}: {why}")


def _check_dest(source: str, dest: str, overwrite: bool) -> None:
    folder = os.path.dirname(os.path.abspath(dest))
    if not os.path.isdir(folder):
        raise _refuse(source, dest, f"its directory {folder!r} does not exist")
    if os.path.isdir(dest):
        raise _refuse(source, dest, "the destination is a directory")
    if os.path.exists(dest) and os.path.exists(source) and os.path.samefile(source, dest):
        raise _refuse(source, dest, "the destination is the source itself")
    if overwrite:
        return
    if os.path.lexists(dest):
        raise _refuse(
            source,
            dest,
            "the destination exists; refusing to overwrite it (pass overwrite=True, "
            "or --force on the command line)",
        )
    for stale in (f"{dest}-wal", f"{dest}-shm"):
        if os.path.lexists(stale):
            raise _refuse(
                source,
                dest,
                f"{stale!r} exists (left from an earlier database?) and SQLite would apply "
                "it to the copy: remove it, or pass overwrite=True (--force)",
            )


def _open_source(source: str, dest: str) -> sqlite3.Connection:
    """A read-only connection to ``source`` inside a read transaction (the snapshot)."""
    check_header(source)
    if not os.path.isfile(source):
        raise open_error(source, "no such file", read_only=True)

    def connect(immutable: bool) -> sqlite3.Connection:
        return sqlite3.connect(
            read_only_target(source, immutable=immutable), uri=True, isolation_level=None
        )

    try:
        conn, _ = connect_read_only(source, connect)
    except (sqlite3.Error, OSError) as exc:
        raise open_error(source, exc, read_only=True) from exc
    try:
        conn.execute("BEGIN")
        # The first read starts the snapshot; it also refuses foreign and newer files.
        if inspect(conn, source) == 0:
            raise _refuse(source, dest, "it is an empty database, not a hephaestus-trio one")
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error):
            raise open_error(source, exc, read_only=True) from exc
        raise
    return conn


def _temp_file(source: str, dest: str) -> str:
    folder = os.path.dirname(os.path.abspath(dest))
    try:
        fd, temp = tempfile.mkstemp(
            dir=folder, prefix=f".{os.path.basename(dest)}.", suffix=".backup-tmp"
        )
    except OSError as exc:
        raise _refuse(source, dest, f"cannot write in {folder!r} ({exc.strerror or exc})") from exc
    os.close(fd)
    return temp


def _copy(
    src: sqlite3.Connection,
    temp: str,
    progress: Callable[[int, int], None] | None,
    pages_per_step: int,
    source: str,
    dest: str,
) -> None:
    def step(status: int, remaining: int, total: int) -> None:
        if progress is not None:
            progress(total - remaining, total)

    dst = sqlite3.connect(temp, isolation_level=None)
    try:
        # sleep=0: the snapshot means no writer has to be let through between steps.
        src.backup(dst, pages=pages_per_step, progress=step, sleep=0)
        mode = dst.execute("PRAGMA journal_mode=DELETE").fetchone()[0]
        if str(mode).lower() != "delete":
            raise _refuse(source, dest, f"cannot take the copy out of WAL mode (got {mode!r})")
        check = dst.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise _refuse(source, dest, f"the copy failed its integrity check ({check})")
    except sqlite3.Error as exc:
        raise _refuse(source, dest, f"the copy failed ({exc}); {dest!r} was not written") from exc
    finally:
        dst.close()


def _install(temp: str, dest: str) -> None:
    """Make ``temp`` durable, then rename it onto ``dest`` (dropping ``dest``'s stale WAL).

    Stale files are only there when ``overwrite`` was given (``_check_dest``).
    """
    with open(temp, "rb+") as file:
        os.fsync(file.fileno())
    # A -wal or -shm left from an older file at ``dest`` would be replayed onto the copy.
    for stale in (f"{dest}-wal", f"{dest}-shm", f"{dest}-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)
    os.replace(temp, dest)
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(os.path.dirname(os.path.abspath(dest)), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
