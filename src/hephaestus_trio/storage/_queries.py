"""SQL as data: a dialect's schema, migrations and named queries, loaded once.

Each dialect has a folder ``storage/sql/<dialect>/`` holding ``schema.sql``
(the canonical current schema; optional: a dialect without it builds a new
database by applying every migration, as PostgreSQL's does, since its DDL is
transactional), ``migrations/NNNN_<slug>.sql`` (numbered from
0001, no gaps; the newest number is the schema version) and ``queries.sql``
(blocks that start with a ``-- name --`` line and one description line). The
files ship inside the package and are read through ``importlib.resources``,
so they work from a wheel, a source tree and an editable install alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from importlib.abc import Traversable

import attrs

__all__ = ["Migration", "SqlDialect", "load_dialect", "parse_queries"]

_QUERY_HEADER = re.compile(r"^-- ([a-z_][a-z0-9_]*) --$")
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@attrs.frozen(kw_only=True)
class Migration:
    """One schema step: applying it to version ``version - 1`` gives ``version``."""

    version: int
    """Schema version after this migration (the file's number)."""
    name: str
    """File name, e.g. ``0001_initial.sql``."""
    text: str
    """The SQL script."""


@attrs.frozen(kw_only=True)
class SqlDialect:
    """Every SQL file of one dialect."""

    schema: str
    """``schema.sql``: what a new database gets (``""`` when the dialect has none)."""
    migrations: tuple[Migration, ...]
    """``migrations/*.sql`` in order; ``migrations[v]`` takes version ``v`` to ``v + 1``."""
    queries: Mapping[str, str]
    """Named blocks of ``queries.sql``."""

    @property
    def version(self) -> int:
        """The current schema version: the number of the newest migration."""
        return self.migrations[-1].version


def parse_queries(text: str) -> dict[str, str]:
    """Split ``queries.sql`` text into ``{name: sql}``.

    Text before the first ``-- name --`` header is ignored, as are the comment
    and blank lines right after a header (its description).

    Raises:
        ValueError: a name is used twice or a block is empty.
    """
    queries: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []

    def finish() -> None:
        if name is None:
            return
        body = "\n".join(lines).strip()
        if not body:
            raise ValueError(f"query {name!r} is empty")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body

    for line in text.splitlines():
        header = _QUERY_HEADER.match(line.strip())
        if header is not None:
            finish()
            name, lines = header.group(1), []
        elif name is not None and (lines or (line.strip() and not line.startswith("--"))):
            lines.append(line)
    finish()
    return queries


def load_dialect(dialect: str) -> SqlDialect:
    """Read ``storage/sql/<dialect>/`` from the installed package.

    Raises:
        RuntimeError: the files are missing or the migrations are misnumbered
            (a packaging bug, never a user error).
    """
    root = resources.files("hephaestus_trio.storage").joinpath("sql").joinpath(dialect)
    try:
        migrations = [
            Migration(version=int(match.group(1)), name=entry.name, text=_read(entry))
            for entry in root.joinpath("migrations").iterdir()
            if (match := _MIGRATION_NAME.match(entry.name)) is not None
        ]
        schema_file = root.joinpath("schema.sql")
        schema = _read(schema_file) if schema_file.is_file() else ""
        queries = parse_queries(_read(root.joinpath("queries.sql")))
    except OSError as exc:
        raise RuntimeError(f"the {dialect} SQL files are missing from the package: {exc}") from exc
    migrations.sort(key=lambda m: m.version)
    numbers = [m.version for m in migrations]
    if not numbers or numbers != list(range(1, len(numbers) + 1)):
        raise RuntimeError(f"{dialect} migrations must be numbered 0001.. with no gaps: {numbers}")
    return SqlDialect(schema=schema, migrations=tuple(migrations), queries=queries)


def _read(entry: Traversable) -> str:
    return entry.read_text(encoding="utf-8")
