"""Bare-Trio baselines: the same DAGs and step code, no engine.

- ``bare_order``: validate, then charge and reserve in a nursery, then ship,
  then done; plain tasks, no state machine, no storage.
- ``BatchWriter``: the durable floor. The same step records (a JSON document of
  the run after every transition, as the engine writes) go to SQLite in WAL
  mode with ``synchronous=FULL``, committed in batches by one worker thread;
  every writer waits for its commit before going on, as the engine does.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import trio

from ._flows import Charge, Mark, Reserve, Ship, Validate

__all__ = [
    "BatchWriter",
    "bare_order",
    "bare_parked",
    "open_batch_writer",
    "read_live_documents",
]

_VALIDATE, _CHARGE, _RESERVE, _SHIP, _MARK = Validate(), Charge(), Reserve(), Ship(), Mark()

Record = Callable[[dict[str, Any]], Awaitable[None]]


class BatchWriter:
    """Durable writes with group commit: one worker thread, one transaction per batch."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._queue: list[tuple[str, str, trio.Event]] = []
        self._wakeup = trio.Event()
        self._limiter = trio.CapacityLimiter(1)
        self._conn: sqlite3.Connection | None = None
        self.commits = 0

    def _open(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("CREATE TABLE IF NOT EXISTS runs (key TEXT PRIMARY KEY, doc TEXT NOT NULL)")
        self._conn = conn

    def _commit(self, batch: list[tuple[str, str, trio.Event]]) -> None:
        assert self._conn is not None
        self._conn.execute("BEGIN IMMEDIATE")
        self._conn.executemany(
            "INSERT INTO runs (key, doc) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc",
            [(key, doc) for key, doc, _ in batch],
        )
        self._conn.execute("COMMIT")
        self.commits += 1

    async def write(self, key: str, document: dict[str, Any]) -> None:
        """Queue one record and return once it is committed."""
        committed = trio.Event()
        self._queue.append((key, json.dumps(document, sort_keys=True), committed))
        self._wakeup.set()
        await committed.wait()

    async def _flusher(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup = trio.Event()
            batch, self._queue = self._queue, []
            if batch:
                await trio.to_thread.run_sync(self._commit, batch, limiter=self._limiter)
                for _, _, committed in batch:
                    committed.set()


@asynccontextmanager
async def open_batch_writer(path: str) -> AsyncIterator[BatchWriter]:
    writer = BatchWriter(path)
    await trio.to_thread.run_sync(writer._open, limiter=writer._limiter)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer._flusher)
            yield writer
            nursery.cancel_scope.cancel()
    finally:
        if writer._conn is not None:
            writer._conn.close()


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _document(key: str, context: dict[str, Any]) -> dict[str, Any]:
    """The same fields the engine persists for a run (its JSON document), as plain data."""
    stamp = _now()
    return {
        "id": key,
        "run_id": uuid.uuid4().hex,
        "workflow": "bench.BenchOrder",
        "workflow_version": 1,
        "status": "pending",
        "context": {"initial": context, "steps": {}},
        "step_configs": {},
        "active_steps": [],
        "waiting_steps": [],
        "completed_steps": [],
        "taken_edges": [],
        "runtime_metadata": {},
        "telemetry_metadata": {},
        "execution_history": [],
        "timers": [],
        "error": None,
        "unique_key": f"workflow::bench.BenchOrder::{key}",
        "created_at": stamp,
        "updated_at": stamp,
    }


async def _plain_order() -> None:
    await _VALIDATE.execute(None, None, None)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_CHARGE.execute, None, None, None)
        nursery.start_soon(_RESERVE.execute, None, None, None)
    await _SHIP.execute(None, None, None)


async def bare_order(key: str, context: dict[str, Any], record: Record | None = None) -> None:
    """One order through validate -> [charge, reserve] -> ship -> done with plain tasks.

    Without ``record``: just the steps, no state at all (the in-memory floor).
    With it: the run's document is kept up to date and handed to ``record``
    after every transition (start, first step activated, each step completed),
    exactly where the engine persists.
    """
    if record is None:
        await _plain_order()
        return
    doc = _document(key, context)

    async def transition(step: str | None, event: str | None, active: list[str]) -> None:
        assert record is not None
        stamp = _now()
        if step is not None:
            doc["completed_steps"] = sorted([*doc["completed_steps"], step])
            doc["execution_history"].append(
                {
                    "attempt": 1,
                    "context_updates": None,
                    "event": event,
                    "step": step,
                    "timestamp": stamp,
                }
            )
            doc["taken_edges"] = sorted([*doc["taken_edges"], *([step, a] for a in active)])
        doc["active_steps"] = sorted(active)
        doc["updated_at"] = stamp
        await record(doc)

    await record(doc)
    doc["status"] = "running"
    await transition(None, None, ["validate"])
    await transition("validate", await _VALIDATE.execute(None, None, None), ["charge", "reserve"])
    active = ["charge", "reserve"]

    async def branch(name: str, step: Any) -> None:
        event = await step.execute(None, None, None)
        active.remove(name)
        await transition(name, event, [*active] or ["ship"])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(branch, "charge", _CHARGE)
        nursery.start_soon(branch, "reserve", _RESERVE)
    await transition("ship", await _SHIP.execute(None, None, None), ["done"])
    doc["status"] = "completed"
    await transition("done", "done", [])


async def bare_parked(
    key: str,
    wake: trio.Event,
    parked: Callable[[], None],
    record: Record | None = None,
    finished: Callable[[], None] | None = None,
) -> None:
    """A run parked on ``wake``: it holds its state in its task, then runs ``Mark``.

    With ``finished`` the run goes on to its end, as the engine's does after
    ``Mark``: the completed document is recorded (durable mode), then
    ``finished`` is called.
    """
    doc: dict[str, Any] = {"id": key, "status": "waiting", "active": ["wait"], "history": []}
    if record is not None:
        await record(doc)
    parked()
    await wake.wait()
    doc["history"].append(["wait", "received", _now()])
    doc["active"] = ["mark"]
    if record is not None:
        await record(doc)
    event = await _MARK.execute(SimpleNamespace(id=key), None, None)  # type: ignore[arg-type]
    if finished is None:
        return
    doc["history"].append(["mark", event, _now()])
    doc["active"] = []
    doc["status"] = "completed"
    if record is not None:
        await record(doc)
    finished()


def read_live_documents(path: str) -> int:
    """The floor of recovery: read every live run's JSON from the engine's own file."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT instance FROM hephaestus_runs WHERE status IN ('pending', 'running', 'waiting')"
        ).fetchall()
        documents = [json.loads(text) for (text,) in rows]
        conn.execute("SELECT seq FROM hephaestus_wakeups").fetchall()
    finally:
        conn.close()
    return len(documents)
