"""The measurements: each function runs one side (engine or baseline) and returns a number.

Every function is a coroutine for ``trio.run``; SQLite files go in ``tmp``.
"""

from __future__ import annotations

import functools
import gc
import os
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from hephaestus_trio import (
    Event,
    Instance,
    MemoryStorage,
    SQLiteStorage,
    Status,
    Storage,
    open_engine,
)

from ._baseline import bare_order, bare_parked, open_batch_writer, read_live_documents
from ._flows import BenchOrder, Parked, WeekParked, mark_times, mark_waiters

__all__ = [
    "baseline_latency",
    "baseline_parked_rss",
    "baseline_recovery",
    "baseline_resume_latency",
    "baseline_throughput",
    "engine_latency",
    "engine_parked_rss",
    "engine_recovery",
    "engine_resume_latency",
    "engine_throughput",
    "engine_week_parked_rss",
    "prepare_parked_db",
    "rss_kib",
]


def rss_kib() -> int:
    """Resident set size of this process, KiB (``VmRSS``), after a full collection."""
    gc.collect()
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource  # not Linux: the peak is the best available

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _storage(kind: str, tmp: Path, name: str) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    path = tmp / f"{name}.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return SQLiteStorage(path)


class _Countdown:
    """An event handler that sets ``done`` after ``n`` events."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.done = trio.Event()

    def __call__(self, event: Event) -> None:
        self.left -= 1
        if self.left <= 0:
            self.done.set()


# -- (a) throughput ------------------------------------------------------------------------


async def engine_throughput(kind: str, count: int, tmp: Path) -> float:
    """Instances per second: ``count`` orders started concurrently, until all completed."""
    countdown = _Countdown(count)
    async with open_engine(_storage(kind, tmp, "throughput"), workflows=[BenchOrder]) as engine:
        engine.subscribe(countdown, events=["workflow.stop"])
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                start = functools.partial(
                    engine.start_instance, BenchOrder, {"i": i}, id=f"order::{i}"
                )
                nursery.start_soon(start)
        await countdown.done.wait()
        return count / (time.perf_counter() - started)


async def baseline_throughput(kind: str, count: int, tmp: Path) -> float:
    """The same, with plain Trio tasks (and the batched SQLite writer when durable)."""
    if kind == "memory":
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(bare_order, f"order::{i}", {"i": i})
        return count / (time.perf_counter() - started)
    path = tmp / "baseline-throughput.db"
    path.unlink(missing_ok=True)
    async with open_batch_writer(str(path)) as writer:
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                record = functools.partial(writer.write, f"order::{i}")
                nursery.start_soon(bare_order, f"order::{i}", {"i": i}, record)
        return count / (time.perf_counter() - started)


# -- (b) single-instance latency -------------------------------------------------------------


async def engine_latency(kind: str, runs: int, tmp: Path) -> float:
    """Mean seconds from ``start_instance`` to ``workflow.stop``, one instance at a time."""
    async with open_engine(_storage(kind, tmp, "latency"), workflows=[BenchOrder]) as engine:
        total = 0.0
        for i in range(runs):
            countdown = _Countdown(1)
            unsubscribe = engine.subscribe(countdown, events=["workflow.stop"])
            started = time.perf_counter()
            await engine.start_instance(BenchOrder, {"i": i}, id=f"order::{i}")
            await countdown.done.wait()
            total += time.perf_counter() - started
            unsubscribe()
        return total / runs


async def baseline_latency(kind: str, runs: int, tmp: Path) -> float:
    total = 0.0
    if kind == "memory":
        for i in range(runs):
            started = time.perf_counter()
            await bare_order(f"order::{i}", {"i": i})
            total += time.perf_counter() - started
        return total / runs
    path = tmp / "baseline-latency.db"
    path.unlink(missing_ok=True)
    async with open_batch_writer(str(path)) as writer:
        for i in range(runs):
            started = time.perf_counter()
            await bare_order(f"order::{i}", {"i": i}, functools.partial(writer.write, f"o{i}"))
            total += time.perf_counter() - started
    return total / runs


# -- (c) memory per parked instance ---------------------------------------------------------


async def _park_all(engine: Any, count: int, offset: int = 0, flow: Any = Parked) -> None:
    """Start ``count`` runs of ``flow`` and return once all of them hibernate."""
    parked = _Countdown(count)
    unsubscribe = engine.subscribe(parked, events=["step.async"])
    batch = 500  # bounded concurrency: a burst of 20,000 starter tasks is not the point
    for first in range(offset, offset + count, batch):
        async with trio.open_nursery() as nursery:
            for i in range(first, min(first + batch, offset + count)):
                iid = f"{flow.unique.key}::{i}"
                start = functools.partial(engine.start_instance, flow, {}, id=iid)
                nursery.start_soon(start)
    await parked.done.wait()
    unsubscribe()
    while engine.live_tasks:  # the last ones are still committing their park
        await trio.sleep(0.001)


async def engine_parked_rss(kind: str, count: int, tmp: Path, flow: Any = Parked) -> float:
    """KiB of RSS per parked (hibernating) instance, engine open, after gc."""
    async with open_engine(_storage(kind, tmp, "parked"), workflows=[flow]) as engine:
        await _park_all(engine, 50, flow=flow)  # warm every code path and cache first
        before = rss_kib()
        await _park_all(engine, count, offset=50, flow=flow)
        after = rss_kib()
        assert engine.live_tasks == 0
        waiting = await engine.list(status="waiting")
        assert len(waiting) == count + 50, len(waiting)
        del waiting
        after = min(after, rss_kib())
    return (after - before) / count


async def engine_week_parked_rss(kind: str, count: int, tmp: Path) -> float:
    """KiB of RSS per run parked on a 7-day ``Wait``: hibernating with a timer pending."""
    return await engine_parked_rss(kind, count, tmp, flow=WeekParked)


async def baseline_parked_rss(kind: str, count: int, tmp: Path) -> float:
    """KiB of RSS per parked bare-Trio task (holding its run's state) after gc."""
    wake = trio.Event()
    parked = 0

    def one_parked() -> None:
        nonlocal parked
        parked += 1

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(bare_parked, f"warm::{i}", wake, one_parked)
        while parked < 50:
            await trio.sleep(0.01)
        before = rss_kib()
        for i in range(count):
            nursery.start_soon(bare_parked, f"parked::{i}", wake, one_parked)
        while parked < count + 50:
            await trio.sleep(0.01)
        after = rss_kib()
        nursery.cancel_scope.cancel()
    return (after - before) / count


# -- (d) recovery --------------------------------------------------------------------------


async def prepare_parked_db(path: Path, count: int) -> None:
    """A database with ``count`` parked runs of ``Parked``, hibernated as an engine leaves them.

    One run is parked by a real engine; the rest are copies of it with their
    own ids, each created under a lease and released with nothing to wake it
    (exactly what a run's loop does when it hibernates), concurrently (grouped
    commits) to keep the setup short. ``engine_recovery`` works on a copy.
    """
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    async with open_engine(SQLiteStorage(path), workflows=[Parked]) as engine:
        await _park_all(engine, 1)
        (template,) = await engine.list(status="waiting")
    assert template.status is Status.WAITING
    async with SQLiteStorage(path) as storage:

        async def put(i: int) -> None:
            iid = f"parked::copy{i}"
            copy: Instance = attrs.evolve(
                template,
                id=iid,
                run_id=f"run{i:08d}",
                unique_key=Parked.constraint_key(iid),
            )
            now = datetime.now(UTC)
            lease = await storage.create(copy, now=now, owner="bench-seed")
            assert lease is not None
            await storage.release(lease, now=now, wake_at=None, seen=0)

        batch = 1000
        for first in range(1, count, batch):
            async with trio.open_nursery() as nursery:
                for i in range(first, min(first + batch, count)):
                    nursery.start_soon(put, i)


def _fresh_copy(path: Path) -> Path:
    """A copy of the prepared file (recovery hibernates its runs, so each repeat needs one)."""
    work = path.with_name(f"{path.stem}-work{path.suffix}")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{work}{suffix}").unlink(missing_ok=True)
        if Path(f"{path}{suffix}").exists():
            shutil.copyfile(f"{path}{suffix}", f"{work}{suffix}")
    return work


async def engine_recovery(path: Path, count: int) -> float:
    """Seconds for ``open_engine`` to open the file and claim what needs a driver.

    The ``count`` parked runs hibernate as their last engine left them, so
    nothing is claimed: recovery costs one claim query, not one load per run
    (the first engine on a file migrated from schema 1 claims and re-parks
    each live run once).
    """
    work = _fresh_copy(path)
    seen: dict[str, float] = {}

    def on_init(event: Event) -> None:
        seen.update(event.measurements)

    started = time.perf_counter()
    async with open_engine(SQLiteStorage(work), workflows=[Parked], handlers=[on_init]) as engine:
        elapsed = time.perf_counter() - started
        assert seen.get("recovered") == 0, seen
        assert len(await engine.list(status="waiting")) == count
    return elapsed


async def baseline_recovery(path: Path, count: int) -> float:
    """Seconds to read and ``json.loads`` the same rows in a worker thread."""
    started = time.perf_counter()
    found = await trio.to_thread.run_sync(read_live_documents, os.fspath(path))
    elapsed = time.perf_counter() - started
    assert found == count, found
    return elapsed


# -- (e) resume to next step ---------------------------------------------------------------


async def engine_resume_latency(kind: str, runs: int, tmp: Path) -> float:
    """Mean seconds from calling ``resume`` on a hibernating run to its next step starting.

    Each resume waits for the previous run to end (untimed): its trailing
    commits (``Mark``'s completion, the terminal write) would otherwise queue
    ahead of the next resume's, a wait the baseline, whose task ends at
    ``Mark``, never has.
    """
    async with open_engine(_storage(kind, tmp, "resume"), workflows=[Parked]) as engine:
        await _park_all(engine, runs)
        total = 0.0
        for i in range(runs):
            iid = f"parked::{i}"
            marked = mark_waiters[iid] = trio.Event()
            started = time.perf_counter()
            await engine.resume(iid, "received")
            await marked.wait()
            total += mark_times.pop(iid) - started
            await engine.wait(iid)
        return total / runs


async def baseline_resume_latency(kind: str, runs: int, tmp: Path) -> float:
    """The same with parked bare tasks: (durably record the resume,) wake the task; it
    (durably records the completion and) starts the next step."""
    total = 0.0
    wakes = [trio.Event() for _ in range(runs)]
    parked = 0

    def one_parked() -> None:
        nonlocal parked
        parked += 1

    async def run(record: Callable[..., Any] | None) -> float:
        elapsed = 0.0
        async with trio.open_nursery() as nursery:
            for i in range(runs):
                rec = functools.partial(record, f"p{i}") if record else None
                args = (f"parked::{i}", wakes[i], one_parked) + ((rec,) if rec else ())
                nursery.start_soon(bare_parked, *args)
            while parked < runs:
                await trio.sleep(0.01)
            for i in range(runs):
                iid = f"parked::{i}"
                marked = mark_waiters[iid] = trio.Event()
                started = time.perf_counter()
                if record is not None:
                    await record(f"resume{i}", {"run": iid, "step": "wait", "event": "received"})
                wakes[i].set()
                await marked.wait()
                elapsed += mark_times.pop(iid) - started
        return elapsed

    if kind == "memory":
        total = await run(None)
    else:
        path = tmp / "baseline-resume.db"
        path.unlink(missing_ok=True)
        async with open_batch_writer(str(path)) as writer:
            total = await run(writer.write)
    return total / runs
