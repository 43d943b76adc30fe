"""SQLite's ``summary`` and paged ``query`` read indexes, not documents; schema 4 migrates.

The conformance suite checks what they return; these check how SQLite gets
it (``EXPLAIN QUERY PLAN`` of the very statements the storage runs) and that
a version-3 file gains the indexes in place, keeping its runs and timers.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from hephaestus_trio import SQLiteStorage, Status
from hephaestus_trio.storage import NewWakeup, WakeupKind
from hephaestus_trio.storage import _sqlite_schema as schema
from hephaestus_trio.testing._storage_checks import T0, make_run

Q = schema.SQL.queries


def _plan(sql: str, params: dict[str, object]) -> str:
    with closing(sqlite3.connect(":memory:")) as conn:
        for statement in schema.schema_statements():
            conn.execute(statement)
        rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return " | ".join(row[3] for row in rows)


@pytest.mark.parametrize(
    ("name", "index"),
    [
        ("summary_counts", "COVERING INDEX hephaestus_runs_workflow_created_idx"),
        ("oldest_waiting", "INDEX hephaestus_runs_status_idx (status=?)"),
        ("due_timers", "INDEX hephaestus_wakeups_timer_due_idx (due_at<?)"),
        ("next_timer", "INDEX hephaestus_wakeups_timer_due_idx (due_at>?)"),
    ],
)
def test_summary_statements_read_indexes_only(name: str, index: str) -> None:
    plan = _plan(Q[name], {"now": "2030-01-01T00:00:00.000000Z"})
    assert index in plan
    tables = [step for step in plan.split(" | ") if step.startswith(("SCAN", "SEARCH"))]
    assert tables
    assert all("INDEX" in step for step in tables), plan  # never a scan of the table itself


@pytest.mark.parametrize(
    ("where", "index"),
    [
        ("", "hephaestus_runs_created_idx"),
        (
            "(created_at, run_id) > (:a, :r)",
            "hephaestus_runs_created_idx ((created_at,run_id)>(?,?))",
        ),
        (
            "status IN (:s) AND (created_at, run_id) > (:a, :r)",
            "hephaestus_runs_status_idx (status=? AND (created_at,run_id)>(?,?))",
        ),
        (
            "workflow = :w AND (created_at, run_id) > (:a, :r)",
            "hephaestus_runs_workflow_created_idx (workflow=? AND (created_at,run_id)>(?,?))",
        ),
        ("workflow = :w AND created_at >= :c", "hephaestus_runs_workflow_created_idx"),
    ],
)
def test_a_page_walks_an_index_from_the_cursor(where: str, index: str) -> None:
    """No page sorts: each walks an index in (created_at, run_id) order and stops at LIMIT."""
    sql = Q["select_runs"] + (f" WHERE {where}" if where else "")
    sql += " " + Q["order_runs"] + " " + Q["limit_runs"]
    params = {"a": "x", "r": "y", "s": "waiting", "w": "shop.Order", "c": "x", "limit": 50}
    plan = _plan(sql, params)
    assert index in plan
    assert "TEMP B-TREE" not in plan


async def test_a_version_3_file_is_migrated_with_its_runs_and_timers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "v3.db"
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        for migration in schema.SQL.migrations[:3]:
            for statement in schema.split_statements(migration.text):
                conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {schema.APPLICATION_ID}")
        conn.execute("PRAGMA user_version = 3")
    run = attrs.evolve(
        make_run(run_id="r1", created_at=T0),
        status=Status.WAITING,
        active_steps=frozenset({"wait"}),
        waiting_steps=frozenset({"wait"}),
    )
    timer = NewWakeup(
        run_id="r1", kind=WakeupKind.TIMER, step="wait", event="t", due_at=T0 + timedelta(days=1)
    )
    # Written by a release whose newest schema is version 3.
    with monkeypatch.context() as old_release:
        old_release.setattr(
            schema, "SQL", attrs.evolve(schema.SQL, migrations=schema.SQL.migrations[:3])
        )
        old_release.setattr(schema, "SCHEMA_VERSION", 3)
        async with SQLiteStorage(path) as storage:
            await storage.create(run, now=T0)
            await storage.add_wakeup(timer, now=T0)
    async with SQLiteStorage(path) as storage:  # this release migrates it to version 4
        summary = await storage.summary(now=T0 + timedelta(days=2))
        assert summary.count(status="waiting") == 1
        assert summary.due_timers == 1
        assert summary.oldest_due_timer_at == timer.due_at
        assert [i.run_id for i in await storage.query(workflow=run.workflow, limit=1)] == ["r1"]
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION == 4
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"hephaestus_runs_workflow_created_idx", "hephaestus_wakeups_timer_due_idx"} <= names
