"""``hephaestus-trio demo``: orders on SQLite, a real crash of the engine, and recovery.

How it runs:

1. The *first engine* runs in a child process (this same command with a
   hidden ``--engine-child`` option). It starts the orders a little apart and
   writes every engine event to its stdout as one JSON line; this process
   prints them as progress.
2. Once some orders sleep in their durable ``Wait`` and some steps are
   running, this process kills the child with SIGKILL: no cleanup, no
   flush, nothing but what SQLite had committed survives.
3. It lists the live runs found in the database ("recovering N instances"),
   then opens the *second engine* in-process on the same file. Recovery
   re-arms the timers for their remaining time, runs again the steps that
   were interrupted (at-least-once), and this process starts the orders the
   first engine never got to.
4. A summary table shows each order's outcome against the expected one.

Every demo run uses fresh order ids (a random tag), so re-running on an
existing database keeps the earlier runs and never collides with them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import trio

from ..core._instance import Instance, Status
from ..observability import Event
from ..runtime import open_engine
from ..storage import SQLiteStorage
from ._commands import format_table
from ._demo_flow import OrderFlow, expected_outcome, new_batch_tag, sample_orders
from ._parser import DEFAULT_DB
from ._progress import Progress

__all__ = ["run_demo", "run_engine_child"]

STAGGER = 0.15
"""Seconds between two orders arriving."""
CHILD_LIFETIME = 30.0
"""The first engine exits by itself after this long (it is killed much earlier)."""
CRASH_DEADLINE = 20.0
"""Kill the first engine at the latest this long after it started."""

_LIVE = (Status.PENDING, Status.RUNNING, Status.WAITING)


def _order_id(value: str) -> str:
    return f"orderid::{value}"


def _sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


# -- the first engine (child process) ---------------------------------------------------


def _emit_json(event: Event) -> None:
    line = json.dumps(
        {
            "name": event.name,
            "measurements": dict(event.measurements),
            "metadata": dict(event.metadata),
        },
        default=str,
    )
    try:
        print(line, flush=True)
    except (BrokenPipeError, ValueError):
        # The demo process is gone: nobody will kill us, stop at once.
        os._exit(1)


async def run_engine_child(db: str, tag: str, count: int) -> int:
    """Run the first engine: start the batch ``tag`` and keep running until killed."""
    async with open_engine(
        SQLiteStorage(db), workflows=[OrderFlow], handlers=[_emit_json]
    ) as engine:
        with trio.move_on_after(CHILD_LIFETIME):
            for value, context in sample_orders(count, tag):
                await engine.start_instance(OrderFlow, context, id=_order_id(value))
                await trio.sleep(STAGGER)
            await trio.sleep_forever()
    return 0


# -- the demo (parent process) ----------------------------------------------------------


class _CrashPoint:
    """Decides when to kill the first engine, from the progress it printed."""

    def __init__(self, progress: Progress, ids: Sequence[str]) -> None:
        self.progress = progress
        self.ids = set(ids)
        self.target_parked = 2 if len(ids) >= 4 else 1

    def reached(self) -> bool:
        parked = len(self.progress.parked & self.ids)
        if parked == 0:
            return False
        if self.progress.running_steps > 0:
            return parked >= self.target_parked
        # Nothing running: fine once every order has arrived (tiny batches).
        started = {i for i in self.ids if self.progress.step_starts[i]}
        return started == self.ids


async def _first_engine(db: str, tag: str, ids: Sequence[str], progress: Progress) -> str:
    """Run the first engine in a child process and kill it mid-run; returns how it ended."""
    command = [
        sys.executable,
        "-m",
        "hephaestus_trio",
        "demo",
        "--db",
        db,
        "--orders",
        str(len(ids)),
        "--engine-child",
        tag,
    ]
    process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
    assert process.stdout is not None
    source = "engine 1"
    progress.say(f"engine 1 starting in a child process (pid {process.pid})", source="")
    crash = _CrashPoint(progress, ids)
    killed = False
    parked = running = 0
    buffer = b""

    def handle(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").strip()
        if not text:
            return
        try:
            event = json.loads(text)
            progress.feed(event["name"], event["measurements"], event["metadata"], source=source)
        except (ValueError, KeyError, TypeError):
            progress.say(text, source=source)

    try:
        with trio.move_on_after(CRASH_DEADLINE):
            async for chunk in process.stdout:
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for raw in lines:
                    handle(raw)
                if not killed and crash.reached():
                    process.kill()
                    killed = True
                    # What engine 1 had reported when it was killed (more lines may
                    # still be in the pipe: they happened before the kill).
                    parked, running = len(progress.parked & set(ids)), progress.running_steps
        if not killed and process.returncode is None:
            process.kill()
            killed = True
            parked, running = len(progress.parked & set(ids)), progress.running_steps
        handle(buffer)
        await process.wait()
    finally:
        with trio.move_on_after(10, shield=True):  # reap the child even when cancelled
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.stdout.aclose()
    if not killed:
        return f"engine 1 exited by itself with status {process.returncode}"
    how = "SIGKILL" if hasattr(signal, "SIGKILL") else "TerminateProcess"
    return (
        f"*** simulated crash: engine 1 (pid {process.pid}) killed with {how} while "
        f"{parked} order(s) were parked in their Wait and {running} step(s) were running ***"
    )


def _recovery_report(live: Sequence[Instance], now: datetime) -> list[str]:
    lines = []
    for inst in live:
        if inst.status is Status.PENDING:
            what = "pending: its first step will run"
        else:
            parts = []
            running = sorted(inst.running_steps)
            if running:
                parts.append(f"running {', '.join(running)} (will run again)")
            for timer in inst.timers:
                left = (timer.fire_at - now).total_seconds()
                parts.append(f"{timer.step} parked, timer due in {max(left, 0.0):.1f}s")
            parked = sorted(inst.waiting_steps - {t.step for t in inst.timers})
            if parked:
                parts.append(f"parked {', '.join(parked)} (hibernates until resumed)")
            what = "; ".join(parts) or inst.status.value
        lines.append(f"  {inst.id:<17} {inst.status.value:<8} {what}")
    return lines


def _outcome(inst: Instance) -> str:
    if inst.status is Status.COMPLETED and "reject_order" in inst.completed_steps:
        return "rejected"
    return inst.status.value


async def run_demo(db: str, count: int) -> int:
    """The whole demo; returns the exit status (0: every order ended as expected)."""
    progress = Progress()
    tag = new_batch_tag()
    batch = [(_order_id(value), context) for value, context in sample_orders(count, tag)]
    ids = [iid for iid, _ in batch]
    async with SQLiteStorage(db):
        pass  # creates the file and its schema, or fails early with a clear error
    progress.say(f"demo: {count} order(s) {ids[0]} .. {ids[-1]} on SQLite {db!r}", source="")
    progress.say(
        "flow: validate_order -> [charge_payment, reserve_stock] -> ship_order -> "
        "wait 2s -> done   (invalid: -> reject_order -> done)",
        source="",
    )

    # 1. The first engine, killed mid-run.
    ending = await _first_engine(db, tag, ids, progress)
    progress.say(ending, source="")

    # 2. What survived: the database.
    async with SQLiteStorage(db) as storage:
        live = await storage.query(status_in=_LIVE)
        known = {iid for iid in ids if await storage.query(id=iid)}
    states_at_crash = {inst.id: inst for inst in live}
    progress.say(f"recovering {len(live)} instance(s) from {db!r}:", source="")
    for line in _recovery_report(live, datetime.now(UTC)):
        progress.say(line, source="")
    missing = [iid for iid in ids if iid not in known]
    if missing:
        progress.say(
            f"{len(missing)} order(s) never reached engine 1; engine 2 will start them", source=""
        )

    # 3. The second engine, in this process.
    progress.source = "engine 2"
    async with open_engine(SQLiteStorage(db), workflows=[OrderFlow], handlers=[progress]) as engine:
        contexts = dict(batch)
        for iid in missing:
            await engine.start_instance(OrderFlow, contexts[iid], id=iid)
            await trio.sleep(STAGGER)
        with trio.fail_after(60):
            finals = [await engine.wait(iid) for iid in ids]
    progress.source = ""

    # 4. Summary.
    rows = []
    unexpected = 0
    for (iid, context), inst in zip(batch, finals, strict=True):
        outcome = _outcome(inst)
        expected = expected_outcome(context)
        ok = outcome == expected
        unexpected += not ok
        notes = []
        before = states_at_crash.get(iid)
        if iid in missing:
            notes.append("started after the crash")
        elif before is not None:
            if before.running_steps:
                notes.append(f"recovered; re-ran {', '.join(sorted(before.running_steps))}")
            elif before.timers:
                notes.append("recovered; timer re-armed")
            else:
                notes.append("recovered")
        if progress.retried.get(iid):
            notes.append(f"retried {', '.join(sorted(progress.retried[iid]))}")
        if inst.error is not None:
            notes.append(inst.error.message)
        elif outcome == "rejected":
            notes.append("no items")
        rows.append(
            (
                iid,
                outcome,
                len(inst.completions),
                progress.step_starts[iid],
                "yes" if ok else f"NO (expected {expected})",
                "; ".join(notes) or "-",
            )
        )
    print()
    print(format_table(("ORDER", "OUTCOME", "STEPS", "ATTEMPTS", "AS EXPECTED", "NOTES"), rows))
    print()
    if unexpected:
        print(f"{unexpected} of {count} order(s) did NOT end as expected")
        return 1
    print(
        f"all {count} order(s) ended as expected in {progress.elapsed:.1f}s "
        "(STEPS: completed steps; ATTEMPTS: step executions, retries and re-runs included)"
    )
    storage_arg = "" if db == DEFAULT_DB else f" --storage {_sqlite_url(db)}"
    # The interpreter that runs the demo surely has the package, even where the
    # console script is not on PATH (a venv that is not activated).
    command = f"{_python()} -m hephaestus_trio"
    print(f"inspect them: {command} list{storage_arg}")
    print(f"              {command} show {ids[0]}{storage_arg}")
    return 0


def _python() -> str:
    """How to call this interpreter from the current directory, as short as it gets."""
    executable = sys.executable or "python"
    try:
        relative = os.path.relpath(executable)
    except ValueError:  # another drive on Windows
        return executable
    return relative if not relative.startswith("..") else executable
