"""Opening a SQLite file that may not be writable: read-only opens and access errors in words.

Everything here is blocking and runs in a worker thread, like ``_sqlite_schema``.

- **Access errors.** SQLite reports a file it may not open, a read-only
  directory and a missing directory alike as ``unable to open database file``
  or ``attempt to write a readonly database``; ``open_cause`` looks at the
  file and its directory to say which, so that ``StorageError`` names the
  file and the cause (and a readable database is never called corrupt).
- **Read-only opens** (``SQLiteStorage(read_only=True)``) use a ``mode=ro``
  URI: nothing is created, migrated or written. A WAL database needs its
  ``-shm`` file (the WAL index) or a directory where SQLite can create one.
  When neither is there and the file itself is not writable, the open is
  retried with ``immutable=1``, which reads the ``.db`` file alone, takes no
  locks and so does not see any concurrent writer. That is correct only
  because nobody can write the file; and it is refused when a non-empty
  ``-wal`` file lies beside it, since its commits would be silently skipped.
  Where the directory is writable, SQLite creates the ``-wal`` and ``-shm``
  files a WAL reader needs, and a read-only connection leaves them behind,
  empty of commits; they are harmless, and the next read-write close removes
  them.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
from collections.abc import Callable

from .._errors import StorageError
from ._sqlite_schema import SCHEMA_VERSION, inspect

__all__ = [
    "SQLITE_READONLY",
    "connect_read_only",
    "may_open_immutable",
    "open_cause",
    "open_error",
    "open_read_only",
    "primary_code",
    "probe",
    "read_only_error",
    "read_only_target",
    "refuse_unwritable",
]

# Primary SQLite result codes (``sqlite3.Error.sqlite_errorcode & 0xFF``).
SQLITE_PERM = 3
SQLITE_READONLY = 8
SQLITE_CORRUPT = 11
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26
_ACCESS = (SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN)


def primary_code(exc: BaseException) -> int | None:
    """The primary SQLite result code of ``exc``, read from its message when it carries none."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    if not isinstance(exc, sqlite3.Error):
        return None
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return SQLITE_READONLY
    if "unable to open" in text:
        return SQLITE_CANTOPEN
    return None


def probe(conn: sqlite3.Connection) -> None:
    """Read once, so that a file SQLite cannot open is not mistaken for a corrupt one.

    Corruption is left to ``inspect`` (which names it); access errors raise here.
    """
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        if primary_code(exc) not in (SQLITE_CORRUPT, SQLITE_NOTADB):
            raise


def read_only_target(path: str, *, immutable: bool = False) -> str:
    """The ``file:`` URI opening ``path`` read-only (percent-encoded: '?', '#', '%' are legal)."""
    uri = pathlib.Path(os.path.abspath(path)).as_uri() + "?mode=ro"
    return uri + "&immutable=1" if immutable else uri


def open_error(path: str, cause: str | BaseException, *, read_only: bool) -> StorageError:
    """``path`` cannot be opened: say which file, and why in words."""
    mode = " read-only" if read_only else ""
    why = cause if isinstance(cause, str) else open_cause(path, cause, read_only=read_only)
    return StorageError(f"SQLite storage {path!r}: cannot open the database{mode}: {why}")


def read_only_error(path: str, detail: str = "writes are refused") -> StorageError:
    return StorageError(
        f"SQLite storage {path!r} is open read-only ({detail}); "
        "open it without read_only=True to write"
    )


def _wal_has_commits(path: str) -> bool:
    wal = path + "-wal"
    return os.path.isfile(wal) and os.path.getsize(wal) > 0


def open_cause(path: str, exc: BaseException, *, read_only: bool) -> str:
    """Why opening ``path`` failed with ``exc``; permission problems are told apart."""
    if isinstance(exc, PermissionError):
        return f"permission denied ({exc.strerror or exc})"
    if isinstance(exc, OSError):
        return str(exc.strerror or exc)
    if primary_code(exc) not in _ACCESS:
        return str(exc)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"its directory {directory!r} does not exist ({exc})"
    if not os.path.exists(path):
        return f"permission denied: cannot create the file in {directory!r} ({exc})"
    if not os.access(path, os.R_OK):
        return f"permission denied: the file is not readable ({exc})"
    if read_only:
        if _wal_has_commits(path):
            return (
                f"its -wal file holds commits not yet in the database file, and reading "
                f"them needs a -shm file that SQLite cannot create in {directory!r} ({exc}); "
                "copy the database with its -wal file to a writable directory"
            )
        return f"permission denied: SQLite cannot create its -shm file in {directory!r} ({exc})"
    if not os.access(directory, os.W_OK):
        return (
            f"permission denied: its directory {directory!r} is not writable (SQLite "
            f"creates the -wal and -shm files beside the database) ({exc}); "
            "pass read_only=True to inspect it"
        )
    return f"permission denied ({exc})"


def refuse_unwritable(path: str) -> None:
    """A read-write open of an existing file this process may not write is refused up front.

    SQLite would open it read-only without a word and fail at the first write.
    """
    if not os.path.isfile(path):
        return
    if not os.access(path, os.R_OK):
        raise open_error(path, "permission denied: the file is not readable", read_only=False)
    if not os.access(path, os.W_OK):
        raise open_error(
            path,
            "permission denied: the file is not writable (read-only file or media); "
            "pass read_only=True to inspect it",
            read_only=False,
        )


def may_open_immutable(path: str, exc: sqlite3.Error) -> bool:
    """Whether a failed ``mode=ro`` open may be retried ``immutable=1`` (see the module doc)."""
    if primary_code(exc) not in (SQLITE_READONLY, SQLITE_CANTOPEN):
        return False
    return not os.access(path, os.W_OK) and not _wal_has_commits(path)


def connect_read_only(
    path: str, connect: Callable[[bool], sqlite3.Connection]
) -> tuple[sqlite3.Connection, bool]:
    """One read-only connection to ``path`` (from ``connect(immutable)``), and ``immutable``.

    ``connect(False)`` is tried first; ``connect(True)`` only when
    ``may_open_immutable`` allows it. Raises the driver's error as is.
    """
    conn: sqlite3.Connection | None = None
    try:
        conn = connect(False)
        probe(conn)
        return conn, False
    except sqlite3.Error as exc:
        if conn is not None:
            conn.close()
        if not may_open_immutable(path, exc):
            raise
    conn = connect(True)
    try:
        probe(conn)
    except BaseException:
        conn.close()
        raise
    return conn, True


def open_read_only(
    path: str, connect: Callable[[bool], sqlite3.Connection]
) -> tuple[sqlite3.Connection, sqlite3.Connection, bool]:
    """Two read-only connections to ``path`` (from ``connect(immutable)``), and ``immutable``.

    Checks the file with reads only; an older schema is refused (migrating
    would write), and so is an empty database.

    Raises:
        StorageError: the file is missing, unreadable, corrupt, foreign, empty,
            older or newer than this release, or cannot be read without writing.
    """
    if not os.path.isfile(path):
        raise open_error(path, "no such file", read_only=True)
    conns: list[sqlite3.Connection] = []
    try:
        first, immutable = connect_read_only(path, connect)
        conns.append(first)
        version = inspect(conns[0], path)
        if version == 0:
            raise open_error(
                path,
                "it holds no hephaestus-trio schema yet (an empty database); "
                "open it read-write once to create it",
                read_only=True,
            )
        if version < SCHEMA_VERSION:
            raise open_error(
                path,
                f"its schema version {version} is older than this release's "
                f"({SCHEMA_VERSION}); open it once read-write (without read_only=True) "
                "to migrate it",
                read_only=True,
            )
        conns.append(connect(immutable))
        for conn in conns:
            conn.execute("PRAGMA query_only=ON")
    except Exception as exc:
        for conn in conns:
            conn.close()
        if isinstance(exc, sqlite3.Error | OSError):
            raise open_error(path, exc, read_only=True) from exc
        raise
    return conns[0], conns[1], immutable
