"""``graph``, ``list``, ``show``, ``resume`` and ``cancel``, run in-process through ``main``.

``main`` calls ``trio.run`` itself, so these tests are plain functions; the
databases they inspect are prepared with ``trio.run`` too.
"""

from __future__ import annotations

import json
from pathlib import Path

import attrs
import pytest
import trio

from hephaestus_trio import Instance, SQLiteStorage, Status, engine, open_engine
from hephaestus_trio.cli import main

from .flows import Approval

FLOWS_FILE = str(Path(__file__).with_name("flows.py"))


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """Three Approval runs parked on their WaitForEvent, plus one 'running' run
    whose step was interrupted (as if its engine died mid-step)."""
    path = tmp_path / "cli.db"

    async def setup() -> None:
        async with open_engine(SQLiteStorage(path), workflows=[Approval]) as eng:
            for value in ("a1", "a2", "a3"):
                await eng.start_instance(Approval, {"n": value}, id=f"approval::{value}")
            while len(await eng.list(status="waiting")) < 3:
                await trio.sleep(0.01)
        async with SQLiteStorage(path) as storage:
            interrupted = engine.advance(
                Instance.new(Approval, {"n": "r1"}, id="approval::r1"), workflow=Approval
            )
            assert interrupted.status is Status.RUNNING
            await storage.put(interrupted)

    trio.run(setup)
    return path


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def get(path: Path, id: str) -> Instance:
    async def read() -> Instance:
        async with SQLiteStorage(path) as storage:
            (found,) = await storage.query(id=id)
            return found

    return trio.run(read)


# -- graph -------------------------------------------------------------------------------


def test_graph_ascii_and_mermaid_of_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "graph", "hephaestus_trio.cli._demo_flow:OrderFlow")
    assert code == 0
    assert out.startswith("OrderFlow (version 1, start: validate_order)")
    assert "--invalid--> reject_order" in out
    code, out, _ = run_cli(
        capsys, "graph", "hephaestus_trio.cli._demo_flow:OrderFlow", "--format", "mermaid"
    )
    assert code == 0
    assert out.startswith("flowchart TD")
    assert "validate_order -->|valid| charge_payment" in out


def test_graph_imports_a_file_path(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "graph", f"{FLOWS_FILE}:Approval")
    assert code == 0
    assert "[wait_for_event] WaitForEvent" in out


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("no_such_module_xyz:Flow", "cannot import 'no_such_module_xyz'"),
        ("hephaestus_trio.cli._demo_flow:Nope", "has no attribute 'Nope'"),
        ("hephaestus_trio.cli._demo_flow:sample_orders", "not a Workflow class"),
        ("just_a_module", "expected MODULE:Workflow"),
    ],
)
def test_graph_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], target: str, fragment: str
) -> None:
    code, _, err = run_cli(capsys, "graph", target)
    assert_one_line_error(code, err, fragment)


# -- list / show -------------------------------------------------------------------------


def test_list_filters_by_status_and_workflow(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = run_cli(capsys, "list", "--storage", url(db))
    assert code == 0
    for value in ("a1", "a2", "a3", "r1"):
        assert f"approval::{value}" in out
    assert "4 run(s)" in out
    code, out, _ = run_cli(capsys, "list", "--storage", url(db), "--status", "running")
    assert "approval::r1" in out
    assert "approval::a1" not in out
    code, out, _ = run_cli(capsys, "list", "--storage", url(db), "--workflow", "OrderFlow")
    assert code == 0
    assert out.strip() == "no runs match"
    code, out, _ = run_cli(
        capsys, "list", "--storage", url(db), "--workflow", "tests.cli.Approval", "--json"
    )
    assert code == 0
    assert sorted(item["id"] for item in json.loads(out)) == [
        "approval::a1",
        "approval::a2",
        "approval::a3",
        "approval::r1",
    ]


def test_show_prints_state_and_history(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    code, out, _ = run_cli(capsys, "show", "approval::a1", "--storage", url(db))
    assert code == 0
    assert "status:     waiting" in out
    assert "parked:     wait_for_event" in out
    assert '{"prepared": true}' in out
    assert "prepare  ok" in out  # the history row
    run_id = get(db, "approval::a1").run_id
    code, out, _ = run_cli(capsys, "show", run_id, "--storage", url(db), "--json")
    assert code == 0
    assert json.loads(out)["id"] == "approval::a1"


@pytest.mark.parametrize("command", ["show", "resume", "cancel"])
def test_unknown_id_is_a_one_line_error(
    capsys: pytest.CaptureFixture[str], db: Path, command: str
) -> None:
    argv = [command, "approval::zz", "--storage", url(db)]
    if command == "resume":
        argv.insert(2, "approved")
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "approval::zz")


@pytest.mark.parametrize(
    ("storage", "fragment"),
    [
        ("sqlite:///{tmp}/missing.db", "no SQLite database"),
        ("postgresql://localhost/db", "not available"),
        ("ftp://example", "unsupported storage URL scheme"),
        ("sqlite:/relative.db", "malformed SQLite URL"),
    ],
)
def test_bad_storage_urls_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, storage: str, fragment: str
) -> None:
    code, _, err = run_cli(capsys, "list", "--storage", storage.format(tmp=tmp_path))
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "missing.db").exists()  # inspecting never creates a database


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--status", "sleeping"]) == 2
    assert main([]) == 2
    assert main(["demo", "--orders", "0"]) == 2
    capsys.readouterr()
    assert main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


# -- resume ------------------------------------------------------------------------------


def test_resume_runs_the_resumed_run_to_its_end(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, err = run_cli(
        capsys,
        "resume",
        "approval::a1",
        "approved",
        "--storage",
        url(db),
        "--workflow-module",
        FLOWS_FILE,
    )
    assert (code, err) == (0, "")
    assert "wait_for_event <- received (resumed)" in out
    assert "approval::a1 is completed" in out
    assert get(db, "approval::a1").status is Status.COMPLETED
    # Only the named run was touched: the others, even the interrupted one, did not run.
    assert get(db, "approval::a2").status is Status.WAITING
    interrupted = get(db, "approval::r1")
    assert interrupted.status is Status.RUNNING
    assert interrupted.completed_steps == frozenset()


def test_resume_imports_a_dotted_workflow_module(
    capsys: pytest.CaptureFixture[str], db: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "cli_test_workflows.py").write_text(Path(FLOWS_FILE).read_text())
    monkeypatch.chdir(tmp_path)  # the current directory is importable
    code, out, _ = run_cli(
        capsys,
        "resume",
        "approval::a2",
        "approved",
        "--storage",
        "sqlite:///cli.db",
        "--workflow-module",
        "cli_test_workflows",
    )
    assert code == 0
    assert "approval::a2 is completed" in out


def test_resume_with_wait_zero_records_it_for_the_next_engine(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, _ = run_cli(
        capsys,
        "resume",
        "approval::a3",
        "approved",
        "--storage",
        url(db),
        "--workflow-module",
        FLOWS_FILE,
        "--wait",
        "0",
    )
    assert code == 0
    assert "accepted" in out

    async def reopen() -> Instance:
        async with open_engine(SQLiteStorage(db), workflows=[Approval]) as eng:
            return await eng.wait("approval::a3", timeout=10)

    assert trio.run(reopen).status is Status.COMPLETED


def test_resume_errors(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    base = ["--storage", url(db)]

    async def add_run_of_an_unloaded_workflow() -> None:
        parked = attrs.evolve(
            Instance.new("elsewhere.Unloaded", {}, id="other::u1"),
            status=Status.WAITING,
            active_steps=frozenset({"wait_for_event"}),
            waiting_steps=frozenset({"wait_for_event"}),
        )
        async with SQLiteStorage(db) as storage:
            await storage.put(parked)

    trio.run(add_run_of_an_unloaded_workflow)
    code, _, err = run_cli(capsys, "resume", "other::u1", "received", *base)
    assert_one_line_error(code, err, "--workflow-module", "elsewhere.Unloaded")
    with_module = [*base, "--workflow-module", FLOWS_FILE]
    code, _, err = run_cli(capsys, "resume", "approval::a1", "nope", *with_module)
    assert_one_line_error(code, err, "no parked step declares 'nope'")
    code, _, err = run_cli(
        capsys, "resume", "approval::a1", "approved", "--step", "finish", *with_module
    )
    assert_one_line_error(code, err, "'finish' is not parked")
    code, _, err = run_cli(
        capsys, "resume", "approval::a1", "approved", *base, "--workflow-module", "nope_xyz"
    )
    assert_one_line_error(code, err, "cannot import 'nope_xyz'")
    assert get(db, "approval::a1").status is Status.WAITING


# -- cancel ------------------------------------------------------------------------------


def test_cancel_marks_the_run_cancelled_without_running_steps(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    code, out, err = run_cli(capsys, "cancel", "approval::r1", "--storage", url(db))
    assert (code, err) == (0, "")
    assert "cancelled approval::r1" in out
    assert "it was running" in out
    cancelled = get(db, "approval::r1")
    assert cancelled.status is Status.CANCELLED
    assert cancelled.completed_steps == frozenset()  # its interrupted step never ran
    code, _, err = run_cli(capsys, "cancel", "approval::r1", "--storage", url(db))
    assert_one_line_error(code, err, "already cancelled")


def test_resume_and_cancel_are_refused_while_an_engine_runs_the_database(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    before = get(db, "approval::a1")
    refused = (
        ("cancel", "approval::a1"),
        ("resume", "approval::a1", "received", "--wait", "0"),
    )
    with SQLiteStorage(db).engine_lock():  # what a running application engine holds
        for argv in refused:
            code, _, err = run_cli(capsys, *argv, "--storage", url(db))
            assert_one_line_error(code, err, "in use by another running engine")
    assert get(db, "approval::a1") == before
    assert main(["cancel", "approval::a1", "--storage", url(db)]) == 0
    capsys.readouterr()
    assert get(db, "approval::a1").status is Status.CANCELLED
