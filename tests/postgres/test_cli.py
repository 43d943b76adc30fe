"""The command line on ``postgresql://`` URLs, while an application's engine process runs.

``main`` runs in this process (it calls ``trio.run`` itself, so these tests
are plain functions). The engine is an ``_pg_app.py`` process on the same
database. Every step records its executions with its pid, in this process too
(``WORKDIR_ENV``): ``resume`` and ``cancel`` must only add rows, so no step may
ever show up under this process's pid.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

import pytest
import trio

from hephaestus_trio import Status
from hephaestus_trio.cli import main

from . import _pg_app as app
from ._harness import Engines, history

pytestmark = pytest.mark.slow

APP_FILE = os.fspath(app.__file__)


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def live(engines: Engines, monkeypatch: pytest.MonkeyPatch) -> Engines:
    """Engine ``a`` running, with ``approve::c1`` parked (hibernated, nobody owns it) and
    ``held::c2`` busy in its ``hold`` step (owned by ``a``)."""
    monkeypatch.setenv(app.WORKDIR_ENV, os.fspath(engines.workdir))

    async def setup() -> None:
        engines.start("a", app.EngineSettings(ttl=5.0, renewal=0.2, poll=0.2))
        await engines.ready("a")
        runs: list[list[Any]] = [
            ["Approve", "approve::c1", {"n": 1}],
            ["Held", "held::c2", {"n": 2, "block_in": "a"}],
        ]
        await engines.result("a", engines.send("a", {"op": "start", "runs": runs}))
        await engines.wait_for([app.marker_name("held::c2", "hold")])
        await engines.until({"approve::c1": Status.WAITING})

    trio.run(setup)
    return engines


def test_read_commands_and_engines_on_postgresql(
    capsys: pytest.CaptureFixture[str], live: Engines
) -> None:
    dsn = live.dsn
    code, out, _ = run_cli(capsys, "list", "--storage", dsn)
    assert code == 0
    assert "approve::c1" in out
    assert "held::c2" in out
    assert "2 run(s)" in out
    code, out, _ = run_cli(capsys, "list", "--storage", dsn, "--json")
    assert sorted(item["id"] for item in json.loads(out)["runs"]) == ["approve::c1", "held::c2"]
    code, out, _ = run_cli(capsys, "show", "held::c2", "--storage", dsn)
    assert code == 0
    assert "running:    hold" in out
    code, out, _ = run_cli(capsys, "show", "approve::c1", "--storage", dsn, "--json")
    assert json.loads(out)["run"]["status"] == "waiting"
    code, out, err = run_cli(capsys, "stats", "--storage", dsn, "--json")
    assert code == 0, err
    assert "waiting" in out
    assert "running" in out

    code, out, err = run_cli(capsys, "engines", "--storage", dsn)
    assert code == 0, err
    engine_id = live.engine_id("a")
    [line] = [row for row in out.splitlines() if row.startswith(engine_id)]
    assert str(live.procs["a"].pid) in line.split()
    assert line.split()[-1] == "1"  # held::c2; the parked run is owned by nobody
    assert "1 engine(s)" in out
    code, out, _ = run_cli(capsys, "engines", "--storage", dsn, "--json")
    [record] = json.loads(out)
    assert record["engine_id"] == engine_id
    assert record["pid"] == live.procs["a"].pid
    assert record["host"] == socket.gethostname()
    assert record["runs_owned"] == 1
    assert record["last_heartbeat"] is not None
    assert 0 <= record["heartbeat_age_s"] < 5.0
    assert set(record) == {
        "engine_id",
        "host",
        "pid",
        "started_at",
        "last_heartbeat",
        "heartbeat_age_s",
        "runs_owned",
    }
    assert live.lines()
    assert all(x.pid != os.getpid() for x in live.lines())


def test_resume_and_cancel_add_rows_and_the_engine_applies_them(
    capsys: pytest.CaptureFixture[str], live: Engines
) -> None:
    dsn = live.dsn
    code, out, err = run_cli(
        capsys,
        "resume",
        "approve::c1",
        "go",
        "--storage",
        dsn,
        "--payload",
        '{"by": "cli"}',
        "--workflow-module",
        APP_FILE,
    )
    assert code == 0, err
    assert "accepted" in out
    assert "not applied yet" not in out
    code, out, err = run_cli(
        capsys, "cancel", "held::c2", "--storage", dsn, "--workflow-module", APP_FILE
    )
    assert code == 0, err
    assert "cancelled held::c2" in out
    assert "it was running" in out

    final = trio.run(live.until, {"approve::c1": Status.COMPLETED, "held::c2": Status.CANCELLED})
    assert history(final["approve::c1"])[-3:] == [
        ("wait_for_event", "received"),
        ("finish", "ok"),
        ("done", "done"),
    ]
    assert final["approve::c1"].context.steps["wait_for_event"]["by"] == "cli"
    engine_pid = live.procs["a"].pid
    assert {(x.instance, x.step, x.pid) for x in live.lines()} == {
        ("approve::c1", "prepare", engine_pid),
        ("held::c2", "prepare", engine_pid),
        ("held::c2", "hold", engine_pid),
        ("approve::c1", "finish", engine_pid),
    }
    code, out, _ = run_cli(capsys, "engines", "--storage", dsn, "--json")
    assert json.loads(out)[0]["runs_owned"] == 0


def test_backup_on_postgresql_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], postgres_dsn: str
) -> None:
    code, _, err = run_cli(capsys, "backup", "copy.db", "--storage", postgres_dsn)
    assert code == 2
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert "pg_dump" in err


def test_a_bad_postgresql_url_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    code, _, err = run_cli(capsys, "list", "--storage", "postgresql://nobody@127.0.0.1:1/none")
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert "127.0.0.1" in err
