"""Opening a SQLite file safely: recognise it, refuse what is not ours, migrate what is.

Everything here is blocking and runs in the writer's worker thread. The rule
is *look before you write*: the file is inspected with reads only, and
nothing is written to it until it is known to be either an empty database or
a hephaestus-trio database at a version this code can migrate. A text file, a
corrupt file, somebody else's database or a database written by a newer
release is refused with a ``StorageError`` naming the file, and left as it was.

A database is ours when its header's ``application_id`` is ``APPLICATION_ID``;
its schema version is ``PRAGMA user_version``. Both are set in the same
transaction that creates or migrates the schema, so a crash mid-migration
leaves the previous version intact.
"""

from __future__ import annotations

import os
import sqlite3

from .._errors import StorageError
from ._queries import load_dialect

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "SQL",
    "migration_statements",
    "prepare",
    "schema_statements",
    "split_statements",
]

SQL = load_dialect("sqlite")
SCHEMA_VERSION = SQL.version
APPLICATION_ID = int.from_bytes(b"HEPH", "big")
"""Marks the file as a hephaestus-trio database (``PRAGMA application_id``)."""

_HEADER = b"SQLite format 3\x00"
# The tables each schema version has: a file marked as ours that lacks them is damaged.
_OUR_TABLES = {
    1: frozenset({"hephaestus_runs", "hephaestus_resumes"}),
    2: frozenset(
        {"hephaestus_runs", "hephaestus_wakeups", "hephaestus_resume_dedup", "hephaestus_engines"}
    ),
}
_OUR_TABLES[3] = _OUR_TABLES[4] = _OUR_TABLES[2]  # versions 3 and 4 add columns and indexes only
# UPDATE ... RETURNING (claim, renew) needs SQLite 3.35.
MIN_SQLITE = (3, 35, 0)


def split_statements(script: str) -> list[str]:
    """Split a SQL script into statements (``sqlite3.complete_statement`` decides).

    Leading comment lines are dropped from each statement, so the text SQLite
    records in ``sqlite_master`` does not depend on the comments around it.
    """
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        if not buffer and (not line.strip() or line.lstrip().startswith("--")):
            continue
        buffer += line
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        raise ValueError(f"unterminated SQL statement: {buffer.strip()[:60]!r}")
    return statements


def schema_statements() -> list[str]:
    """The statements of ``schema.sql`` (what a new database gets)."""
    return split_statements(SQL.schema)


def migration_statements(from_version: int) -> list[str]:
    """The statements taking schema ``from_version`` to ``SCHEMA_VERSION``, in order."""
    return [
        statement
        for migration in SQL.migrations[from_version:]
        for statement in split_statements(migration.text)
    ]


def _refuse(path: str, why: str) -> StorageError:
    return StorageError(f"cannot open SQLite storage {path!r}: {why}; the file was left unchanged")


def check_header(path: str) -> None:
    """Refuse a non-empty file that does not start with the SQLite header."""
    if os.path.isdir(path):
        raise _refuse(path, "it is a directory")
    try:
        with open(path, "rb") as file:
            head = file.read(len(_HEADER))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"cannot open SQLite storage {path!r}: {exc}") from exc
    if head and head != _HEADER:
        raise _refuse(path, "it is not a SQLite database")


def inspect(conn: sqlite3.Connection, path: str) -> int:
    """The schema version of the database: 0 when it is empty.

    Raises:
        StorageError: the file is corrupt, not SQLite, foreign, or newer than us.
    """
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        names = {
            row[0]
            for row in conn.execute("SELECT name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        }
    except sqlite3.DatabaseError as exc:
        raise _refuse(path, f"it is corrupt or not a SQLite database ({exc})") from exc
    if app_id == 0 and version == 0 and not names:
        return 0
    if app_id != APPLICATION_ID:
        found = f"objects {sorted(names)[:5]}" if names else f"user_version {version}"
        raise _refuse(
            path,
            f"it is a SQLite database of another application "
            f"(application_id {app_id}, {found}), not a hephaestus-trio database",
        )
    if version > SCHEMA_VERSION:
        raise _refuse(
            path,
            f"its schema version {version} is newer than this release supports "
            f"({SCHEMA_VERSION}); upgrade hephaestus-trio",
        )
    expected = _OUR_TABLES.get(version, _OUR_TABLES[max(_OUR_TABLES)])
    if version < 1 or not expected <= names:
        raise _refuse(
            path,
            f"it is marked as hephaestus-trio but its schema is damaged "
            f"(user_version {version}, tables {sorted(names)})",
        )
    return int(version)


def prepare(conn: sqlite3.Connection, path: str) -> None:
    """Validate the database behind ``conn``, switch it to WAL and bring it up to date.

    Raises:
        StorageError: see ``inspect``; also when WAL mode cannot be enabled.
    """
    if sqlite3.sqlite_version_info < MIN_SQLITE:
        raise StorageError(
            f"SQLite storage {path!r}: SQLite {sqlite3.sqlite_version} is too old; "
            f"hephaestus-trio needs {'.'.join(map(str, MIN_SQLITE))} or newer"
        )
    version = inspect(conn, path)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(f"SQLite storage {path!r}: cannot enable WAL mode (got {mode!r})")
    if version == SCHEMA_VERSION:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Another process may have created or migrated it while we looked.
        version = inspect(conn, path)
        if version < SCHEMA_VERSION:
            statements = schema_statements() if version == 0 else migration_statements(version)
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
        conn.execute("COMMIT")
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
