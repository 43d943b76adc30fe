"""The pytest plugin: its fixtures in a user's test file, run by a pytest of its own.

The inner pytest loads the plugin as the ``pytest11`` entry point does (by
the entry module's name) in a fresh process, so what is tested is what a
user gets, including the guard that keeps the plugin inert without the
``test`` extra.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

import hephaestus_trio._pytest_entry as entry

ROOT = Path(__file__).resolve().parents[2]

USER_TESTS = """
import pytest
import trio

from hephaestus_trio import Complete, Done, Status, Step, Unique, Wait, Workflow


class Greet(Step):
    events = ("greeted",)

    async def execute(self, instance, config, context):
        return Complete("greeted", {"hello": context.initial["name"]})


class Reminder(Workflow, unique=Unique(key="reminder")):
    start_at = Greet
    transitions = {
        (Greet, "greeted"): (Wait, {"duration": 7, "unit": "day"}),
        (Wait, "timeout"): Done,
    }


@pytest.mark.trio
async def test_memory_engine(hephaestus_engine, autojump_clock):
    iid = await hephaestus_engine.start_instance(Reminder, {"name": "ada"}, id="reminder::a")
    final = await hephaestus_engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert trio.current_time() == pytest.approx(7 * 86400)
    # Wall time follows Trio's clock: the timer fired a virtual week later.
    first, last = final.execution_history[0], final.execution_history[-1]
    assert (last.timestamp - first.timestamp).days == 7


async def reopen_keeps_the_parked_run(engine, reopen):
    iid = await engine.start_instance(Reminder, {"name": "bob"}, id="reminder::b")
    with trio.move_on_after(3600):
        await engine.wait(iid)
    assert (await engine.get(iid)).waiting_steps == {"wait"}
    engine = await reopen(engine)
    final = await engine.wait(iid)
    assert final.status is Status.COMPLETED
    assert final.context.steps["greet"] == {"hello": "bob"}


@pytest.mark.trio
async def test_reopen_on_memory(hephaestus_engine, hephaestus_reopen, autojump_clock):
    await reopen_keeps_the_parked_run(hephaestus_engine, hephaestus_reopen)


@pytest.mark.trio
async def test_reopen_on_sqlite(hephaestus_sqlite_engine, hephaestus_reopen, autojump_clock):
    await reopen_keeps_the_parked_run(hephaestus_sqlite_engine, hephaestus_reopen)


@pytest.mark.trio
async def test_sqlite_engine_wait_timeout_is_virtual(hephaestus_sqlite_engine, autojump_clock):
    # Disk writes never let the mock clock jump to this wait's deadline.
    iid = await hephaestus_sqlite_engine.start_instance(Reminder, {"name": "c"}, id="reminder::c")
    final = await hephaestus_sqlite_engine.wait(iid, timeout=8 * 86400)
    assert final.status is Status.COMPLETED
"""


def run_inner_pytest(tmp_path: Path, plugin_args: list[str]) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(USER_TESTS)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:hephaestus_trio",
            *plugin_args,
            "-W",
            "error",
            "test_user.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
def test_a_users_tests_get_the_fixtures(tmp_path: Path) -> None:
    done = run_inner_pytest(tmp_path, ["-p", "hephaestus_trio._pytest_entry"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


@pytest.mark.slow
def test_without_the_plugin_there_are_no_fixtures(tmp_path: Path) -> None:
    done = run_inner_pytest(tmp_path, [])
    assert done.returncode == 1, done.stdout + done.stderr
    assert "fixture 'hephaestus_engine' not found" in done.stdout


def test_the_entry_point_names_the_entry_module() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["entry-points"]["pytest11"] == {
        "hephaestus_trio": "hephaestus_trio._pytest_entry"
    }
    test_extra = " ".join(project["project"]["optional-dependencies"]["test"])
    assert "pytest-trio" in test_extra
    assert "hypothesis" in test_extra


def test_the_entry_module_loads_the_fixtures_only_with_the_test_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert entry.pytest_plugins == ["hephaestus_trio.testing.pytest_plugin"]
    real = importlib.util.find_spec

    def without_pytest_trio(name: str, *args: object) -> object:
        return None if name == "pytest_trio" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_pytest_trio)
    try:
        assert importlib.reload(entry).pytest_plugins == []
    finally:
        monkeypatch.undo()
        importlib.reload(entry)
    assert entry.pytest_plugins == ["hephaestus_trio.testing.pytest_plugin"]


def test_the_user_file_is_valid_python() -> None:
    compile(textwrap.dedent(USER_TESTS), "test_user.py", "exec")
