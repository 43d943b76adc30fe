"""The application two engine processes share in ``test_multi_engine.py``.

Both engine processes run this module as a script
(``python _multi_app.py DB SIDE MARKERS ROLE``); the test process imports it
as part of the ``tests/crash`` package for the engine it restarts. Registry
names are explicit so every process agrees on them.

Every step appends ``"<instance_id> <step_key> <pid> <unix time>"`` to the
side file (open, append, flush, fsync) when it *starts*, so the side file is a
durable log of every execution, even of those a SIGKILL interrupted. ``Hold``
blocks (after writing the marker ``<instance>.hold``) only in the process
whose role is the run's ``context.initial["block_in"]``; elsewhere it takes a
moment and completes. ``Linger`` runs until cancelled.

Each engine process starts the runs of its role (``RUNS[role]``), waits until
each stands where the test expects it (parked, or inside ``hold`` or
``linger``), then writes the marker ``ready-<role>`` and runs until killed.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from hephaestus_trio import (
    Complete,
    Done,
    Instance,
    SQLiteStorage,
    Status,
    Step,
    Unique,
    WaitForEvent,
    Workflow,
    open_engine,
)

LIFETIME = 30.0
"""Seconds a blocked step or an idle engine process lasts if nobody kills it."""
LEASE_RENEWAL = 0.2
"""Renewal period of every engine here (the TTL stays the default 30 s): a
survivor proves a peer's death at its next renewal, so takeover is prompt."""


@attrs.define
class Settings:
    side: Path | None = None
    markers: Path | None = None
    role: str | None = None


SETTINGS = Settings()


def configure(side: Path | None, markers: Path | None = None, role: str | None = None) -> None:
    global SETTINGS
    SETTINGS = Settings(side=side, markers=markers, role=role)


def write_marker(name: str) -> None:
    assert SETTINGS.markers is not None
    tmp = SETTINGS.markers / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(SETTINGS.markers / name)


def marker_name(instance_id: str, step_key: str) -> str:
    return f"{instance_id.replace(':', '_')}.{step_key}"


def record(instance_id: str, step_key: str) -> None:
    if SETTINGS.side is None:
        return
    line = f"{instance_id} {step_key} {os.getpid()} {time.time():.6f}\n"
    with open(SETTINGS.side, "a", encoding="utf-8") as side:
        side.write(line)
        side.flush()
        os.fsync(side.fileno())


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
        if SETTINGS.role is not None and SETTINGS.role == context.initial.get("block_in"):
            write_marker(marker_name(instance.id, "hold"))
            await trio.sleep(LIFETIME)
            raise RuntimeError("hold was never killed")
        await trio.sleep(0.05)


class Finish(Recorded):
    step_key = "finish"
    factor = 5


class Linger(Recorded):
    step_key = "linger"
    factor = 7

    async def work(self, instance: Instance, context: Any) -> None:
        await trio.sleep(LIFETIME)


class Approve(Workflow, unique=Unique(key="approve"), name="multi.approve"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "go"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


class Held(Workflow, unique=Unique(key="held"), name="multi.held"):
    start_at = Prepare
    transitions = {(Prepare, "ok"): Hold, (Hold, "ok"): Finish, (Finish, "ok"): Done}


class Lingering(Workflow, unique=Unique(key="lingering"), name="multi.lingering"):
    start_at = Prepare
    transitions = {(Prepare, "ok"): Linger, (Linger, "ok"): Done}


WORKFLOWS: tuple[type[Workflow], ...] = (Approve, Held, Lingering)


@attrs.frozen
class Run:
    workflow: type[Workflow]
    id: str
    initial: dict[str, Any]


RUNS: dict[str, tuple[Run, ...]] = {
    "a": (
        Run(Held, "held::a", {"n": 1, "block_in": "a"}),
        Run(Approve, "approve::a1", {"n": 2}),
        Run(Approve, "approve::a2", {"n": 3}),
        Run(Approve, "approve::a3", {"n": 4}),
        Run(Lingering, "lingering::a", {"n": 5}),
    ),
    "b": (
        Run(Held, "held::b", {"n": 6, "block_in": "b"}),
        Run(Approve, "approve::b1", {"n": 7}),
        Run(Approve, "approve::b2", {"n": 8}),
    ),
}


def engine_storage(db: Path) -> SQLiteStorage:
    return SQLiteStorage(db, poll_interval=0.1)


async def _settled(engine: Any, run: Run) -> None:
    """Until the run stands where the test wants it before anyone touches it."""
    while True:
        inst = await engine.get(run.id)
        if run.workflow is Approve and inst.status is Status.WAITING:
            return
        if run.workflow is Lingering and "linger" in inst.running_steps:
            return
        if run.workflow is Held and (SETTINGS.markers / marker_name(run.id, "hold")).exists():
            return
        await trio.sleep(0.005)


async def child(db: Path, role: str) -> None:
    async with open_engine(
        engine_storage(db), workflows=WORKFLOWS, lease_renewal=LEASE_RENEWAL
    ) as engine:
        for run in RUNS[role]:
            await engine.start_instance(run.workflow, run.initial, id=run.id)
        for run in RUNS[role]:
            await _settled(engine, run)
        write_marker(f"ready-{role}")
        await trio.sleep(LIFETIME)


def main(argv: Sequence[str]) -> None:
    db, side, markers, role = argv
    configure(Path(side), Path(markers), role)
    trio.run(child, Path(db), role)


if __name__ == "__main__":
    main(sys.argv[1:])
