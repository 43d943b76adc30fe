"""Rows p-r: how the engine's throughput holds up as the load around a run changes.

- (p) *in flight*: row (a)'s orders with at most 10, 100 or 1,000 of them
  between ``start_instance`` and their ``workflow.stop`` at once (a
  ``CapacityLimiter`` held across both), against the bare-Trio orders under
  the same limit. What a server sees that admits work at a fixed
  concurrency, rather than row (a)'s burst of everything at once.
- (q) *history*: one engine on one ``MemoryStorage``, throughput of a window
  of orders after 2,000 runs handled and again after 200,000 (every run stays
  in the storage, terminal). A per-run cost that grows with what the engine
  has already done (an index scanned, a list appended to, the collector
  walking a larger heap) shows as a later/earlier ratio under 1.
- (r) *drain*: 5,000 runs hibernated on ``WaitForEvent``, all resumed at once,
  until the last ``workflow.stop``; the baseline wakes 5,000 parked bare-Trio
  tasks, which run the same remaining step.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from hephaestus_trio import Event, MemoryStorage, open_engine

from ._baseline import bare_order, bare_parked, open_batch_writer
from ._flows import BenchOrder, Parked, mark_times
from ._measure import _Countdown, _park_all, _storage

__all__ = [
    "Window",
    "baseline_drain",
    "baseline_inflight",
    "engine_drain",
    "engine_history",
    "engine_inflight",
]


# -- (p) throughput vs in-flight -------------------------------------------------------------


async def engine_inflight(kind: str, count: int, limit: int, tmp: Path) -> float:
    """Orders per second, ``count`` orders with at most ``limit`` of them in flight."""
    finished: dict[str, trio.Event] = {}

    def on_stop(event: Event) -> None:
        done = finished.pop(event.metadata.get("instance_id", ""), None)
        if done is not None:
            done.set()

    limiter = trio.CapacityLimiter(limit)
    async with open_engine(_storage(kind, tmp, "inflight"), workflows=[BenchOrder]) as engine:
        engine.subscribe(on_stop, events=["workflow.stop"])

        async def one(i: int) -> None:
            iid = f"order::{i}"
            async with limiter:
                done = finished[iid] = trio.Event()
                await engine.start_instance(BenchOrder, {"i": i}, id=iid)
                await done.wait()

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        elapsed = time.perf_counter() - started
        assert len(await engine.list(status="completed")) == count
        return count / elapsed


async def baseline_inflight(kind: str, count: int, limit: int, tmp: Path) -> float:
    """The same with bare-Trio orders under the same limit (and the batched writer)."""
    limiter = trio.CapacityLimiter(limit)

    async def orders(record: Callable[..., Any] | None) -> float:
        async def one(i: int) -> None:
            async with limiter:
                rec = None if record is None else functools.partial(record, f"order::{i}")
                await bare_order(f"order::{i}", {"i": i}, rec)

        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(one, i)
        return count / (time.perf_counter() - started)

    if kind == "memory":
        return await orders(None)
    path = tmp / "baseline-inflight.db"
    path.unlink(missing_ok=True)
    async with open_batch_writer(str(path)) as writer:
        return await orders(writer.write)


# -- (q) throughput vs runs already handled --------------------------------------------------


@attrs.frozen
class Window:
    """One measured window of orders: how many were handled before it, and its speed."""

    handled: int
    """Runs the engine had completed when the window started."""
    per_second: float
    """Orders per second of wall time."""
    per_cpu_second: float
    """Orders per second of this process's CPU time (``time.process_time``)."""


async def engine_history(
    early: int, late: int, window: int, repeats: int, out: Callable[[str], None]
) -> tuple[list[Window], list[Window]]:
    """Windows of ``window`` orders after ``early`` and after ``late`` runs handled.

    One engine on one ``MemoryStorage`` throughout; the runs between are the
    same orders in batches of ``window``, all kept in the storage, terminal.
    ``repeats`` windows follow each other at each point (so the early ones
    start at ``early``, ``early + window``, ...).
    """
    storage = MemoryStorage()
    async with open_engine(storage, workflows=[BenchOrder]) as engine:
        handled = 0

        async def batch(n: int) -> Window:
            nonlocal handled
            stopped = _Countdown(n)
            unsubscribe = engine.subscribe(stopped, events=["workflow.stop"])
            wall, cpu = time.perf_counter(), time.process_time()
            async with trio.open_nursery() as nursery:
                for i in range(handled, handled + n):
                    start = functools.partial(
                        engine.start_instance, BenchOrder, {"i": i}, id=f"order::{i}"
                    )
                    nursery.start_soon(start)
            await stopped.done.wait()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            unsubscribe()
            measured = Window(handled, n / wall, n / cpu)
            handled += n
            return measured

        async def fill_to(target: int) -> None:
            progress = 0
            while handled < target:
                await batch(min(window, target - handled))
                if handled - progress >= 50_000:
                    progress = handled
                    out(f"(q) {handled:,} runs handled")

        await fill_to(early)
        earlier = [await batch(window) for _ in range(repeats)]
        await fill_to(late)
        later = [await batch(window) for _ in range(repeats)]
        kept = await storage.summary(now=datetime.now(UTC))
    # The point of the row: every run handled is still in the storage.
    assert kept.count(status="completed") == handled, (kept.counts, handled)
    return earlier, later


# -- (r) drain of parked runs ----------------------------------------------------------------


async def engine_drain(kind: str, count: int, tmp: Path) -> float:
    """Seconds from resuming ``count`` hibernated runs at once to the last ``workflow.stop``."""
    async with open_engine(_storage(kind, tmp, "drain"), workflows=[Parked]) as engine:
        await _park_all(engine, count)
        stopped = _Countdown(count)
        engine.subscribe(stopped, events=["workflow.stop"])
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(engine.resume, f"parked::{i}", "received")
        await stopped.done.wait()
        elapsed = time.perf_counter() - started
        completed = await engine.list(status="completed")
        assert len(completed) == count, len(completed)
    mark_times.clear()
    return elapsed


async def baseline_drain(kind: str, count: int, tmp: Path) -> float:
    """The same with ``count`` bare tasks parked on a ``trio.Event`` each: all woken (in
    durable mode each after committing its resume record), until all finished ``Mark``
    (and committed their completion)."""
    wakes = [trio.Event() for _ in range(count)]
    parked, finished = 0, 0
    all_done = trio.Event()

    def one_parked() -> None:
        nonlocal parked
        parked += 1

    def one_finished() -> None:
        nonlocal finished
        finished += 1
        if finished == count:
            all_done.set()

    async def drain(record: Callable[..., Any] | None) -> float:
        async def resume(i: int) -> None:
            assert record is not None
            await record(f"resume{i}", {"run": f"parked::{i}", "step": "wait", "event": "received"})
            wakes[i].set()

        async with trio.open_nursery() as nursery:
            for i in range(count):
                rec = None if record is None else functools.partial(record, f"p{i}")
                nursery.start_soon(
                    functools.partial(
                        bare_parked,
                        f"parked::{i}",
                        wakes[i],
                        one_parked,
                        rec,
                        finished=one_finished,
                    )
                )
            while parked < count:
                await trio.sleep(0.01)
            started = time.perf_counter()
            if record is None:
                for wake in wakes:
                    wake.set()
            else:
                for i in range(count):
                    nursery.start_soon(resume, i)
            await all_done.wait()
            return time.perf_counter() - started

    try:
        if kind == "memory":
            return await drain(None)
        path = tmp / "baseline-drain.db"
        path.unlink(missing_ok=True)
        async with open_batch_writer(str(path)) as writer:
            return await drain(writer.write)
    finally:
        mark_times.clear()
