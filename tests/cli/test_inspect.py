"""``list``, ``show`` and ``stats`` against real SQLite files, alone and beside a running engine.

The dataset is written through ``SQLiteStorage`` with creation times spread
over the last hours (real time: the commands read the wall clock for
``--since`` and ``stats``). The live test runs an application's engine in a
child process (``_engine_child.py``) and reads while it writes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hephaestus_trio import ErrorRecord, Instance, SQLiteStorage, Status
from hephaestus_trio.cli import _inspect, main
from hephaestus_trio.storage import NewWakeup, WakeupKind

from .flows import Approval, Broken, Lingering

ENGINE_CHILD = Path(__file__).with_name("_engine_child.py")
SRC = Path(__file__).resolve().parents[2] / "src"
CURSOR_LINE = re.compile(r"^more runs follow; next page: --after (\S+)$", re.MULTILINE)

RUN_KEYS = {
    "run_id",
    "id",
    "workflow",
    "workflow_version",
    "status",
    "created_at",
    "updated_at",
    "active_steps",
    "running_steps",
    "waiting_steps",
    "timers",
    "error",
}
ERROR_KEYS = {"kind", "type", "message", "step", "attempt", "traceback"}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def _run(
    workflow: Any,
    id: str,
    created: datetime,
    status: Status = Status.PENDING,
    **changes: Any,
) -> Instance:
    new = Instance.new(workflow, {"n": id}, id=id, now=created)
    return attrs.evolve(
        new, status=status, updated_at=changes.pop("updated_at", created), **changes
    )


def _parked(instance: Instance, step: str = "wait_for_event") -> Instance:
    return attrs.evolve(
        instance,
        status=Status.WAITING,
        active_steps=frozenset({step}),
        waiting_steps=frozenset({step}),
    )


async def _store(storage: SQLiteStorage, instance: Instance) -> None:
    """Write ``instance`` as it is: live ones unowned, terminal ones through a lease."""
    if instance.status.is_live:
        await storage.create(instance, now=instance.updated_at)
        return
    lease = await storage.create(
        attrs.evolve(instance, status=Status.RUNNING), now=instance.created_at, owner="loader"
    )
    assert lease is not None
    await storage.write(lease, instance, now=instance.updated_at)


CRASH = ErrorRecord.from_exception("crash", "explode", KeyError("missing"), attempt=3)


@attrs.frozen
class Dataset:
    path: Path
    now: datetime
    ids: list[str]
    """Every run's business id, oldest first (what an unfiltered list shows)."""


@pytest.fixture
def dataset(tmp_path: Path) -> Dataset:
    """Twelve runs of three workflows created 2h50m .. 10m ago, in every status.

    ``approval::w0`` (the oldest waiting run) has a timer due 5 minutes ago
    and ``approval::w1`` one due in an hour; ``broken::b0`` failed with a
    ``KeyError`` in step ``explode`` on attempt 3.
    """
    path = tmp_path / "runs.db"
    now = datetime.now(UTC)

    def ago(minutes: int) -> datetime:
        return now - timedelta(minutes=minutes)

    runs = [
        _run(Approval, "approval::c0", ago(170), Status.COMPLETED, updated_at=ago(160)),
        _parked(_run(Approval, "approval::w0", ago(150))),
        _run(Lingering, "lingering::r0", ago(140), Status.RUNNING),
        _run(Broken, "broken::b0", ago(130), Status.FAILED, updated_at=ago(129), error=CRASH),
        _parked(_run(Approval, "approval::w1", ago(110))),
        _run(Approval, "approval::x0", ago(90), Status.CANCELLED),
        _run(Lingering, "lingering::p0", ago(70)),
        _parked(_run(Approval, "approval::w2", ago(50))),
        _run(Approval, "approval::c1", ago(40), Status.COMPLETED),
        _run("other.Approval", "other::o0", ago(30)),
        _run(Lingering, "lingering::c0", ago(20), Status.COMPLETED),
        _run(Broken, "broken::p0", ago(10)),
    ]

    async def write() -> None:
        async with SQLiteStorage(path) as storage:
            for run in runs:
                await _store(storage, run)
            by_id = {r.id: r.run_id for r in runs}
            for run_id, due in [(by_id["approval::w0"], ago(5)), (by_id["approval::w1"], ago(-60))]:
                timer = NewWakeup(
                    run_id=run_id,
                    kind=WakeupKind.TIMER,
                    step="wait_for_event",
                    event="timeout",
                    due_at=due,
                )
                assert await storage.add_wakeup(timer, now=now) is not None

    trio.run(write)
    return Dataset(path=path, now=now, ids=[r.id for r in runs])


def _table_ids(out: str) -> list[str]:
    lines = out.splitlines()
    assert lines[0].startswith("ID ")
    rows = []
    for line in lines[2:]:
        if re.match(r"^\d+ run\(s\)$", line):
            break
        rows.append(line.split()[0])
    return rows


# -- list --------------------------------------------------------------------------------


def test_list_pages_through_every_run_by_cursor(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    code, out, err = run_cli(capsys, "list", "--storage", url(dataset.path))
    assert (code, err) == (0, "")
    assert _table_ids(out) == dataset.ids
    assert "12 run(s)" in out
    assert CURSOR_LINE.search(out) is None  # everything fit the default page of 100

    pages: list[list[str]] = []
    after: list[str] = []
    while True:
        code, out, err = run_cli(
            capsys, "list", "--storage", url(dataset.path), "--limit", "5", *after
        )
        assert (code, err) == (0, "")
        pages.append(_table_ids(out))
        found = CURSOR_LINE.search(out)
        if found is None:
            break
        after = ["--after", found.group(1)]
    assert [len(p) for p in pages] == [5, 5, 2]
    assert [i for page in pages for i in page] == dataset.ids


def test_list_json_pages_and_its_shape(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    ids: list[str] = []
    after: list[str] = []
    pages = 0
    while True:
        code, out, _ = run_cli(
            capsys, "list", "--storage", url(dataset.path), "--limit", "4", "--json", *after
        )
        assert code == 0
        page = json.loads(out)
        assert set(page) == {"runs", "next_cursor"}
        pages += 1
        for run in page["runs"]:
            assert set(run) == RUN_KEYS
            ids.append(run["id"])
        if page["next_cursor"] is None:
            break
        assert len(page["runs"]) == 4
        after = ["--after", page["next_cursor"]]
    assert pages == 3
    assert ids == dataset.ids

    code, out, _ = run_cli(
        capsys, "list", "--storage", url(dataset.path), "--json", "--workflow", "Broken"
    )
    failed, pending = json.loads(out)["runs"]
    assert failed["id"] == "broken::b0"
    assert failed["status"] == "failed"
    assert failed["workflow"] == "tests.cli.Broken"
    assert failed["workflow_version"] == 1
    assert failed["error"] == {
        "kind": "crash",
        "type": "KeyError",
        "message": "'missing'",
        "step": "explode",
        "attempt": 3,
        "traceback": None,
    }
    assert pending["status"] == "pending"
    assert pending["error"] is None
    created = datetime.fromisoformat(failed["created_at"])
    assert abs(created - (dataset.now - timedelta(minutes=130))) < timedelta(milliseconds=1)
    assert failed["created_at"].endswith("Z")

    code, out, _ = run_cli(
        capsys, "list", "--storage", url(dataset.path), "--json", "--status", "waiting"
    )
    waiting = json.loads(out)["runs"]
    assert [r["id"] for r in waiting] == ["approval::w0", "approval::w1", "approval::w2"]
    assert waiting[0]["waiting_steps"] == ["wait_for_event"]
    assert waiting[0]["active_steps"] == ["wait_for_event"]
    assert [t["step"] for t in waiting[0]["timers"]] == ["wait_for_event"]
    assert waiting[2]["timers"] == []


def test_pages_are_stable_while_runs_start(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    base = ["list", "--storage", url(dataset.path), "--limit", "5", "--json"]
    code, out, _ = run_cli(capsys, *base)
    first = json.loads(out)

    async def start_more() -> None:
        async with SQLiteStorage(dataset.path) as storage:
            for n in range(3):
                await storage.create(
                    _run(Approval, f"approval::new{n}", datetime.now(UTC)), now=datetime.now(UTC)
                )

    trio.run(start_more)
    seen = [r["id"] for r in first["runs"]]
    cursor = first["next_cursor"]
    while cursor is not None:
        code, out, _ = run_cli(capsys, *base, "--after", cursor)
        page = json.loads(out)
        seen.extend(r["id"] for r in page["runs"])
        cursor = page["next_cursor"]
    assert seen == [*dataset.ids, "approval::new0", "approval::new1", "approval::new2"]


def test_status_repeats_or_takes_a_comma_list(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    base = ["list", "--storage", url(dataset.path)]
    _, repeated, _ = run_cli(capsys, *base, "--status", "failed", "--status", "cancelled")
    _, commas, _ = run_cli(capsys, *base, "--status", "failed,cancelled")
    assert _table_ids(repeated) == _table_ids(commas) == ["broken::b0", "approval::x0"]
    _, live, _ = run_cli(capsys, *base, "--status", "pending,running,waiting")
    assert _table_ids(live) == [
        "approval::w0",
        "lingering::r0",
        "approval::w1",
        "lingering::p0",
        "approval::w2",
        "other::o0",
        "broken::p0",
    ]
    _, out, _ = run_cli(capsys, *base, "--status", "running", "--workflow", "tests.cli.Approval")
    assert out.strip() == "no runs match"


def test_workflow_takes_the_registry_name_or_a_unique_class_name(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    base = ["list", "--storage", url(dataset.path)]
    _, by_name, _ = run_cli(capsys, *base, "--workflow", "tests.cli.Lingering")
    _, by_class, _ = run_cli(capsys, *base, "--workflow", "Lingering")
    assert (
        _table_ids(by_name)
        == _table_ids(by_class)
        == [
            "lingering::r0",
            "lingering::p0",
            "lingering::c0",
        ]
    )
    _, other, _ = run_cli(capsys, *base, "--workflow", "other.Approval")
    assert _table_ids(other) == ["other::o0"]
    # "Approval" is the class name of tests.cli.Approval and of other.Approval.
    code, _, err = run_cli(capsys, *base, "--workflow", "Approval", "--status", "waiting")
    assert code == 2
    assert err.strip().splitlines() == [
        "hephaestus-trio list: error: --workflow: 'Approval' is not allowed; expected one of "
        "other.Approval, tests.cli.Approval (it is ambiguous)"
    ]
    _, none, _ = run_cli(capsys, *base, "--workflow", "Nope")
    assert none.strip() == "no runs match"


def test_since_takes_a_duration_or_an_iso_time(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    base = ["list", "--storage", url(dataset.path)]
    _, hour, _ = run_cli(capsys, *base, "--since", "1h")
    assert _table_ids(hour) == dataset.ids[-5:]  # created 50, 40, 30, 20 and 10 minutes ago
    _, mixed, _ = run_cli(capsys, *base, "--since", "1h15m", "--status", "pending")
    assert _table_ids(mixed) == ["lingering::p0", "other::o0", "broken::p0"]
    boundary = (dataset.now - timedelta(minutes=110)).isoformat()
    _, iso, _ = run_cli(capsys, *base, "--since", boundary)
    assert _table_ids(iso)[0] == "approval::w1"  # created exactly then: included
    assert len(_table_ids(iso)) == 8
    _, out, _ = run_cli(capsys, *base, "--since", "2099-01-01")
    assert out.strip() == "no runs match"


def test_a_long_listing_reports_progress_on_stderr(
    capsys: pytest.CaptureFixture[str], dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_inspect, "LIST_CHUNK", 3)
    code, out, err = run_cli(capsys, "list", "--storage", url(dataset.path), "--limit", "8")
    assert code == 0
    assert _table_ids(out) == dataset.ids[:8]
    assert CURSOR_LINE.search(out) is not None
    lines = err.splitlines()
    assert [line.split("list", 1)[1].strip() for line in lines] == [
        "read 3 of at most 8 runs...",
        "read 6 of at most 8 runs...",
        "read 8 runs in 3 queries",
    ]
    # --json keeps stdout pure JSON; the progress goes to stderr all the same.
    code, out, err = run_cli(
        capsys, "list", "--storage", url(dataset.path), "--limit", "8", "--json"
    )
    assert len(json.loads(out)["runs"]) == 8
    assert "read 8 runs in 3 queries" in err
    # One chunk is not long: no progress.
    code, out, err = run_cli(capsys, "list", "--storage", url(dataset.path), "--limit", "2")
    assert err == ""


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["--status", "sleeping"], ["--status: 'sleeping'", "pending, running, waiting", "comma"]),
        (["--status", "waiting,"], ["--status: ''", "completed, failed, cancelled"]),
        (["--since", "yesterday"], ["--since: 'yesterday'", "ISO date", "7d"]),
        (["--since", "2h ago"], ["--since: '2h ago'", "1h30m"]),
        (["--after", "not-a-cursor"], ["--after: 'not-a-cursor'", "a previous 'list' printed"]),
        (["--limit", "0"], ["--limit: '0'", "a positive integer"]),
        (["--limit", "ten"], ["--limit: 'ten'", "a positive integer"]),
    ],
)
def test_bad_options_are_one_line_errors_saying_what_is_allowed(
    capsys: pytest.CaptureFixture[str], dataset: Dataset, argv: list[str], fragments: list[str]
) -> None:
    code, out, err = run_cli(capsys, "list", "--storage", url(dataset.path), *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("hephaestus-trio list: error: ")
    for fragment in fragments:
        assert fragment in line


def test_bad_options_are_refused_before_the_storage_is_opened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = url(tmp_path / "missing.db")
    code, _, err = run_cli(capsys, "list", "--storage", missing, "--status", "nope")
    assert code == 2
    assert "--status: 'nope'" in err
    assert not (tmp_path / "missing.db").exists()


# -- stats -------------------------------------------------------------------------------


def test_stats_counts_by_workflow_and_status(
    capsys: pytest.CaptureFixture[str], dataset: Dataset
) -> None:
    code, out, err = run_cli(capsys, "stats", "--storage", url(dataset.path), "--json")
    assert (code, err) == (0, "")
    stats = json.loads(out)
    assert set(stats) == {
        "at",
        "total",
        "by_status",
        "by_workflow",
        "counts",
        "oldest_waiting",
        "timers",
    }
    at = datetime.fromisoformat(stats["at"])
    assert dataset.now <= at <= datetime.now(UTC)
    assert stats["total"] == 12
    assert stats["by_status"] == {
        "pending": 3,
        "running": 1,
        "waiting": 3,
        "completed": 3,
        "failed": 1,
        "cancelled": 1,
    }
    assert stats["by_workflow"]["tests.cli.Approval"] == {
        "pending": 0,
        "running": 0,
        "waiting": 3,
        "completed": 2,
        "failed": 0,
        "cancelled": 1,
    }
    assert stats["by_workflow"]["other.Approval"]["pending"] == 1
    assert stats["counts"] == [
        {"workflow": "other.Approval", "status": "pending", "count": 1},
        {"workflow": "tests.cli.Approval", "status": "cancelled", "count": 1},
        {"workflow": "tests.cli.Approval", "status": "completed", "count": 2},
        {"workflow": "tests.cli.Approval", "status": "waiting", "count": 3},
        {"workflow": "tests.cli.Broken", "status": "failed", "count": 1},
        {"workflow": "tests.cli.Broken", "status": "pending", "count": 1},
        {"workflow": "tests.cli.Lingering", "status": "completed", "count": 1},
        {"workflow": "tests.cli.Lingering", "status": "pending", "count": 1},
        {"workflow": "tests.cli.Lingering", "status": "running", "count": 1},
    ]
    oldest = stats["oldest_waiting"]
    assert oldest["id"] == "approval::w0"
    assert oldest["workflow"] == "tests.cli.Approval"
    assert 150 * 60 <= oldest["age_seconds"] < 150 * 60 + 60
    assert 150 * 60 <= oldest["waiting_seconds"] < 150 * 60 + 60
    timers = stats["timers"]
    assert timers["due"] == 1
    assert 5 * 60 <= timers["late_seconds"] < 5 * 60 + 60
    assert 59 * 60 < timers["next_in_seconds"] <= 60 * 60
    due_at = datetime.fromisoformat(timers["oldest_due_at"])
    assert abs(due_at - (dataset.now - timedelta(minutes=5))) < timedelta(milliseconds=1)

    code, out, err = run_cli(capsys, "stats", "--storage", url(dataset.path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    header = next(line for line in lines if "WORKFLOW" in line).split()
    assert header == [
        "WORKFLOW",
        "PENDING",
        "RUNNING",
        "WAITING",
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TOTAL",
    ]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith("    ")}
    assert rows["tests.cli.Approval"] == ["0", "0", "3", "2", "0", "1", "6"]
    assert rows["(all)"] == ["3", "1", "3", "3", "1", "1", "12"]
    oldest_line = next(line for line in lines if line.startswith("oldest waiting run:"))
    assert "approval::w0 (Approval, run " in oldest_line
    assert "(2h 30m ago)" in oldest_line
    due_line = next(line for line in lines if line.startswith("timers due now:"))
    assert due_line.startswith("timers due now: 1 (the oldest due ")
    assert re.search(r", 5m \d+s late;", due_line), due_line
    assert re.search(r"^next timer: \S+ \S+ \(in (59m \d+s|1h 0m)\)$", out, re.MULTILINE)


def test_stats_of_an_empty_database(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "empty.db"

    async def create() -> None:
        async with SQLiteStorage(path):
            pass

    trio.run(create)
    code, out, _ = run_cli(capsys, "stats", "--storage", url(path))
    assert code == 0
    assert "    no runs" in out
    assert "oldest waiting run: none" in out
    assert "timers due now: 0" in out
    assert "next timer: none" in out
    code, out, _ = run_cli(capsys, "stats", "--storage", url(path), "--json")
    stats = json.loads(out)
    assert (stats["total"], stats["counts"], stats["oldest_waiting"]) == (0, [], None)
    assert stats["timers"] == {
        "due": 0,
        "oldest_due_at": None,
        "late_seconds": None,
        "next_at": None,
        "next_in_seconds": None,
    }


# -- show --------------------------------------------------------------------------------


def test_show_prints_the_failure(capsys: pytest.CaptureFixture[str], dataset: Dataset) -> None:
    code, out, err = run_cli(capsys, "show", "broken::b0", "--storage", url(dataset.path))
    assert (code, err) == (0, "")
    failure = out[out.index("failure:") :].splitlines()
    assert failure[:6] == [
        "failure:",
        "    type:     KeyError",
        "    message:  'missing'",
        "    kind:     crash",
        "    step:     explode",
        "    attempt:  3",
    ]
    assert failure[6] == "traceback: (none recorded)"

    code, out, _ = run_cli(capsys, "show", "broken::b0", "--storage", url(dataset.path), "--json")
    shown = json.loads(out)
    assert set(shown) == {"run", "runs_sharing_id", "failure", "failed_attempts", "wakeups"}
    assert shown["failure"] == {
        "kind": "crash",
        "type": "KeyError",
        "message": "'missing'",
        "step": "explode",
        "attempt": 3,
        "traceback": None,
    }
    assert shown["run"]["error"] == shown["failure"]
    assert RUN_KEYS <= set(shown["run"])
    assert shown["failed_attempts"] == []
    assert shown["runs_sharing_id"] == 1


def test_show_lists_pending_wakeups(capsys: pytest.CaptureFixture[str], dataset: Dataset) -> None:
    async def record() -> None:
        async with SQLiteStorage(dataset.path) as storage:
            (run,) = await storage.query(id="approval::w2")
            now = datetime.now(UTC)
            resume = NewWakeup(
                run_id=run.run_id,
                kind=WakeupKind.RESUME,
                step="wait_for_event",
                event="approved",
                payload={"by": "ops"},
                dedup_key="k1",
                due_at=now,
            )
            await storage.add_wakeup(resume, now=now)
            await storage.add_wakeup(
                NewWakeup(run_id=run.run_id, kind=WakeupKind.CANCEL, due_at=now), now=now
            )

    trio.run(record)
    code, out, _ = run_cli(capsys, "show", "approval::w2", "--storage", url(dataset.path))
    assert code == 0
    pending = [line for line in out.splitlines() if line.startswith("pending:")]
    assert len(pending) == 2
    assert "wait_for_event <- 'approved' (recorded " in pending[0]
    assert "not applied yet" in pending[0]
    assert "cancel requested" in pending[1]
    assert "failure:" not in out

    code, out, _ = run_cli(capsys, "show", "approval::w2", "--storage", url(dataset.path), "--json")
    wakeups = json.loads(out)["wakeups"]
    assert [(w["kind"], w["step"], w["event"]) for w in wakeups] == [
        ("resume", "wait_for_event", "approved"),
        ("cancel", None, None),
    ]
    assert wakeups[0]["payload"] == {"by": "ops"}
    assert wakeups[0]["dedup_key"] == "k1"
    assert wakeups[0]["seq"] < wakeups[1]["seq"]
    # A timer is a wakeup too; the text lists it once, as a timer.
    code, out, _ = run_cli(capsys, "show", "approval::w0", "--storage", url(dataset.path), "--json")
    assert [w["kind"] for w in json.loads(out)["wakeups"]] == ["timer"]
    code, out, _ = run_cli(capsys, "show", "approval::w0", "--storage", url(dataset.path))
    assert len([line for line in out.splitlines() if line.startswith("timer:")]) == 1
    assert "pending:" not in out


# -- beside a running engine -------------------------------------------------------------


@pytest.fixture
def engine_db(tmp_path: Path) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """An empty database and an application's engine running on it in a child process."""
    path = tmp_path / "live.db"

    async def create() -> None:
        async with SQLiteStorage(path):
            pass

    trio.run(create)
    ready = tmp_path / "engine.ready"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(SRC), *sys.path])}
    with open(tmp_path / "engine.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, os.fspath(ENGINE_CHILD), os.fspath(path), os.fspath(ready)],
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
        yield path, proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _stats(capsys: pytest.CaptureFixture[str], path: Path) -> dict[str, Any]:
    code, out, err = run_cli(capsys, "stats", "--storage", url(path), "--json")
    assert (code, err) == (0, ""), err
    stats: dict[str, Any] = json.loads(out)
    return stats


def _until_stats(
    capsys: pytest.CaptureFixture[str], path: Path, done: Any, timeout: float = 15
) -> dict[str, Any]:
    """Poll ``stats --json`` (the command under test) until ``done(stats)``."""
    deadline = time.monotonic() + timeout
    while True:
        stats = _stats(capsys, path)
        if done(stats):
            return stats
        assert time.monotonic() < deadline, f"never reached; last stats: {stats}"
        time.sleep(0.05)


def test_read_commands_work_while_an_engine_runs(
    capsys: pytest.CaptureFixture[str],
    engine_db: tuple[Path, subprocess.Popen[bytes]],
) -> None:
    """The engine drives runs the test adds; list/show/stats read meanwhile, read-only."""
    path, engine = engine_db
    started = datetime.now(UTC)

    async def start(count: int) -> None:
        async with SQLiteStorage(path) as storage:
            for n in range(count):
                now = datetime.now(UTC)
                await storage.create(
                    Instance.new(Approval, {}, id=f"approval::l{n}", now=now), now=now
                )
            now = datetime.now(UTC)
            await storage.create(Instance.new(Broken, {}, id="broken::l0", now=now), now=now)

    trio.run(start, 30)
    # Read while the engine claims the runs and writes every step.
    listed: set[str] = set()
    stats = _stats(capsys, path)
    assert stats["total"] == 31
    while True:
        code, out, err = run_cli(capsys, "list", "--storage", url(path), "--json", "--limit", "7")
        assert (code, err) == (0, "")
        page = json.loads(out)
        listed.update(r["id"] for r in page["runs"])
        cursor = page["next_cursor"]
        while cursor is not None:
            code, out, err = run_cli(
                capsys, "list", "--storage", url(path), "--json", "--limit", "7", "--after", cursor
            )
            assert (code, err) == (0, "")
            page = json.loads(out)
            listed.update(r["id"] for r in page["runs"])
            cursor = page["next_cursor"]
        break
    assert len(listed) == 31  # every run, on whatever page, while statuses changed

    stats = _until_stats(
        capsys,
        path,
        lambda s: s["by_status"]["waiting"] == 30 and s["by_status"]["failed"] == 1,
    )
    assert stats["by_workflow"]["tests.cli.Approval"]["waiting"] == 30
    assert stats["by_workflow"]["tests.cli.Broken"]["failed"] == 1
    assert stats["oldest_waiting"]["id"] == "approval::l0"
    assert datetime.fromisoformat(stats["oldest_waiting"]["created_at"]) >= started
    assert stats["timers"]["due"] == 0

    code, out, err = run_cli(capsys, "show", "broken::l0", "--storage", url(path), "--json")
    assert (code, err) == (0, "")
    failure = json.loads(out)["failure"]
    assert (failure["kind"], failure["type"], failure["step"]) == ("crash", "KeyError", "explode")
    assert failure["message"] == "'missing'"
    assert failure["attempt"] == 2
    assert "KeyError: 'missing'" in failure["traceback"]
    assert 'return str({}["missing"])' in failure["traceback"]  # the line that raised
    attempts = json.loads(out)["failed_attempts"]
    assert [(a["step"], a["attempt"], a["error"]["type"]) for a in attempts] == [
        ("explode", 1, "KeyError"),
        ("explode", 2, "KeyError"),
    ]
    code, out, _ = run_cli(capsys, "show", "broken::l0", "--storage", url(path))
    assert "failed attempts:" in out
    assert "traceback:\n    Traceback (most recent call last):" in out

    code, out, _ = run_cli(
        capsys, "list", "--storage", url(path), "--status", "waiting", "--since", "10m", "--json"
    )
    waiting = json.loads(out)["runs"]
    assert [r["id"] for r in waiting] == [f"approval::l{n}" for n in range(30)]

    # Resume some through the CLI and watch the engine finish them, in stats and list.
    for n in range(3):
        code, _, err = run_cli(
            capsys, "resume", f"approval::l{n}", "approved", "--storage", url(path), "--wait", "0"
        )
        assert (code, err) == (0, "")
    stats = _until_stats(capsys, path, lambda s: s["by_status"]["completed"] == 3)
    assert stats["by_status"]["waiting"] == 27
    assert stats["oldest_waiting"]["id"] == "approval::l3"
    code, out, _ = run_cli(
        capsys, "list", "--storage", url(path), "--status", "completed", "--workflow", "Approval"
    )
    assert _table_ids(out) == ["approval::l0", "approval::l1", "approval::l2"]
    assert engine.poll() is None  # the engine lived through it all
