"""Differential test: every durable backend agrees with ``MemoryStorage``.

Hypothesis draws a list of storage operations (attrs ``Op`` values, so a
shrunk failure prints as a readable script), applies each one to the
reference ``MemoryStorage`` and to each other backend, and compares the
results and the visible state after every operation.
"""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import trio
from hypothesis import given
from hypothesis import strategies as st

from hephaestus_trio import Instance, MemoryStorage, SQLiteStorage, Status, Storage
from hephaestus_trio.storage import UniqueViolation

T0 = datetime(2030, 1, 1, tzinfo=UTC)
RUN_IDS = ("r1", "r2", "r3", "r4")
IDS = ("k::a", "k::b")
KEYS = (None, "workflow::k::a", "global::k::a")
WORKFLOWS = ("tests.A", "tests.B")


@attrs.frozen
class Put:
    run_id: str
    id: str
    workflow: str
    status: Status
    unique_key: str | None
    minutes: int
    consume: tuple[int, ...] = ()


@attrs.frozen
class Delete:
    run_id: str


@attrs.frozen
class Get:
    run_id: str


@attrs.frozen
class Query:
    status: Status | None
    workflow: str | None
    id: str | None


@attrs.frozen
class AddResume:
    run_id: str
    step: str


@attrs.frozen
class DeleteResume:
    index: int
    """Which of the resumes added so far (modulo their count)."""


@attrs.frozen
class Purge:
    minutes: int


ops = st.one_of(
    st.builds(
        Put,
        run_id=st.sampled_from(RUN_IDS),
        id=st.sampled_from(IDS),
        workflow=st.sampled_from(WORKFLOWS),
        status=st.sampled_from(Status),
        unique_key=st.sampled_from(KEYS),
        minutes=st.integers(0, 3),
        consume=st.lists(st.integers(1, 6), max_size=2).map(tuple),
    ),
    st.builds(Delete, run_id=st.sampled_from(RUN_IDS)),
    st.builds(Get, run_id=st.sampled_from(RUN_IDS)),
    st.builds(
        Query,
        status=st.none() | st.sampled_from(Status),
        workflow=st.none() | st.sampled_from(WORKFLOWS),
        id=st.none() | st.sampled_from(IDS),
    ),
    st.builds(AddResume, run_id=st.sampled_from(RUN_IDS), step=st.sampled_from(("a", "b"))),
    st.builds(DeleteResume, index=st.integers(0, 5)),
    st.builds(Purge, minutes=st.integers(0, 3)),
)


def _instance(op: Put) -> Instance:
    base = Instance.new(
        op.workflow,
        {"n": 1},
        id=op.id,
        run_id=op.run_id,
        now=T0 + timedelta(minutes=op.minutes),
        unique_key=op.unique_key,
    )
    return attrs.evolve(base, status=op.status)


async def _apply(storage: Storage, op: Any, seqs: list[int]) -> object:
    """Run one op; return a comparable outcome (values, or the error's type)."""
    try:
        if isinstance(op, Put):
            await storage.put(
                _instance(op), consume=[seqs[i % len(seqs)] for i in op.consume] if seqs else []
            )
            return None
        if isinstance(op, Delete):
            await storage.delete(op.run_id)
            return None
        if isinstance(op, Get):
            return await storage.get(op.run_id)
        if isinstance(op, Query):
            return await storage.query(status=op.status, workflow=op.workflow, id=op.id)
        if isinstance(op, AddResume):
            record = await storage.add_resume(op.run_id, op.step, "go", T0)
            seqs.append(record.seq)
            return (record.run_id, record.step, record.event)
        if isinstance(op, DeleteResume):
            if seqs:
                await storage.delete_resume(seqs[op.index % len(seqs)])
            return None
        assert isinstance(op, Purge)
        return await storage.purge(T0 + timedelta(minutes=op.minutes))
    except UniqueViolation as exc:
        return ("UniqueViolation", exc.unique_key, exc.existing_run_id)


async def _visible(storage: Storage) -> tuple[object, ...]:
    resumes = [(r.run_id, r.step, r.event) for r in await storage.pending_resumes()]
    return (await storage.query(), resumes)


@given(script=st.lists(ops, min_size=1, max_size=25))
def test_sqlite_agrees_with_memory(script: list[Any]) -> None:
    """After every operation both backends return the same thing and hold the same state."""

    async def main(folder: Path) -> None:
        async with MemoryStorage() as memory, SQLiteStorage(folder / "agree.db") as sqlite:
            memory_seqs: list[int] = []
            sqlite_seqs: list[int] = []
            for step, op in enumerate(script):
                expected = await _apply(memory, op, memory_seqs)
                actual = await _apply(sqlite, op, sqlite_seqs)
                assert actual == expected, f"op {step} {op!r}"
                assert await _visible(sqlite) == await _visible(memory), f"after op {step} {op!r}"

    with tempfile.TemporaryDirectory() as folder:
        trio.run(main, Path(folder))
