"""The PostgreSQL rows: engines on ``PostgresStorage`` against plain psycopg from Trio.

The server is a ``PostgresCluster`` the bench starts itself (``fsync`` on,
its data directory in the system's temporary folder, whose filesystem the
header prints). Each measurement gets a fresh database.

The baseline issues the same writes as the engine with nothing else: the
run's JSON document after every transition (7 per order, as row (a)),
each an ``INSERT ... ON CONFLICT DO UPDATE`` in its own transaction, through
a ``psycopg_pool.ConnectionPool`` of the same size as the engine's, from Trio
via ``trio.to_thread`` with a ``CapacityLimiter`` sized to the pool (the
same shape as the backend's data path). The step code is the same as the
other rows' (``_flows``).

Throughput with several engines runs each engine (and each baseline
program) in its own process: they start together on a signal, and the total
is every order divided by the time from the first start to the last
completion.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import trio

from hephaestus_trio import Event, Instance, Status, open_engine

from ._baseline import bare_order, bare_parked
from ._flows import BenchOrder, Parked, mark_times, mark_waiters

__all__ = [
    "PgWriter",
    "baseline_pg_latency",
    "baseline_pg_parked_kib",
    "baseline_pg_recovery",
    "baseline_pg_resume_latency",
    "engine_pg_latency",
    "engine_pg_parked_kib",
    "engine_pg_recovery",
    "engine_pg_resume_latency",
    "open_pg_writer",
    "pg_child",
    "prepare_pg_parked",
    "throughput_processes",
]

ROOT = Path(__file__).resolve().parent.parent
POOL_SIZE = 8
"""Connections per engine (``PostgresStorage(pool_size=)``) and per baseline program."""

_TABLE = """
CREATE TABLE IF NOT EXISTS bench_runs (
    key text PRIMARY KEY,
    status text NOT NULL,
    doc text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""
_UPSERT = (
    "INSERT INTO bench_runs (key, status, doc) VALUES (%s, %s, %s) "
    "ON CONFLICT (key) DO UPDATE SET status = excluded.status, doc = excluded.doc, "
    "updated_at = now()"
)


def storage(dsn: str) -> Any:
    """The engine side's storage: ``PostgresStorage`` with the baseline's pool size."""
    from hephaestus_trio import PostgresStorage

    return PostgresStorage(dsn, pool_size=POOL_SIZE)


# -- the baseline's writer ---------------------------------------------------------------


class PgWriter:
    """Plain psycopg from Trio: one pooled connection per write, one transaction each."""

    def __init__(self, dsn: str, pool_size: int = POOL_SIZE) -> None:
        from psycopg_pool import ConnectionPool

        self._pool = ConnectionPool(dsn, min_size=pool_size, max_size=pool_size, open=False)
        self._limiter = trio.CapacityLimiter(pool_size)
        self.writes = 0

    def _open(self) -> None:
        self._pool.open(wait=True)
        with self._pool.connection() as conn:
            # Several baseline processes open at once: one creates the table.
            conn.execute("SELECT pg_advisory_xact_lock(4242)")
            conn.execute(_TABLE)

    def _write(self, key: str, status: str, doc: str) -> None:
        with self._pool.connection() as conn:  # commits on leaving
            conn.execute(_UPSERT, (key, status, doc))

    async def write(self, key: str, document: dict[str, Any]) -> None:
        """Upsert one run's document; returns once it is committed."""
        text = json.dumps(document, sort_keys=True)
        status = str(document.get("status", "running"))
        await trio.to_thread.run_sync(self._write, key, status, text, limiter=self._limiter)
        self.writes += 1

    def _read_live(self) -> int:
        with self._pool.connection() as conn:
            rows = conn.execute(
                "SELECT doc FROM bench_runs WHERE status IN ('pending', 'running', 'waiting')"
            ).fetchall()
        return len([json.loads(text) for (text,) in rows])

    async def read_live(self) -> int:
        """Every live document, read and decoded (the floor of a recovery)."""
        return await trio.to_thread.run_sync(self._read_live, limiter=self._limiter)


@asynccontextmanager
async def open_pg_writer(dsn: str) -> AsyncIterator[PgWriter]:
    writer = PgWriter(dsn)
    await trio.to_thread.run_sync(writer._open)
    try:
        yield writer
    finally:
        await trio.to_thread.run_sync(writer._pool.close)


# -- (k) throughput, one process per engine ------------------------------------------------


async def _engine_orders(
    dsn: str, first: int, count: int, go: Callable[[], Any]
) -> tuple[float, float]:
    done = trio.Event()
    left = count

    def stopped(event: Event) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            done.set()

    async with open_engine(storage(dsn), workflows=[BenchOrder]) as engine:
        engine.subscribe(stopped, events=["workflow.stop"])
        await go()
        started = time.time()
        async with trio.open_nursery() as nursery:
            for i in range(first, first + count):
                start = functools.partial(
                    engine.start_instance, BenchOrder, {"i": i}, id=f"order::{i}"
                )
                nursery.start_soon(start)
        await done.wait()
        return started, time.time()


async def _baseline_orders(
    dsn: str, first: int, count: int, go: Callable[[], Any]
) -> tuple[float, float]:
    async with open_pg_writer(dsn) as writer:
        await go()
        started = time.time()
        async with trio.open_nursery() as nursery:
            for i in range(first, first + count):
                record = functools.partial(writer.write, f"order::{i}")
                nursery.start_soon(bare_order, f"order::{i}", {"i": i}, record)
        return started, time.time()


async def _child_main(side: str, dsn: str, first: int, count: int) -> None:
    async def go() -> None:
        print("ready", flush=True)
        line = await trio.to_thread.run_sync(sys.stdin.readline)
        assert line.strip() == "go", line

    run = _engine_orders if side == "engine" else _baseline_orders
    started, ended = await run(dsn, first, count, go)
    print(json.dumps({"started": started, "ended": ended}), flush=True)


def pg_child(side: str, dsn: str, first: int, count: int) -> None:
    """The body of one throughput process (``python -m bench --pg-child ...``)."""
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # dropped connections at exit
    trio.run(_child_main, side, dsn, first, count)


def throughput_processes(side: str, dsn: str, processes: int, count: int) -> float:
    """Orders per second of ``processes`` engine (or baseline) processes sharing ``dsn``.

    Each process gets ``count // processes`` orders with ids of its own; all
    start on one signal, once every process has opened its engine (or pool).
    """
    share = count // processes
    procs = []
    for n in range(processes):
        command = [
            sys.executable,
            "-m",
            "bench",
            "--pg-child",
            side,
            dsn,
            str(n * share),
            str(share),
        ]
        procs.append(
            subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bench child said {line!r} instead of 'ready'")
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        spans = []
        for proc in procs:
            out, _ = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"bench child failed with {proc.returncode}")
            spans.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    first = min(s["started"] for s in spans)
    last = max(s["ended"] for s in spans)
    return share * processes / (last - first)


# -- (l) single-run latency ---------------------------------------------------------------


def _set(event: trio.Event, _: Event) -> None:
    event.set()


async def engine_pg_latency(dsn: str, runs: int) -> float:
    """Mean seconds from ``start_instance`` to ``workflow.stop``, one order at a time."""
    async with open_engine(storage(dsn), workflows=[BenchOrder]) as engine:
        total = 0.0
        for i in range(runs):
            done = trio.Event()
            unsubscribe = engine.subscribe(functools.partial(_set, done), events=["workflow.stop"])
            started = time.perf_counter()
            await engine.start_instance(BenchOrder, {"i": i}, id=f"order::{i}")
            await done.wait()
            total += time.perf_counter() - started
            unsubscribe()
        return total / runs


async def baseline_pg_latency(dsn: str, runs: int) -> float:
    total = 0.0
    async with open_pg_writer(dsn) as writer:
        for i in range(runs):
            started = time.perf_counter()
            await bare_order(f"order::{i}", {"i": i}, functools.partial(writer.write, f"o{i}"))
            total += time.perf_counter() - started
    return total / runs


# -- (m) resume to next step --------------------------------------------------------------


async def _park(engine: Any, count: int, offset: int = 0) -> None:
    """Start ``count`` runs of ``Parked`` and return once every one hibernates."""
    left = count
    parked = trio.Event()

    def one(event: Event) -> None:
        nonlocal left
        left -= 1
        if left == 0:
            parked.set()

    unsubscribe = engine.subscribe(one, events=["step.async"])
    batch = 200
    for first in range(offset, offset + count, batch):
        async with trio.open_nursery() as nursery:
            for i in range(first, min(first + batch, offset + count)):
                start = functools.partial(engine.start_instance, Parked, {}, id=f"parked::{i}")
                nursery.start_soon(start)
    await parked.wait()
    unsubscribe()
    while engine.live_tasks:  # the last ones are still committing their park
        await trio.sleep(0.001)


async def engine_pg_resume_latency(dsn: str, runs: int) -> float:
    """Mean seconds from ``resume`` of a hibernating run to its next step starting.

    Each resume once the previous run ended (untimed), as row (e) does.
    """
    async with open_engine(storage(dsn), workflows=[Parked]) as engine:
        await _park(engine, runs)
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


async def baseline_pg_resume_latency(dsn: str, runs: int) -> float:
    """Commit a resume record, wake the parked task; it commits its transition and
    starts the next step (as row (e) does on SQLite)."""
    wakes = [trio.Event() for _ in range(runs)]
    parked = 0

    def one_parked() -> None:
        nonlocal parked
        parked += 1

    elapsed = 0.0
    async with open_pg_writer(dsn) as writer, trio.open_nursery() as nursery:
        for i in range(runs):
            record = functools.partial(writer.write, f"p{i}")
            nursery.start_soon(bare_parked, f"parked::{i}", wakes[i], one_parked, record)
        while parked < runs:
            await trio.sleep(0.01)
        for i in range(runs):
            iid = f"parked::{i}"
            marked = mark_waiters[iid] = trio.Event()
            started = time.perf_counter()
            await writer.write(f"resume{i}", {"run": iid, "step": "wait", "event": "received"})
            wakes[i].set()
            await marked.wait()
            elapsed += mark_times.pop(iid) - started
    return elapsed / runs


# -- (n) recovery of parked runs, (o) bytes per parked run ---------------------------------


async def prepare_pg_parked(dsn: str, count: int) -> None:
    """``count`` runs of ``Parked`` hibernated as an engine leaves them (see row (d))."""
    async with open_engine(storage(dsn), workflows=[Parked]) as engine:
        await _park(engine, 1)
        (template,) = await engine.list(status="waiting")
    assert template.status is Status.WAITING
    async with storage(dsn) as store:
        limiter = trio.CapacityLimiter(POOL_SIZE * 2)

        async def put(i: int) -> None:
            async with limiter:
                iid = f"parked::copy{i}"
                copy: Instance = attrs.evolve(
                    template, id=iid, run_id=f"run{i:08d}", unique_key=Parked.constraint_key(iid)
                )
                now = datetime.now(UTC)
                lease = await store.create(copy, now=now, owner="bench-seed")
                assert lease is not None
                await store.release(lease, now=now, wake_at=None, seen=0)

        async with trio.open_nursery() as nursery:
            for i in range(1, count):
                nursery.start_soon(put, i)


async def engine_pg_recovery(dsn: str, count: int) -> float:
    """Seconds for ``open_engine`` to open the storage and claim what needs a driver."""
    seen: dict[str, float] = {}
    started = time.perf_counter()
    async with open_engine(
        storage(dsn), workflows=[Parked], handlers=[lambda e: seen.update(e.measurements)]
    ) as engine:
        elapsed = time.perf_counter() - started
        assert seen.get("recovered") == 0, seen
        assert len(await engine.list(status="waiting")) == count
    return elapsed


async def prepare_pg_baseline_parked(dsn: str, count: int) -> None:
    """The same number of parked documents in the baseline's table."""
    async with open_pg_writer(dsn) as writer:
        limiter = trio.CapacityLimiter(POOL_SIZE * 2)

        async def put(i: int) -> None:
            async with limiter:
                doc = {"id": f"parked::{i}", "status": "waiting", "active": ["wait"]}
                await writer.write(f"parked::{i}", doc)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(put, i)


async def baseline_pg_recovery(dsn: str, count: int) -> float:
    """Seconds to open a pool, read and ``json.loads`` every live document."""
    started = time.perf_counter()
    async with open_pg_writer(dsn) as writer:
        found = await writer.read_live()
    elapsed = time.perf_counter() - started
    assert found == count, found
    return elapsed


def database_bytes(dsn: str) -> int:
    """Bytes of every table of the database, indexes and TOAST included."""
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(relid)), 0) FROM pg_stat_user_tables"
        ).fetchone()
    assert row is not None
    return int(row[0])


async def engine_pg_parked_kib(dsn: str, count: int) -> float:
    """KiB of database per run parked by a real engine (tables, indexes, TOAST)."""
    async with open_engine(storage(dsn), workflows=[Parked]) as engine:
        await _park(engine, 20)  # the schema exists and every page kind is allocated
        before = await trio.to_thread.run_sync(database_bytes, dsn)
        await _park(engine, count, offset=20)
    after = await trio.to_thread.run_sync(database_bytes, dsn)
    return (after - before) / count / 1024


async def baseline_pg_parked_kib(dsn: str, count: int) -> float:
    """KiB per parked run's document upserted as the baseline writes it (twice: start, park)."""
    async with open_pg_writer(dsn) as writer:
        await writer.write("warm", {"id": "warm"})
        before = await trio.to_thread.run_sync(database_bytes, dsn)
        limiter = trio.CapacityLimiter(POOL_SIZE * 2)

        async def put(i: int) -> None:
            async with limiter:
                doc = _parked_document(f"parked::{i}")
                await writer.write(doc["id"], {**doc, "status": "running"})
                await writer.write(doc["id"], doc)

        async with trio.open_nursery() as nursery:
            for i in range(count):
                nursery.start_soon(put, i)
    after = await trio.to_thread.run_sync(database_bytes, dsn)
    return (after - before) / count / 1024


def _parked_document(key: str) -> dict[str, Any]:
    """What a parked ``Parked`` run's document holds, as plain data."""
    stamp = datetime.now(UTC).isoformat()
    return {
        "id": key,
        "run_id": os.urandom(16).hex(),
        "workflow": "bench.Parked",
        "workflow_version": 1,
        "status": "waiting",
        "context": {"initial": {}, "steps": {}},
        "step_configs": {},
        "active_steps": ["wait_for_event"],
        "waiting_steps": ["wait_for_event"],
        "completed_steps": [],
        "taken_edges": [],
        "runtime_metadata": {},
        "telemetry_metadata": {},
        "execution_history": [],
        "timers": [],
        "error": None,
        "unique_key": f"workflow::bench.Parked::{key}",
        "created_at": stamp,
        "updated_at": stamp,
    }
