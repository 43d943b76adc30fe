"""Creating and migrating the PostgreSQL schema: versioned, once, under a lock.

Blocking; ``PostgresStorage.open`` runs it in a worker thread on a connection
of its own. The schema version lives in ``hephaestus_schema_version`` (one
row), created here rather than by a migration because it is what says which
migrations ran. Migrations (``sql/postgres/migrations/NNNN_*.sql``) are
applied in order, each database once, in a single transaction that holds a
transaction-level advisory lock: two engines opening a fresh database at the
same moment migrate it once, and a failure leaves the previous version
intact (PostgreSQL's DDL is transactional).

A database is refused (``StorageError``, nothing changed) when its schema
version is newer than this code knows, or when it holds hephaestus tables but
no version row (somebody else's tables, or a damaged database).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import StorageError
from ._queries import load_dialect

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATION_LOCK", "SCHEMA_VERSION", "SQL", "migrate", "schema_version"]

SQL = load_dialect("postgres")
SCHEMA_VERSION = SQL.version
MIGRATION_LOCK = 0x4845_5048_0001
"""Key of the advisory lock held while migrating ("HEPH", 1)."""

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS hephaestus_schema_version (
    singleton boolean NOT NULL PRIMARY KEY DEFAULT true CHECK (singleton),
    version integer NOT NULL
)
"""


def schema_version(conn: psycopg.Connection[Any]) -> int | None:
    """The stored schema version (``None``: no version table)."""
    row = conn.execute("SELECT to_regclass('hephaestus_schema_version') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        return None
    found = conn.execute("SELECT version FROM hephaestus_schema_version").fetchone()
    return 0 if found is None else int(found[0])


def migrate(conn: psycopg.Connection[Any], where: str) -> int:
    """Bring the database to ``SCHEMA_VERSION``; returns the version found before.

    ``conn`` is an autocommit connection; ``where`` names the database in errors.

    Raises:
        StorageError: the database is of a newer schema version, or has
            hephaestus tables without a version.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        found = schema_version(conn)
        if found is None:
            tables = conn.execute("SELECT to_regclass('hephaestus_runs') IS NOT NULL").fetchone()
            if tables is not None and tables[0]:
                raise StorageError(
                    f"PostgreSQL database {where} has a hephaestus_runs table but no "
                    "hephaestus_schema_version: it was not made by hephaestus-trio (or is "
                    "damaged); use another database or schema (search_path)"
                )
            conn.execute(_VERSION_TABLE)
            found = 0
        if found > SCHEMA_VERSION:
            raise StorageError(
                f"PostgreSQL database {where} has schema version {found}, newer than this "
                f"release of hephaestus-trio knows ({SCHEMA_VERSION}); upgrade hephaestus-trio"
            )
        for migration in SQL.migrations[found:]:
            conn.execute(migration.text.encode())
        if found < SCHEMA_VERSION:
            conn.execute(
                "INSERT INTO hephaestus_schema_version (version) VALUES (%s) "
                "ON CONFLICT (singleton) DO UPDATE SET version = excluded.version",
                (SCHEMA_VERSION,),
            )
    return found
