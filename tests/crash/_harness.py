"""Harness of the crash tests: spawn the child, wait for its markers, SIGKILL, compare.

Every wait here is bounded and event-driven: markers are polled on the file
system every few milliseconds under an overall ``trio.fail_after``, and the
in-process engines run under ``trio.fail_after`` too.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest
import trio
import trio.testing

from hephaestus_trio import Instance, MemoryStorage, SQLiteStorage, Status, open_engine
from hephaestus_trio.storage import WakeupKind

from . import _crash_app as app

APP = Path(__file__).with_name("_crash_app.py")
MARKER_TIMEOUT = 15.0
RUN_TIMEOUT = 10.0
# Steps of the app that write to the side file (the built-in ones do not).
RECORDING = frozenset({"prepare", "work", "finish", "left", "right", "join", "flaky"})


@attrs.frozen
class Line:
    """One execution recorded in the side file."""

    instance: str
    step: str
    pid: int


@attrs.define
class Child:
    """One engine process on ``db``."""

    scenario: str
    db: Path
    side: Path
    markers: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def runs(self) -> tuple[app.Run, ...]:
        return app.SCENARIOS[self.scenario]

    def start(self) -> None:
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    os.fspath(APP),
                    os.fspath(self.db),
                    os.fspath(self.side),
                    os.fspath(self.markers),
                    self.scenario,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    async def wait_for(self, names: Iterable[str], timeout: float = MARKER_TIMEOUT) -> None:
        """Poll the marker folder until every marker in ``names`` exists."""
        assert self.proc is not None
        wanted = list(names)
        missing = wanted
        with trio.move_on_after(timeout):
            while True:
                missing = [n for n in wanted if not (self.markers / n).exists()]
                if not missing:
                    return
                if self.proc.poll() is not None:
                    pytest.fail(
                        f"child exited with {self.proc.returncode} before writing {missing}:\n"
                        f"{self.output()}"
                    )
                await trio.sleep(0.005)
        pytest.fail(f"no marker {missing} after {timeout}s; child output:\n{self.output()}")

    def kill(self) -> None:
        """SIGKILL the child and reap it."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        assert self.proc.returncode == -signal.SIGKILL, self.output()

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def lines(self) -> list[Line]:
        if not self.side.exists():
            return []
        out = []
        for text in self.side.read_text().splitlines():
            instance, step, nonce = text.split()
            out.append(Line(instance, step, int(nonce.split("-")[0])))
        return out


# -- the three runs a crash test compares ------------------------------------------------


async def persisted(db: Path, runs: Iterable[app.Run]) -> dict[str, Instance]:
    """What the file holds for each run (read after the kill, before any restart)."""
    async with SQLiteStorage(db) as storage:
        found = {}
        for run in runs:
            [inst] = await storage.query(id=run.id)
            found[run.id] = inst
        return found


async def pending_resumes(db: Path) -> list[tuple[str, str | None, str | None]]:
    """``(run_id, step, event)`` of every unapplied resume wakeup in the file."""
    async with SQLiteStorage(db) as storage:
        found = []
        for inst in await storage.query():
            found += [
                (w.run_id, w.step, w.event)
                for w in await storage.wakeups(inst.run_id)
                if w.kind is WakeupKind.RESUME
            ]
        return found


async def restart(child: Child, *, resume: bool = False) -> dict[str, Instance]:
    """A fresh engine on the child's file, in this process; runs every run to its end.

    Its steps record to the same side file (never blocking), under this pid.
    """
    app.configure(child.side)
    storage = SQLiteStorage(child.db)
    async with open_engine(storage=storage, workflows=app.WORKFLOWS) as engine:
        with trio.fail_after(RUN_TIMEOUT):
            if resume:
                for run in child.runs:
                    await engine.resume(run.id, app.RESUME_EVENT)
            return {run.id: await engine.wait(run.id) for run in child.runs}


async def _reference(scenario: str) -> dict[str, Instance]:
    runs = app.SCENARIOS[scenario]
    async with open_engine(storage=MemoryStorage(), workflows=app.WORKFLOWS) as engine:
        for run in runs:
            await engine.start_instance(run.workflow, run.initial, id=run.id)
        if scenario in ("parked", "after_resume"):
            for run in runs:
                await app.until_waiting(engine, run.id)
                await engine.resume(run.id, app.RESUME_EVENT)
        return {run.id: await engine.wait(run.id) for run in runs}


async def reference(scenario: str) -> dict[str, Instance]:
    """The same runs, uncrashed, in this process (a worker thread, on virtual time)."""
    app.configure(None)
    try:
        run = functools.partial(
            trio.run, _reference, scenario, clock=trio.testing.MockClock(autojump_threshold=0)
        )
        return await trio.to_thread.run_sync(run)
    finally:
        app.configure(None)


# -- assertions ----------------------------------------------------------------------------


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.completions]


def assert_recovered(
    child: Child,
    before: dict[str, Instance],
    after: dict[str, Instance],
    expected: dict[str, Instance],
) -> None:
    """Same ends as the uncrashed reference; nothing completed before the kill ran again."""
    lines = child.lines()
    me = os.getpid()
    assert {line.pid for line in lines} <= {child.pid, me}
    for run in child.runs:
        got, ref, old = after[run.id], expected[run.id], before[run.id]
        assert got.status is ref.status is Status.COMPLETED, got.error
        assert got.completed_steps == ref.completed_steps
        assert got.context.steps == ref.context.steps
        # One completion per step, the same ones as the reference (fan-outs may
        # complete their branches in either order).
        assert sorted(history(got)) == sorted(history(ref))
        assert max(Counter(e.step for e in got.completions).values()) == 1
        assert got.timers == ()
        mine = [line for line in lines if line.instance == run.id]
        for step in {e.step for e in old.completions}:
            again = [line for line in mine if line.step == step and line.pid == me]
            assert not again, f"{run.id}: {step} completed before the kill and ran again"
        for step in got.completed_steps & RECORDING:
            assert any(line.step == step for line in mine), f"{run.id}: {step} never ran"


def executions(child: Child, instance: str, step: str) -> tuple[int, int]:
    """(runs in the killed child, runs after the restart) of one step."""
    lines = [x for x in child.lines() if x.instance == instance and x.step == step]
    return (
        sum(1 for x in lines if x.pid == child.pid),
        sum(1 for x in lines if x.pid == os.getpid()),
    )
