"""``engines``: the engines a storage has seen, on SQLite and memory (PostgreSQL:
``tests/postgres/test_cli.py``). Runs ``main`` in this process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hephaestus_trio.cli import main

ENGINE_CHILD = Path(__file__).with_name("_engine_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture
def engine_child(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """An application's engine on a fresh SQLite file, in a child process; killed afterwards."""
    db, ready = tmp_path / "engines.db", tmp_path / "engine.ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(SRC), *sys.path])}
    with open(tmp_path / "engine.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.fspath(ENGINE_CHILD), os.fspath(db), os.fspath(ready)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "engine.log").read_text()
            assert time.monotonic() < deadline, "the engine child never opened"
            time.sleep(0.01)
        yield db, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_engines_lists_a_running_engine_on_sqlite(
    capsys: pytest.CaptureFixture[str], engine_child: tuple[Path, subprocess.Popen[bytes]]
) -> None:
    db, proc = engine_child
    assert main(["engines", "--storage", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == [
        "ENGINE",
        "HOST",
        "PID",
        "STARTED",
        "LAST",
        "HEARTBEAT",
        "AGE",
        "RUNS",
        "OWNED",
    ]
    assert "1 engine(s)" in out
    [row] = [line for line in out.splitlines()[2:] if str(proc.pid) in line.split()]
    assert row.split()[1] == socket.gethostname()
    assert row.split()[-1] == "0"

    assert main(["engines", "--storage", f"sqlite:///{db}", "--json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["pid"] == proc.pid
    assert record["host"] == socket.gethostname()
    assert record["runs_owned"] == 0
    assert isinstance(record["engine_id"], str)
    assert record["engine_id"]
    assert record["started_at"].endswith("+00:00")


def test_engines_on_an_empty_storage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["engines", "--storage", "memory://"]) == 0
    assert capsys.readouterr().out.strip() == "no engine is registered"
    assert main(["engines", "--storage", "memory://", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_engines_on_a_missing_sqlite_file_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["engines", "--storage", f"sqlite:///{tmp_path / 'nope.db'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1
    assert "no SQLite database at" in err
