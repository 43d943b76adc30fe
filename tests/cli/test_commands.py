"""``graph``, ``list``, ``show``, ``resume`` and ``cancel``, run in-process through ``main``.

``main`` calls ``trio.run`` itself, so these tests are plain functions; the
databases they inspect are prepared with ``trio.run`` too. ``resume`` and
``cancel`` run no engine and no step: where an application's engine must
apply them, it runs in a child process (``_engine_child.py``) on the same file.
Steps log each execution with their pid (``flows.STEP_LOG``), in this process
too, so a step the command line executed would show up under this pid.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import attrs
import pytest
import trio

from hephaestus_trio import Instance, SQLiteStorage, Status, engine, open_engine
from hephaestus_trio.cli import main
from hephaestus_trio.storage import WakeupKind

from .flows import STEP_LOG, Approval, Lingering

FLOWS_FILE = str(Path(__file__).with_name("flows.py"))
ENGINE_CHILD = Path(__file__).with_name("_engine_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"


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
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Three Approval runs parked on their WaitForEvent, plus one 'running' run
    whose step was interrupted (its engine died mid-step: its lease lapsed).

    Steps executed from here on log to ``steps.log`` (see ``step_lines``)."""
    path = tmp_path / "cli.db"

    async def setup() -> None:
        async with open_engine(SQLiteStorage(path), workflows=[Approval]) as eng:
            for value in ("a1", "a2", "a3"):
                await eng.start_instance(Approval, {"n": value}, id=f"approval::{value}")
            while len(await eng.list(status="waiting")) < 3:
                await trio.sleep(0.01)
        async with SQLiteStorage(path) as storage:
            new = Instance.new(Approval, {"n": "r1"}, id="approval::r1")
            now = datetime.now(UTC)
            lease = await storage.create(new, now=now, owner="engine-that-died", ttl=0.001)
            assert lease is not None
            interrupted = engine.advance(new, workflow=Approval)
            assert interrupted.status is Status.RUNNING
            await storage.write(lease, interrupted, now=now)

    trio.run(setup)
    monkeypatch.setenv(STEP_LOG, os.fspath(tmp_path / "steps.log"))
    return path


def step_lines(db: Path) -> list[tuple[str, str, int]]:
    """``(instance id, step, pid)`` of every step executed since the ``db`` fixture."""
    log = db.with_name("steps.log")
    if not log.exists():
        return []
    return [
        (iid, step, int(pid))
        for iid, step, pid in (line.split() for line in log.read_text().splitlines())
    ]


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def get(path: Path, id: str) -> Instance:
    async def read() -> Instance:
        async with SQLiteStorage(path) as storage:
            (found,) = await storage.query(id=id)
            return found

    return trio.run(read)


def wakeups(path: Path, id: str) -> list[tuple[WakeupKind, str | None]]:
    async def read() -> list[tuple[WakeupKind, str | None]]:
        async with SQLiteStorage(path) as storage:
            (found,) = await storage.query(id=id)
            return [(w.kind, w.step) for w in await storage.wakeups(found.run_id)]

    return trio.run(read)


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.execution_history]


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
    assert sorted(item["id"] for item in json.loads(out)["runs"]) == [
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
    assert json.loads(out)["run"]["id"] == "approval::a1"


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


def test_resume_without_an_engine_records_it_and_runs_no_step(
    capsys: pytest.CaptureFixture[str], db: Path
) -> None:
    """Changed on purpose: the command no longer runs the resumed run itself.

    It records the resume (a wakeup row) and watches for ``--wait`` seconds
    for an engine applying it; with none running, the run stays parked and the
    command says the resume waits for the next engine. No step runs here.
    """
    code, out, err = run_cli(
        capsys,
        "resume",
        "approval::a1",
        "approved",
        "--storage",
        url(db),
        "--workflow-module",
        FLOWS_FILE,
        "--wait",
        "0.3",
    )
    assert (code, err) == (0, "")
    assert "resume 'approved' accepted (recorded durably)" in out
    assert "approval::a1 is waiting" in out
    assert "not applied yet after 0.3s" in out
    assert get(db, "approval::a1").status is Status.WAITING
    assert wakeups(db, "approval::a1") == [(WakeupKind.RESUME, "wait_for_event")]
    # Only the named run was touched: the others, even the interrupted one, did not run.
    assert get(db, "approval::a2").status is Status.WAITING
    assert wakeups(db, "approval::a2") == []
    interrupted = get(db, "approval::r1")
    assert interrupted.status is Status.RUNNING
    assert interrupted.completed_steps == frozenset()
    assert step_lines(db) == []


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
        "--wait",
        "0",
    )
    assert code == 0
    assert "resume 'approved' accepted" in out
    assert wakeups(db, "approval::a2") == [(WakeupKind.RESUME, "wait_for_event")]


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
    assert "not applied yet" not in out  # --wait 0 does not watch

    async def reopen() -> Instance:
        async with open_engine(SQLiteStorage(db), workflows=[Approval]) as eng:
            return await eng.wait("approval::a3", timeout=10)

    done = trio.run(reopen)
    assert done.status is Status.COMPLETED
    assert history(done).count(("wait_for_event", "received")) == 1
    assert wakeups(db, "approval::a3") == []


def test_resume_payload_and_dedup_key(capsys: pytest.CaptureFixture[str], db: Path) -> None:
    argv = [
        "resume",
        "approval::a2",
        "approved",
        "--storage",
        url(db),
        "--workflow-module",
        FLOWS_FILE,
        "--payload",
        '{"by": "ops"}',
        "--dedup-key",
        "ticket-7",
        "--wait",
        "0",
    ]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert "accepted" in out
    code, out, _ = run_cli(capsys, *argv)  # the same webhook delivered twice
    assert code == 0
    assert "dedup key 'ticket-7' was already recorded: nothing to do" in out
    assert wakeups(db, "approval::a2") == [(WakeupKind.RESUME, "wait_for_event")]

    async def reopen() -> Instance:
        async with open_engine(SQLiteStorage(db), workflows=[Approval]) as eng:
            return await eng.wait("approval::a2", timeout=10)

    done = trio.run(reopen)
    assert done.status is Status.COMPLETED
    assert done.context.steps["wait_for_event"]["by"] == "ops"
    # Still a no-op once the run has moved on and ended.
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert "nothing to do" in out
    for bad, fragment in (("[1]", "must be a JSON object"), ("{nope", "--payload is not JSON")):
        code, _, err = run_cli(capsys, *argv[:7], "--payload", bad)
        assert_one_line_error(code, err, fragment)


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
            await storage.create(parked, now=datetime.now(UTC))

    trio.run(add_run_of_an_unloaded_workflow)
    code, _, err = run_cli(capsys, "resume", "other::u1", "received", *base)
    assert_one_line_error(code, err, "--workflow-module", "elsewhere.Unloaded")
    with_module = [*base, "--workflow-module", FLOWS_FILE]
    code, _, err = run_cli(capsys, "resume", "approval::a1", "nope", *with_module)
    assert_one_line_error(code, err, "no step that can still run declares 'nope'")
    code, _, err = run_cli(
        capsys, "resume", "approval::a1", "approved", "--step", "finish", *with_module
    )
    assert_one_line_error(code, err, "step 'finish' does not declare 'approved'")
    code, _, err = run_cli(
        capsys, "resume", "approval::a1", "approved", "--step", "prepare", *with_module
    )
    assert_one_line_error(code, err, "step 'prepare' cannot still run (it is completed)")
    code, _, err = run_cli(
        capsys, "resume", "approval::a1", "approved", *base, "--workflow-module", "nope_xyz"
    )
    assert_one_line_error(code, err, "cannot import 'nope_xyz'")
    assert get(db, "approval::a1").status is Status.WAITING
    assert wakeups(db, "approval::a1") == []
    assert step_lines(db) == []


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


@pytest.fixture
def app_engine(db: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An application's engine on ``db`` in a child process (importing this tree's
    sources), open and running; killed afterwards."""
    ready = db.with_name("engine.ready")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(SRC), *sys.path])}
    with open(db.with_name("engine.log"), "wb") as log:
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
            assert proc.poll() is None, db.with_name("engine.log").read_text()
            assert time.monotonic() < deadline, "the engine child never opened"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def until(path: Path, id: str, done: Callable[[Instance], bool], timeout: float = 10) -> Instance:
    deadline = time.monotonic() + timeout
    while True:
        inst = get(path, id)
        if done(inst) or time.monotonic() > deadline:
            return inst
        time.sleep(0.02)


def test_resume_and_cancel_work_while_an_engine_runs_the_database(
    capsys: pytest.CaptureFixture[str], db: Path, app_engine: subprocess.Popen[bytes]
) -> None:
    """Changed on purpose: these were refused while an engine ran the file.

    Now the command adds a wakeup row and the application's engine, which owns
    (or claims) the run, applies it within about a second; a cancel of a run
    nobody owns is applied by the command with one fenced write. Either way no
    step code runs in the command (the step log shows only the engine's pid).
    """
    base = ["--storage", url(db), "--workflow-module", FLOWS_FILE]

    # A run the engine owns, busy in a long step: the engine must apply the cancel.
    async def start_lingering() -> None:
        async with SQLiteStorage(db) as storage:
            new = Instance.new(Lingering, {}, id="lingering::l1")
            await storage.create(new, now=datetime.now(UTC))

    trio.run(start_lingering)
    busy = until(db, "lingering::l1", lambda i: "linger" in i.running_steps)
    assert busy.running_steps == {"linger"}

    started = time.monotonic()
    code, out, err = run_cli(capsys, "resume", "approval::a1", "approved", *base)
    assert (code, err) == (0, "")
    assert "accepted" in out
    assert "not applied yet" not in out
    done = until(db, "approval::a1", lambda i: i.is_terminal)
    took = time.monotonic() - started
    assert done.status is Status.COMPLETED
    assert history(done).count(("wait_for_event", "received")) == 1
    assert wakeups(db, "approval::a1") == []
    assert took < 3.0, f"the engine applied the resume after {took:.2f}s"

    started = time.monotonic()
    code, out, err = run_cli(capsys, "cancel", "lingering::l1", *base)
    took = time.monotonic() - started
    assert (code, err) == (0, "")
    assert "cancelled lingering::l1" in out
    assert "it was running" in out
    assert get(db, "lingering::l1").status is Status.CANCELLED
    assert took < 3.0, f"the owning engine applied the cancel after {took:.2f}s"

    # A parked run nobody owns (it hibernates): cancelled by the command itself.
    code, out, err = run_cli(capsys, "cancel", "approval::a2", *base)
    assert (code, err) == (0, "")
    assert "cancelled approval::a2 (run" in out
    cancelled = get(db, "approval::a2")
    assert cancelled.status is Status.CANCELLED
    assert "finish" not in cancelled.completed_steps

    assert app_engine.poll() is None  # the engine lived through it all
    lines = step_lines(db)
    assert {pid for _, _, pid in lines} == {app_engine.pid}
    assert ("approval::a1", "finish", app_engine.pid) in lines
    assert ("lingering::l1", "linger", app_engine.pid) in lines
    assert not [line for line in lines if line[0] == "approval::a2"]
