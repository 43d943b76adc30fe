"""The application the crash tests kill: workflows, recording steps and a child entry point.

Both processes import this module: the child runs it as a script
(``python _crash_app.py DB SIDE MARKERS SCENARIO``) and the test process
imports it as part of the ``tests/crash`` package. Workflow registry names
are given explicitly (``name="crash.linear"``, ...) so that both processes
agree on them whatever the module is called in each.

Every recording step appends ``"<instance_id> <step_key> <pid>-<n>"`` to the
side file (open, append, flush, fsync) when it *starts* executing, so the
side file is a durable log of every execution, even of the ones a SIGKILL
interrupted. A step whose key is listed in ``context.initial["block"]``
blocks forever after recording, but only where blocking is enabled (the
child process): it first writes the marker ``<instance>.<step>`` so the test
knows it is running. The restarted engine and the reference run never block.

Scenarios (the fourth argument) say what the child starts and when it
declares itself ``ready`` (the marker the test waits for before SIGKILL):

- ``mid_step``: three linear runs; two block in different steps, one completes.
- ``fan_out``: two branches of a fan-out both block.
- ``retry``: a step whose first attempt in each process crashes; attempt 2 blocks.
- ``parked``: two runs park in ``WaitForEvent``.
- ``timer``: a run parks in ``Wait`` (a durable timer of a few real seconds).
- ``after_resume``: a hibernated run is resumed; the child blocks its event
  loop the moment ``resume`` returns, so the resume is on disk (applied in
  the claim it made) but the next step never started.
- ``after_start``: ``start_instance`` returns; the loop blocks at once, so
  the run is persisted ``pending`` and never advanced.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import trio
import trio.testing

from hephaestus_trio import (
    Complete,
    Done,
    Event,
    Instance,
    RetryPolicy,
    SQLiteStorage,
    Status,
    Step,
    Unique,
    Wait,
    WaitForEvent,
    Workflow,
    open_engine,
)

# Long enough for any test to kill the child first, short enough that a
# child whose test died never lingers.
CHILD_LIFETIME = 30.0
WAIT_SECONDS = 2.5


@attrs.define
class Settings:
    """Where the steps of *this* process record, and whether they may block."""

    side: Path | None = None
    markers: Path | None = None
    blocking: bool = False
    crashes: dict[tuple[str, str], int] = attrs.Factory(dict)


SETTINGS = Settings()
_NONCE = itertools.count(1)


def configure(side: Path | None, markers: Path | None = None, *, blocking: bool = False) -> None:
    """Point the steps of this process at a side file and a marker folder."""
    global SETTINGS
    SETTINGS = Settings(side=side, markers=markers, blocking=blocking)


def marker_name(instance_id: str, step_key: str) -> str:
    return f"{instance_id.replace(':', '_')}.{step_key}"


def write_marker(name: str) -> None:
    """Create marker ``name`` atomically (write a temp file, then rename)."""
    assert SETTINGS.markers is not None
    tmp = SETTINGS.markers / f".{name}.tmp"
    tmp.write_text(str(os.getpid()))
    tmp.rename(SETTINGS.markers / name)


def record(instance_id: str, step_key: str) -> None:
    """Append one execution to the side file, durably, before doing anything else."""
    if SETTINGS.side is None:
        return
    line = f"{instance_id} {step_key} {os.getpid()}-{next(_NONCE)}\n"
    with open(SETTINGS.side, "a", encoding="utf-8") as side:
        side.write(line)
        side.flush()
        os.fsync(side.fileno())


class Recorded(Step):
    """Records its execution, blocks where asked, completes with ``"ok"``."""

    events = ("ok",)
    step_key = "recorded"
    factor = 1

    async def execute(self, instance: Instance, config: Any, context: Any) -> Complete:
        key = type(self).step_key
        record(instance.id, key)
        if SETTINGS.blocking and key in context.initial.get("block", ()):
            write_marker(marker_name(instance.id, key))
            await trio.sleep(CHILD_LIFETIME)
            raise RuntimeError(f"{key} was never killed")
        return Complete("ok", updates={"value": context.initial["n"] * type(self).factor})


class Prepare(Recorded):
    step_key = "prepare"
    factor = 2


class Work(Recorded):
    step_key = "work"
    factor = 3


class Finish(Recorded):
    step_key = "finish"
    factor = 5


class Left(Recorded):
    step_key = "left"
    factor = 7


class Right(Recorded):
    step_key = "right"
    factor = 11


class Join(Recorded):
    step_key = "join"
    factor = 13


class Flaky(Recorded):
    """Crashes on its first execution in each process (per run), then behaves."""

    step_key = "flaky"
    factor = 17
    # Failed attempts are persisted: a run killed during attempt 2 keeps counting.
    retry = RetryPolicy(max_attempts=4, backoff="constant", base=0.01)

    async def execute(self, instance: Instance, config: Any, context: Any) -> Complete:
        seen = SETTINGS.crashes.setdefault((instance.id, self.step_key), 0)
        SETTINGS.crashes[(instance.id, self.step_key)] = seen + 1
        if seen == 0:
            record(instance.id, self.step_key)
            raise RuntimeError("first attempt in this process")
        return await super().execute(instance, config, context)


class Linear(Workflow, unique=Unique(key="linear"), name="crash.linear"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): Work,
        (Work, "ok"): Finish,
        (Finish, "ok"): Done,
    }


class FanOut(Workflow, unique=Unique(key="fanout"), name="crash.fan_out"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): [Left, Right],
        (Left, "ok"): Join,
        (Right, "ok"): Join,
        (Join, "ok"): Done,
    }


class Retrying(Workflow, unique=Unique(key="retrying"), name="crash.retrying"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): Flaky,
        (Flaky, "ok"): Finish,
        (Finish, "ok"): Done,
    }


class Parked(Workflow, unique=Unique(key="parked"), name="crash.parked"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (WaitForEvent, {"event_name": "go"}),
        (WaitForEvent, "received"): Finish,
        (Finish, "ok"): Done,
    }


class Timed(Workflow, unique=Unique(key="timed"), name="crash.timed"):
    start_at = Prepare
    transitions = {
        (Prepare, "ok"): (Wait, {"seconds": WAIT_SECONDS}),
        (Wait, "timeout"): Finish,
        (Finish, "ok"): Done,
    }


WORKFLOWS: tuple[type[Workflow], ...] = (Linear, FanOut, Retrying, Parked, Timed)


@attrs.frozen
class Run:
    """One instance a scenario starts."""

    workflow: type[Workflow]
    id: str
    initial: dict[str, Any]


SCENARIOS: dict[str, tuple[Run, ...]] = {
    "mid_step": (
        Run(Linear, "linear::a1", {"n": 1, "block": ["work"]}),
        Run(Linear, "linear::b2", {"n": 2, "block": ["finish"]}),
        Run(Linear, "linear::c3", {"n": 3}),
    ),
    "fan_out": (Run(FanOut, "fanout::a1", {"n": 4, "block": ["left", "right"]}),),
    "retry": (Run(Retrying, "retrying::a1", {"n": 5, "block": ["flaky"]}),),
    "parked": (
        Run(Parked, "parked::a1", {"n": 6}),
        Run(Parked, "parked::b2", {"n": 7}),
    ),
    "timer": (Run(Timed, "timed::a1", {"n": 8}),),
    "after_resume": (Run(Parked, "parked::r1", {"n": 9}),),
    "after_start": (Run(Linear, "linear::s1", {"n": 10}),),
}

# Scenarios whose runs park; the test resumes them with this event.
RESUME_EVENT = "go"


def blocking_markers(scenario: str) -> list[str]:
    """Markers the blocking steps of ``scenario`` write when they start."""
    return [
        marker_name(run.id, key)
        for run in SCENARIOS[scenario]
        for key in run.initial.get("block", ())
    ]


async def until_waiting(engine: Any, instance_id: str, *, timers: bool = False) -> None:
    """Poll storage until the run is persisted ``waiting`` (with a timer, if asked)."""
    while True:
        inst = await engine.get(instance_id)
        if inst.status is Status.WAITING and (inst.timers or not timers):
            return
        await trio.sleep(0.005)


async def child(db: Path, scenario: str) -> None:
    runs = SCENARIOS[scenario]
    async with open_engine(storage=SQLiteStorage(db), workflows=WORKFLOWS) as engine:
        hibernated = {run.id: trio.Event() for run in runs}

        def on_stop(event: Event) -> None:
            waiter = hibernated.get(event.metadata.get("instance_id", ""))
            if waiter is not None and event.metadata.get("reason") == "hibernated":
                waiter.set()

        engine.subscribe(on_stop, events=["incarnation.stop"])
        for run in runs:
            await engine.start_instance(run.workflow, run.initial, id=run.id)
            if scenario == "after_start":
                # Block the event loop before the run's task ever gets to run.
                write_marker("ready")
                time.sleep(CHILD_LIFETIME)
        if scenario in ("mid_step", "fan_out", "retry"):
            for run in runs:
                if not run.initial.get("block"):
                    await engine.wait(run.id)
        elif scenario in ("parked", "timer"):
            for run in runs:
                await until_waiting(engine, run.id, timers=scenario == "timer")
        elif scenario == "after_resume":
            for run in runs:
                # Until the run hibernated and its driver task ended: the resume claims it.
                await hibernated[run.id].wait()
                await trio.testing.wait_all_tasks_blocked()
                assert not engine.live_tasks
                await engine.resume(run.id, RESUME_EVENT)
            # Block the loop right away: the resume is on disk, its next step not started.
            write_marker("ready")
            time.sleep(CHILD_LIFETIME)
        write_marker("ready")
        await trio.sleep(CHILD_LIFETIME)


def main(argv: Sequence[str]) -> None:
    db, side, markers, scenario = argv
    configure(Path(side), Path(markers), blocking=True)
    trio.run(child, Path(db), scenario)


if __name__ == "__main__":
    main(sys.argv[1:])
