"""What the operator's reads cost on SQLite, as ratios measured in the same run.

``python -m bench.reads [--runs N] [--quick]`` fills one SQLite file with N
runs (a third parked, with a timer each) and prints three ratios:

- ``summary()`` (what ``stats`` runs: SQL aggregates over indexes) against the
  naive way, ``query()`` of every run and counting in Python;
- a page of 100 from the middle (keyset: ``query(after=..., limit=100)``,
  what ``list --after`` runs) against the first page, and an ``OFFSET`` page
  at the same depth (raw SQL on the same file) against the keyset page;
- writing runs (create, then two fenced writes each) on schema 4 against the
  same work on a file without the two indexes schema 4 added: what those
  indexes cost the engine's hot path.

Each timing is the best of 5 (3 with ``--quick``), interleaved.
"""

from __future__ import annotations

import argparse
import gc
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import trio

from hephaestus_trio import Instance, SQLiteStorage, Status, TimerRecord
from hephaestus_trio.serialization import loads
from hephaestus_trio.storage import NewWakeup, WakeupKind

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NEW_INDEXES = ("hephaestus_runs_workflow_created_idx", "hephaestus_wakeups_timer_due_idx")


def _run(n: int) -> Instance:
    new = Instance.new(
        f"bench.Flow{n % 4}",
        {"n": n, "pad": "x" * 200},
        id=f"orderid::{n}",
        now=T0 + timedelta(milliseconds=n),
        run_id=f"r{n:08d}",
    )
    if n % 3 == 0:
        return attrs.evolve(
            new,
            status=Status.WAITING,
            active_steps=frozenset({"wait"}),
            waiting_steps=frozenset({"wait"}),
        )
    return attrs.evolve(new, status=Status.RUNNING)


async def fill(path: Path, count: int) -> None:
    """``count`` unowned runs; every third parked with a timer (concurrent: grouped commits)."""
    async with SQLiteStorage(path) as storage:

        async def one(n: int) -> None:
            run = _run(n)
            await storage.create(run, now=run.created_at)
            if run.status is Status.WAITING:
                timer = NewWakeup(
                    run_id=run.run_id,
                    kind=WakeupKind.TIMER,
                    step="wait",
                    event="timeout",
                    due_at=T0 + timedelta(days=1, seconds=n),
                )
                await storage.add_wakeup(timer, now=run.created_at)

        for start in range(0, count, 1000):
            async with trio.open_nursery() as nursery:
                for n in range(start, min(start + 1000, count)):
                    nursery.start_soon(one, n)


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    gc.collect()  # the previous measurement's garbage (100,000 runs) is not this one's cost
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


async def reads(path: Path, count: int, repeats: int) -> dict[str, float]:
    middle = _run(count // 2)
    cursor = (middle.created_at, middle.run_id)
    times: dict[str, list[float]] = {k: [] for k in ("summary", "naive", "first", "deep", "offset")}
    now = T0 + timedelta(days=1, seconds=count // 2)
    async with SQLiteStorage(path, read_only=True) as storage:

        async def naive() -> None:
            counts: dict[tuple[str, Status], int] = {}
            for run in await storage.query():
                counts[(run.workflow, run.status)] = counts.get((run.workflow, run.status), 0) + 1

        def offset_page() -> None:
            # The same page by OFFSET, and the same work per row (load each document).
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
                rows = conn.execute(
                    "SELECT run_id, instance FROM hephaestus_runs ORDER BY created_at, run_id "
                    "LIMIT 100 OFFSET ?",
                    (count // 2,),
                ).fetchall()
            for _, text in rows:
                loads(text)

        async def offset() -> None:
            await trio.to_thread.run_sync(offset_page)

        for _ in range(repeats):
            # Right after the naive read of every run, the next query pays a one-off
            # half second (the process giving memory back), whatever it is: not timed.
            await storage.query(limit=1)
            times["first"].append(await _timed(lambda: storage.query(limit=100)))
            times["deep"].append(await _timed(lambda: storage.query(limit=100, after=cursor)))
            times["offset"].append(await _timed(offset))
            times["summary"].append(await _timed(lambda: storage.summary(now=now)))
            times["naive"].append(await _timed(naive))
    return {k: min(v) for k, v in times.items()}


async def writes(path: Path, count: int) -> float:
    """Seconds to create ``count`` owned runs and write each twice (running, then parked
    with a timer): the index work of an engine's transitions."""
    async with SQLiteStorage(path) as storage:
        started = time.perf_counter()

        async def one(n: int) -> None:
            run = attrs.evolve(_run(n), status=Status.RUNNING, run_id=f"w{n:08d}")
            lease = await storage.create(run, now=run.created_at, owner="bench")
            assert lease is not None
            await storage.write(lease, attrs.evolve(run, status=Status.RUNNING), now=T0)
            parked = attrs.evolve(
                run,
                status=Status.WAITING,
                active_steps=frozenset({"wait"}),
                waiting_steps=frozenset({"wait"}),
            )
            timer = TimerRecord(step="wait", event="timeout", fire_at=T0 + timedelta(days=7))
            await storage.write(lease, parked, now=T0, add_timers=[timer])

        async with trio.open_nursery() as nursery:
            for n in range(count):
                nursery.start_soon(one, n)
        return time.perf_counter() - started


def _drop_new_indexes(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        for name in NEW_INDEXES:
            conn.execute(f"DROP INDEX {name}")
        conn.commit()


async def main_async(count: int, writes_count: int, repeats: int, tmp: Path) -> None:
    path = tmp / "reads.db"
    print(f"filling {count} runs ...", flush=True)
    await fill(path, count)
    r = await reads(path, count, repeats)
    print()
    print(f"| measurement ({count} runs) | time | baseline | ratio |")
    print("|---|---|---|---|")
    print(
        f"| summary() vs query() of every run, counted in Python | {r['summary'] * 1e3:.1f} ms "
        f"| {r['naive'] * 1e3:.1f} ms | {r['summary'] / r['naive']:.4f} |"
    )
    print(
        f"| keyset page of 100 at the middle vs the first page | {r['deep'] * 1e3:.2f} ms "
        f"| {r['first'] * 1e3:.2f} ms | {r['deep'] / r['first']:.2f} |"
    )
    print(
        f"| OFFSET page of 100 at the middle vs the keyset page | {r['offset'] * 1e3:.2f} ms "
        f"| {r['deep'] * 1e3:.2f} ms | {r['offset'] / r['deep']:.1f} |"
    )
    with_new: list[float] = []
    without: list[float] = []
    for attempt in range(repeats):
        a, b = tmp / f"w3-{attempt}.db", tmp / f"w2-{attempt}.db"
        async with SQLiteStorage(b):
            pass
        _drop_new_indexes(b)
        without.append(await writes(b, writes_count))
        with_new.append(await writes(a, writes_count))
    best_new, best_old = min(with_new), min(without)
    print(
        f"| {writes_count} creates + 2 writes each, schema 4 vs without its 2 indexes "
        f"| {best_new * 1e3:.0f} ms | {best_old * 1e3:.0f} ms | {best_new / best_old:.3f} |"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.reads", description=__doc__)
    parser.add_argument("--runs", type=int, default=100_000, help="runs in the file")
    parser.add_argument("--quick", action="store_true", help="2,000 runs, 3 repeats")
    args = parser.parse_args(argv)
    count = 2_000 if args.quick else args.runs
    repeats = 3 if args.quick else 5
    writes_count = 500 if args.quick else 5_000
    with tempfile.TemporaryDirectory(prefix="hephaestus-bench-reads-") as tmp:
        trio.run(main_async, count, writes_count, repeats, Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
