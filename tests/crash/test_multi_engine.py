"""Two engine processes on one SQLite file, the command line steering runs meanwhile.

Engines ``a`` and ``b`` (``_multi_app.py``, each in its own process) start
their own runs on one file. While both run, the command line (``python -m
hephaestus_trio``, as subprocesses) resumes parked runs and cancels a parked
run and a run busy in a step. Then ``a`` is SIGKILLed mid-step: ``b`` must
take its runs over promptly (the dead engine's lock file proves its death, so
well before the 30 s lease TTL). A resume accepted meanwhile is applied by the
survivor. Then ``b`` is SIGKILLed mid-step too, a resume is recorded with no
engine running, and a restarted engine (in this process) takes over the
leftovers.

At the end every run ends as an uncrashed run would (completed, or cancelled
for the cancelled ones), no step ran twice unless it was running when its
engine was killed (at-least-once), every accepted resume is in its run's
history once and no wakeup row is left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from hephaestus_trio import Instance, SQLiteStorage, Status, open_engine

from . import _multi_app as app

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX"),
]

APP = Path(__file__).with_name("_multi_app.py")
SRC = Path(__file__).resolve().parents[2] / "src"
TTL = 30.0  # the default lease_ttl, which the engines keep
PROMPT = 5.0  # takeover must happen well under the TTL
TIMEOUT = 20.0


def child_env() -> dict[str, str]:
    """Children import this tree's sources first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(SRC), *sys.path])}


@attrs.frozen
class Line:
    instance: str
    step: str
    pid: int
    at: float


@attrs.define
class Setup:
    tmp: Path
    procs: dict[str, subprocess.Popen[bytes]] = attrs.Factory(dict)

    @property
    def db(self) -> Path:
        return self.tmp / "multi.db"

    @property
    def side(self) -> Path:
        return self.tmp / "side.log"

    @property
    def markers(self) -> Path:
        return self.tmp / "markers"

    def start(self, role: str) -> subprocess.Popen[bytes]:
        with open(self.tmp / f"engine-{role}.log", "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, *map(os.fspath, (APP, self.db, self.side, self.markers)), role],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(),
            )
        self.procs[role] = proc
        return proc

    def output(self, role: str) -> str:
        log = self.tmp / f"engine-{role}.log"
        return log.read_text(errors="replace") if log.exists() else ""

    async def wait_for(self, names: Iterable[str]) -> None:
        wanted = list(names)
        with trio.move_on_after(TIMEOUT):
            while missing := [n for n in wanted if not (self.markers / n).exists()]:
                for role, proc in self.procs.items():
                    if proc.poll() is not None:
                        pytest.fail(f"engine {role} exited early:\n{self.output(role)}")
                await trio.sleep(0.005)
            return
        pytest.fail(f"no marker {missing}; engines said:\n{self.output('a')}{self.output('b')}")

    def kill(self, role: str) -> float:
        """SIGKILL engine ``role``; returns when it was killed (unix time)."""
        proc = self.procs[role]
        assert proc.poll() is None, self.output(role)
        killed_at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        return killed_at

    def lines(self) -> list[Line]:
        if not self.side.exists():
            return []
        out = []
        for text in self.side.read_text().splitlines():
            instance, step, pid, at = text.split()
            out.append(Line(instance, step, int(pid), float(at)))
        return out

    def executions(self, instance: str, step: str, pid: int) -> list[Line]:
        return [x for x in self.lines() if (x.instance, x.step, x.pid) == (instance, step, pid)]

    async def cli(self, *argv: str) -> str:
        """Run one command line subprocess; returns its stdout (it must succeed)."""
        done = await trio.run_process(
            [
                sys.executable,
                "-m",
                "hephaestus_trio",
                *argv,
                "--storage",
                f"sqlite:///{self.db}",
                "--workflow-module",
                os.fspath(APP),
            ],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=child_env(),
        )
        out = done.stdout.decode()
        assert done.returncode == 0, (argv, out, done.stderr.decode())
        assert done.stderr == b"", done.stderr.decode()
        return out

    async def runs(self) -> dict[str, Instance]:
        async with SQLiteStorage(self.db) as storage:
            return {i.id: i for i in await storage.query()}

    async def until(self, want: dict[str, Status]) -> dict[str, Instance]:
        with trio.move_on_after(TIMEOUT):
            while True:
                found = await self.runs()
                if all(id in found and found[id].status is s for id, s in want.items()):
                    return found
                await trio.sleep(0.02)
        pytest.fail(f"runs never reached {want}: {[(i, r.status) for i, r in found.items()]}")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    s.markers.mkdir()
    try:
        yield s
    finally:
        for proc in s.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        app.configure(None)


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.execution_history]


async def test_two_engine_processes_the_cli_and_sigkill(setup: Setup) -> None:
    a, b = setup.start("a"), setup.start("b")
    await setup.wait_for(["ready-a", "ready-b"])

    # -- both engines run: the command line steers runs of each --------------------
    outputs: dict[str, str] = {}

    async def cli(name: str, *argv: str) -> None:
        outputs[name] = await setup.cli(*argv)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(cli, "resume a1", "resume", "approve::a1", "go")
        nursery.start_soon(
            cli,
            "resume b1",
            "resume",
            "approve::b1",
            "go",
            "--payload",
            '{"by": "cli"}',
            "--dedup-key",
            "hook-1",
        )
        nursery.start_soon(cli, "cancel a3", "cancel", "approve::a3")  # parked: nobody owns it
        nursery.start_soon(cli, "cancel linger", "cancel", "lingering::a")  # owned by a, busy
    for name in ("resume a1", "resume b1"):
        assert "accepted" in outputs[name]
        assert "not applied yet" not in outputs[name]
    assert "cancelled approve::a3" in outputs["cancel a3"]
    assert "cancelled lingering::a" in outputs["cancel linger"]
    assert "it was running" in outputs["cancel linger"]
    # The same webhook again: a no-op.
    again = await setup.cli(
        "resume", "approve::b1", "go", "--payload", '{"by": "x"}', "--dedup-key", "hook-1"
    )
    assert "already recorded: nothing to do" in again
    await setup.until(
        {
            "approve::a1": Status.COMPLETED,
            "approve::b1": Status.COMPLETED,
            "approve::a3": Status.CANCELLED,
            "lingering::a": Status.CANCELLED,
        }
    )

    # -- SIGKILL a mid-step: b takes over at once, and applies a resume meanwhile ----
    assert (await setup.runs())["held::a"].running_steps == {"hold"}
    killed_a = setup.kill("a")
    out = await setup.cli("resume", "approve::a2", "go")
    assert "accepted" in out
    await setup.until({"held::a": Status.COMPLETED, "approve::a2": Status.COMPLETED})
    [rerun] = [
        x for x in setup.lines() if (x.instance, x.step, x.pid) == ("held::a", "hold", b.pid)
    ]
    took = rerun.at - killed_a
    assert took < PROMPT < TTL, f"b took over a's run {took:.2f}s after the kill"

    # -- SIGKILL b mid-step; a resume recorded while no engine runs ------------------
    assert (await setup.runs())["held::b"].running_steps == {"hold"}
    setup.kill("b")
    out = await setup.cli("resume", "approve::b2", "go", "--wait", "0")
    assert "accepted" in out
    leftovers = await setup.runs()
    assert leftovers["approve::b2"].status is Status.WAITING
    assert leftovers["held::b"].status is Status.RUNNING

    # -- a restarted engine (here) takes over the leftovers -------------------------
    app.configure(setup.side, setup.markers, role="restarted")
    restarted_at = time.time()
    async with open_engine(
        app.engine_storage(setup.db), workflows=app.WORKFLOWS, lease_renewal=app.LEASE_RENEWAL
    ) as engine:
        with trio.fail_after(TIMEOUT):
            for id in ("held::b", "approve::b2"):
                await engine.wait(id)
    me = os.getpid()
    [rerun] = setup.executions("held::b", "hold", me)
    assert rerun.at - restarted_at < PROMPT

    # -- every run ended as an uncrashed one would --------------------------------------
    final = await setup.runs()
    cancelled = {"approve::a3", "lingering::a"}
    runs = {run.id: run for role in ("a", "b") for run in app.RUNS[role]}
    assert set(final) == set(runs)
    factors = {"prepare": 2, "hold": 3, "finish": 5}
    async with SQLiteStorage(setup.db) as storage:
        for id, inst in final.items():
            assert await storage.wakeups(inst.run_id) == [], id
            assert inst.status is (Status.CANCELLED if id in cancelled else Status.COMPLETED)
            assert max(Counter(e.step for e in inst.execution_history).values()) == 1, id
            assert inst.timers == ()
            if id in cancelled:
                assert inst.completed_steps == {"prepare"}
                continue
            n = runs[id].initial["n"]
            expected = {step: n * f for step, f in factors.items() if step in inst.completed_steps}
            assert {k: v["value"] for k, v in inst.context.steps.items() if "value" in v} == (
                expected
            )
            if id.startswith("approve::"):
                assert inst.completed_steps == {"prepare", "wait_for_event", "finish", "done"}
                assert history(inst).count(("wait_for_event", "received")) == 1
            else:
                assert inst.completed_steps == {"prepare", "hold", "finish", "done"}
    assert final["approve::b1"].context.steps["wait_for_event"]["by"] == "cli"

    # -- executions: at-least-once only where an engine died mid-step ------------------
    lines = setup.lines()
    count = Counter((x.instance, x.step) for x in lines)
    by_pid: dict[tuple[str, str], list[int]] = {}
    for x in lines:
        by_pid.setdefault((x.instance, x.step), []).append(x.pid)
    assert by_pid[("held::a", "hold")] == [a.pid, b.pid]
    assert by_pid[("held::b", "hold")] == [b.pid, me]
    for key, n in count.items():
        if key not in {("held::a", "hold"), ("held::b", "hold")}:
            assert n == 1, f"{key} ran {n} times"
    assert count[("lingering::a", "linger")] == 1
    assert ("approve::a3", "finish") not in count
    for id, inst in final.items():
        for step in inst.completed_steps & set(factors):
            assert count[(id, step)] >= 1, f"{id}: {step} never ran"


async def test_an_idle_survivor_takes_over_a_dead_engines_runs_promptly(setup: Setup) -> None:
    """The survivor here owns nothing when its peer dies (every run of its own hibernates):
    its storage poll proves the peer dead and it takes over well before the lease TTL."""
    setup.start("a")
    await setup.wait_for(["ready-a"])
    app.configure(setup.side, setup.markers, role="survivor")
    async with open_engine(
        app.engine_storage(setup.db), workflows=app.WORKFLOWS, lease_renewal=app.LEASE_RENEWAL
    ) as engine:
        assert engine.live_tasks == 0
        killed_at = setup.kill("a")
        with trio.move_on_after(PROMPT):
            while not setup.executions("held::a", "hold", os.getpid()):
                await trio.sleep(0.02)
        [rerun] = setup.executions("held::a", "hold", os.getpid())
        assert rerun.at - killed_at < PROMPT
