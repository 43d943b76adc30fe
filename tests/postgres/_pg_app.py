"""The application engine processes run in the multi-engine PostgreSQL tests.

Each engine process runs this module as a script::

    python _pg_app.py DSN WORKDIR ROLE SETTINGS_JSON

It opens one engine on ``PostgresStorage(DSN)`` with the lease settings of
``SETTINGS_JSON`` (``ttl``, ``renewal``, ``poll``, ``notify``), writes the
marker ``ready-<role>`` and then obeys commands the test drops into
``WORKDIR/commands/<role>/`` (``<n>.json``: start runs, resume runs), writing
``WORKDIR/results/<role>-<n>.json`` once each is done. It runs until killed
(or for ``LIFETIME`` seconds, so a process whose test died never lingers).
The test process imports this module too, for the workflow classes.

Every recording step appends ``"<instance_id> <step_key> <pid> <unix time>"``
to ``WORKDIR/side.log`` when it *starts* (one ``write`` of an ``O_APPEND``
file, then ``fsync``), so the file is a durable log of every execution, those
a SIGKILL interrupted included, whichever process ran it. ``Hold`` blocks
(after writing the marker ``<instance>.hold``) only in the process whose role
is the run's ``context.initial["block_in"]``, for ``initial["block_s"]``
seconds (default: ``LIFETIME``); elsewhere it takes ``initial["hold_s"]``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from hephaestus_trio import (
    AlreadyRunning,
    Complete,
    Done,
    Instance,
    PostgresStorage,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
)

LIFETIME = 60.0
"""Seconds a blocked step or an idle engine process lasts if nobody kills it."""


@attrs.define
class Settings:
    workdir: Path | None = None
    role: str | None = None


SETTINGS = Settings()


def configure(workdir: Path | None, role: str | None = None) -> None:
    """Where this process records executions and markers, and its role."""
    global SETTINGS
    SETTINGS = Settings(workdir=workdir, role=role)


def marker_name(instance_id: str, step_key: str) -> str:
    return f"{instance_id.replace(':', '_')}.{step_key}"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.rename(path)


def write_marker(name: str) -> None:
    assert SETTINGS.workdir is not None
    write_atomically(SETTINGS.workdir / "markers" / name, str(os.getpid()))


WORKDIR_ENV = "HEPHAESTUS_PG_TEST_WORKDIR"
"""When set, steps record to this folder's side log even in a process that did not call
``configure`` (the command line imports this module by its path: a step it ran would show)."""


def record(instance_id: str, step_key: str) -> None:
    workdir = SETTINGS.workdir or (
        Path(os.environ[WORKDIR_ENV]) if WORKDIR_ENV in os.environ else None
    )
    if workdir is None:
        return
    line = f"{instance_id} {step_key} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(workdir / "side.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of an O_APPEND file: lines never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


class Recorded(Step):
    events = ("ok",)
    step_key = "recorded"
    factor = 1

    async def execute(self, instance: Instance, config: Any, context: Any) -> Complete:
        record(instance.id, type(self).step_key)
        await self.work(instance, context)
        return Complete("ok", updates={"value": context.initial["n"] * type(self).factor})

    async def work(self, instance: Instance, context: Any) -> None:
        await trio.sleep(0)


class Prepare(Recorded):
    step_key = "prepare"
    factor = 2


class Hold(Recorded):
    step_key = "hold"
    factor = 3

    async def work(self, instance: Instance, context: Any) -> None:
        initial = context.initial
        if SETTINGS.role is not None and SETTINGS.role == initial.get("block_in"):
            write_marker(marker_name(instance.id, "hold"))
            await trio.sleep(float(initial.get("block_s", LIFETIME)))
            return
        await trio.sleep(float(initial.get("hold_s", 0.02)))


class Finish(Recorded):
    step_key = "finish"
    factor = 5


class Approve(Workflow, unique=Unique(key="approve"), name="pg.approve"):
    """prepare -> wait for "go" (the run hibernates) -> finish -> done."""

    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "go"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


class Held(Workflow, unique=Unique(key="held"), name="pg.held"):
    """prepare -> hold (blocks in the role named by ``block_in``) -> finish -> done."""

    start_at = Prepare
    transitions = {(Prepare, "ok"): Hold, (Hold, "ok"): Finish, (Finish, "ok"): Done}


class Gated(Workflow, unique=Unique(key="gated"), name="pg.gated"):
    """prepare -> hold -> wait for "go" -> finish -> done: a resume may arrive mid-hold."""

    start_at = Prepare
    transitions = {
        (Prepare, "ok"): Hold,
        (Hold, "ok"): (WaitForEvent, {"event_name": "go"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


class Order(Workflow, unique=Unique(key="order"), name="pg.order"):
    """prepare -> finish -> done."""

    start_at = Prepare
    transitions = {(Prepare, "ok"): Finish, (Finish, "ok"): Done}


class Contested(Workflow, unique=Unique(key="contested"), name="pg.contested"):
    """prepare -> wait for "go" -> finish -> done: the key 50 concurrent starts compete for.

    The run stays live, parked, until the test resumes it: every start meets a
    live run however fast the first one got to its end.
    """

    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "go"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


WORKFLOWS: tuple[type[Workflow], ...] = (Approve, Held, Gated, Order, Contested)
BY_NAME = {w.__name__: w for w in WORKFLOWS}
FACTORS = {"prepare": 2, "hold": 3, "finish": 5}


@attrs.frozen
class EngineSettings:
    """Lease and storage settings of one engine process (JSON on its command line)."""

    ttl: float = 1.0
    renewal: float = 0.2
    poll: float = 0.2
    notify: bool = True

    def to_json(self) -> str:
        return json.dumps(attrs.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> EngineSettings:
        return cls(**json.loads(text))


def engine_storage(dsn: str, settings: EngineSettings) -> PostgresStorage:
    return PostgresStorage(dsn, poll_interval=settings.poll, notify=settings.notify)


# -- commands ------------------------------------------------------------------------


async def _start(engine: Any, runs: list[list[Any]]) -> dict[str, str]:
    """Start every ``[workflow class name, id, initial]`` concurrently; outcome per start."""
    outcome: dict[str, str] = {}

    async def one(n: int, name: str, id: str, initial: dict[str, Any]) -> None:
        try:
            await engine.start_instance(BY_NAME[name], initial, id=id)
            outcome[str(n)] = "started"
        except AlreadyRunning:
            outcome[str(n)] = "already_running"

    async with trio.open_nursery() as nursery:
        for n, (name, id, initial) in enumerate(runs):
            nursery.start_soon(one, n, name, id, initial)
    return outcome


async def _resume(engine: Any, ids: list[str], event: str) -> dict[str, str]:
    """Resume every id (bounded concurrency); outcome per id."""
    outcome: dict[str, str] = {}
    limiter = trio.CapacityLimiter(16)

    async def one(id: str) -> None:
        async with limiter:
            await engine.resume(id, event)
            outcome[id] = "accepted"

    async with trio.open_nursery() as nursery:
        for id in ids:
            nursery.start_soon(one, id)
    return outcome


async def _obey(engine: Any, workdir: Path, role: str) -> None:
    inbox = workdir / "commands" / role
    inbox.mkdir(parents=True, exist_ok=True)
    done: set[str] = set()
    while True:
        for path in sorted(inbox.glob("*.json")):
            if path.name in done:
                continue
            done.add(path.name)
            command = json.loads(path.read_text())
            if command["op"] == "start":
                result = await _start(engine, command["runs"])
            elif command["op"] == "resume":
                result = await _resume(engine, command["ids"], command["event"])
            else:
                raise ValueError(f"unknown command {command!r}")
            write_atomically(workdir / "results" / f"{role}-{path.stem}.json", json.dumps(result))
        await trio.sleep(0.01)


async def child(dsn: str, workdir: Path, role: str, settings: EngineSettings) -> None:
    async with open_engine(
        engine_storage(dsn, settings),
        workflows=WORKFLOWS,
        lease_ttl=settings.ttl,
        lease_renewal=settings.renewal,
    ) as engine:
        write_atomically(workdir / "markers" / f"engine-{role}", engine.engine_id)
        write_marker(f"ready-{role}")
        with trio.move_on_after(LIFETIME):
            await _obey(engine, workdir, role)


def main(argv: Sequence[str]) -> None:
    dsn, workdir, role, settings = argv
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s {role} %(levelname)s %(name)s: %(message)s",
    )
    configure(Path(workdir), role)
    trio.run(functools.partial(child, dsn, Path(workdir), role, EngineSettings.from_json(settings)))


if __name__ == "__main__":
    main(sys.argv[1:])
