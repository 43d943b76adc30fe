"""SQL files: named-query parsing, statement splitting, loading from the package."""

from __future__ import annotations

import pytest

from hephaestus_trio.storage._queries import load_dialect, parse_queries
from hephaestus_trio.storage._sqlite_schema import split_statements


def test_parse_queries() -> None:
    text = """-- file header, ignored
-- first --
-- what it does
SELECT 1;

-- second --
-- a description
-- on two lines

SELECT a
FROM t  -- trailing comment stays
WHERE b = :b;
"""
    assert parse_queries(text) == {
        "first": "SELECT 1;",
        "second": "SELECT a\nFROM t  -- trailing comment stays\nWHERE b = :b;",
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("-- a --\n-- desc\nSELECT 1;\n-- a --\n-- desc\nSELECT 2;\n", "defined twice"),
        ("-- a --\n-- only a description\n", "empty"),
    ],
)
def test_parse_queries_rejects(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_queries(text)


def test_split_statements() -> None:
    script = """-- leading comment
CREATE TABLE t (x TEXT DEFAULT ';');

-- another
CREATE INDEX i ON t (x)
    WHERE x <> 'a;b';
-- trailing comment
"""
    assert split_statements(script) == [
        "CREATE TABLE t (x TEXT DEFAULT ';');",
        "CREATE INDEX i ON t (x)\n    WHERE x <> 'a;b';",
    ]
    with pytest.raises(ValueError, match="unterminated"):
        split_statements("CREATE TABLE t (x)")


def test_sqlite_files_load_from_the_installed_package() -> None:
    dialect = load_dialect("sqlite")
    assert dialect.version >= 1
    assert "CREATE TABLE hephaestus_runs" in dialect.schema
    assert {"insert_run", "write_run", "claimable", "insert_wakeup"} <= set(dialect.queries)
    assert all(not q.startswith("--") for q in dialect.queries.values())


def test_unknown_dialect_is_a_packaging_error() -> None:
    with pytest.raises(RuntimeError, match="missing from the package"):
        load_dialect("no-such-dialect")
