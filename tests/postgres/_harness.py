"""Harness of the multi-engine PostgreSQL tests: engine processes, commands, the side log.

Every wait here is bounded and waits on a real condition (a marker file, a
result file, a row in the database) polled every few milliseconds under a
deadline; nothing sleeps for a fixed time to let something happen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from hephaestus_trio import Instance, PostgresStorage, Status

from . import _pg_app as app

APP = Path(__file__).with_name("_pg_app.py")
SRC = Path(__file__).resolve().parents[2] / "src"
TIMEOUT = 30.0


def child_env() -> dict[str, str]:
    """Children import this tree's sources first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([os.fspath(SRC), *sys.path])}


@attrs.frozen
class Line:
    """One step execution, as the side log recorded it when the step started."""

    instance: str
    step: str
    pid: int
    at: float


@attrs.define
class Engines:
    """Engine processes on one database, their work folder, and what they recorded."""

    dsn: str
    workdir: Path
    procs: dict[str, subprocess.Popen[bytes]] = attrs.Factory(dict)
    sent: Counter[str] = attrs.Factory(Counter)

    def __attrs_post_init__(self) -> None:
        for sub in ("markers", "results", "commands"):
            (self.workdir / sub).mkdir(exist_ok=True)

    # -- processes ---------------------------------------------------------------

    def start(self, role: str, settings: app.EngineSettings | None = None) -> int:
        """Start engine process ``role``; returns its pid (wait for ``ready`` before use)."""
        settings = settings or app.EngineSettings()
        with open(self.workdir / f"engine-{role}.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    os.fspath(APP),
                    self.dsn,
                    os.fspath(self.workdir),
                    role,
                    settings.to_json(),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=child_env(),
            )
        self.procs[role] = proc
        return proc.pid

    async def ready(self, *roles: str) -> None:
        await self.wait_for([f"ready-{role}" for role in roles])

    def engine_id(self, role: str) -> str:
        return (self.workdir / "markers" / f"engine-{role}").read_text()

    def output(self, role: str | None = None) -> str:
        roles = [role] if role is not None else sorted(self.procs)
        parts = []
        for r in roles:
            log = self.workdir / f"engine-{r}.log"
            parts.append(
                f"--- engine {r}:\n" + (log.read_text(errors="replace") if log.exists() else "")
            )
        return "\n".join(parts)

    def check_alive(self, *, except_: Iterable[str] = ()) -> None:
        for role, proc in self.procs.items():
            if role not in except_ and proc.poll() is not None:
                pytest.fail(f"engine {role} exited with {proc.returncode}:\n{self.output(role)}")

    def kill(self, role: str) -> float:
        """SIGKILL engine ``role`` and reap it; returns when (unix time)."""
        proc = self.procs[role]
        assert proc.poll() is None, self.output(role)
        at = time.time()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL
        return at

    def pause(self, role: str) -> float:
        """SIGSTOP engine ``role``: every task of it freezes, its renewals included."""
        at = time.time()
        self.procs[role].send_signal(signal.SIGSTOP)
        return at

    def wake(self, role: str) -> None:
        self.procs[role].send_signal(signal.SIGCONT)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                proc.wait(timeout=10)

    # -- commands ------------------------------------------------------------------

    def send(self, role: str, command: dict[str, Any]) -> str:
        """Drop a command for engine ``role``; returns its name (see ``result``)."""
        n = self.sent[role]
        self.sent[role] += 1
        name = f"{n:04d}"
        inbox = self.workdir / "commands" / role
        inbox.mkdir(exist_ok=True)
        app.write_atomically(inbox / f"{name}.json", json.dumps(command))
        return name

    async def result(self, role: str, name: str, timeout: float = TIMEOUT) -> dict[str, str]:
        path = self.workdir / "results" / f"{role}-{name}.json"
        await self.until_true(path.exists, f"result {role}-{name}", timeout)
        return dict(json.loads(path.read_text()))

    # -- waiting -----------------------------------------------------------------------

    async def until_true(self, condition: Callable[[], bool], what: str, timeout: float) -> None:
        with trio.move_on_after(timeout):
            while not condition():
                self.check_alive(except_=self._dead())
                await trio.sleep(0.005)
            return
        pytest.fail(f"{what} not reached after {timeout}s:\n{self.output()}")

    def _dead(self) -> set[str]:
        # Engines the test killed on purpose (returncode -SIGKILL) are not failures.
        return {r for r, p in self.procs.items() if p.returncode == -signal.SIGKILL}

    async def wait_for(self, names: Iterable[str], timeout: float = TIMEOUT) -> None:
        wanted = list(names)

        def present() -> bool:
            return all((self.workdir / "markers" / n).exists() for n in wanted)

        await self.until_true(present, f"markers {wanted}", timeout)

    async def runs(self) -> dict[str, Instance]:
        async with PostgresStorage(self.dsn) as storage:
            return {i.id: i for i in await storage.query()}

    async def until(self, want: dict[str, Status], timeout: float = TIMEOUT) -> dict[str, Instance]:
        """Poll the database until every run of ``want`` has its status; the runs then."""
        found: dict[str, Instance] = {}
        async with PostgresStorage(self.dsn) as storage:
            with trio.move_on_after(timeout):
                while True:
                    found = {i.id: i for i in await storage.query()}
                    if all(id in found and found[id].status is s for id, s in want.items()):
                        return found
                    self.check_alive(except_=self._dead())
                    await trio.sleep(0.02)
        states = {i: r.status.value for i, r in found.items() if i in want}
        pytest.fail(f"runs never reached {want}: {states}\n{self.output()}")

    # -- the side log ------------------------------------------------------------------

    def lines(self) -> list[Line]:
        side = self.workdir / "side.log"
        if not side.exists():
            return []
        out = []
        for text in side.read_text().splitlines():
            instance, step, pid, at = text.split()
            out.append(Line(instance, step, int(pid), float(at)))
        return out

    def executions(self, instance: str, step: str) -> list[Line]:
        return [x for x in self.lines() if (x.instance, x.step) == (instance, step)]


def history(inst: Instance) -> list[tuple[str, str]]:
    return [(e.step, e.event) for e in inst.execution_history]


def assert_ended_as_uncrashed(inst: Instance, initial: dict[str, Any]) -> None:
    """A completed run whose history and context are exactly those of an uncrashed run."""
    assert inst.status is Status.COMPLETED, (inst.id, inst.status, inst.error)
    assert max(Counter(e.step for e in inst.execution_history).values()) == 1, history(inst)
    assert inst.timers == ()
    n = initial["n"]
    values = {k: v["value"] for k, v in inst.context.steps.items() if "value" in v}
    assert values == {s: n * f for s, f in app.FACTORS.items() if s in inst.completed_steps}


async def wait_until(
    condition: Callable[[], Any], what: str, timeout: float = TIMEOUT, every: float = 0.01
) -> None:
    """Await ``condition()`` (a coroutine function) until it is true, under a deadline."""
    with trio.move_on_after(timeout):
        while not await condition():
            await trio.sleep(every)
        return
    pytest.fail(f"{what} not reached after {timeout}s")
