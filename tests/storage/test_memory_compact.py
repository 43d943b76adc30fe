"""``MemoryStorage`` keeps finished runs compactly: no object graph for the collector.

A long-running process accumulates finished runs. Kept as ``Instance`` graphs
they made every full pass of the cyclic garbage collector walk all of them;
a finished run is now a tuple of atoms (its ``dumps`` text and the columns
queries filter on), which the collector does not track at all. These tests
look at the storage's own tables on purpose: the behaviour seen through the
protocol is the conformance suite's business, and it is unchanged.
"""

from __future__ import annotations

import gc
from datetime import UTC, datetime, timedelta

import attrs
import pytest
import trio

from hephaestus_trio import (
    Done,
    Instance,
    MemoryStorage,
    Status,
    Step,
    Unique,
    Workflow,
    open_engine,
)
from hephaestus_trio.storage import NewWakeup, WakeupKind, WakeupRefused

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def _objects(value: object) -> list[object]:
    """``value`` and everything it references, transitively (atoms included)."""
    seen: dict[int, object] = {}
    todo = [value]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen[id(item)] = item
        todo.extend(gc.get_referents(item))
    return list(seen.values())


async def _finish_one(storage: MemoryStorage, run_id: str, **changes: object) -> Instance:
    run = Instance.new(
        "tests.Compact", {"order": [1, 2]}, id=f"compact::{run_id}", run_id=run_id, now=T0
    )
    lease = await storage.create(run, now=T0, owner="engine", ttl=30)
    assert lease is not None
    await storage.add_wakeup(
        NewWakeup(
            run_id=run_id,
            kind=WakeupKind.RESUME,
            step="s",
            event="go",
            payload=None,
            dedup_key="once",
            due_at=T0,
        ),
        now=T0,
    )
    done = attrs.evolve(
        run, status=Status.COMPLETED, updated_at=T0 + timedelta(seconds=1), **changes
    )
    await storage.write(lease, done, now=T0 + timedelta(seconds=1))
    return done


async def test_a_finished_run_is_a_tuple_the_collector_does_not_track() -> None:
    async with MemoryStorage() as storage:
        done = await _finish_one(storage, "r1")
        assert "r1" not in storage._runs
        record = storage._finished["r1"]
        assert type(record) is tuple
        # The collector stops tracking a tuple of untracked parts when it meets one; the
        # tuple of dedup keys inside is met in the first pass, the record in the second.
        gc.collect()
        gc.collect()
        assert not gc.is_tracked(record)
        # Nothing in it is an object graph: atoms only, and no Instance anywhere.
        assert not any(gc.is_tracked(part) for part in _objects(record))
        assert not any(isinstance(part, Instance) for part in _objects(record))
        # The business id index holds a plain string for an id with one run.
        assert storage._by_id["compact::r1"] == "r1"
        # Read back equal, through every way in.
        assert await storage.get("r1") == done
        assert await storage.query(status=Status.COMPLETED) == [done]
        assert await storage.query(id="compact::r1") == [done]
        assert await storage.query(status=Status.RUNNING) == []
        assert await storage.seen_dedup_key("r1", "once")
        assert await storage.wakeups("r1") == []


async def test_finished_and_live_runs_query_together_in_order() -> None:
    async with MemoryStorage() as storage:
        finished = await _finish_one(storage, "a")
        live = Instance.new(
            "tests.Compact", {}, id="compact::a", run_id="b", now=T0 + timedelta(seconds=5)
        )
        await storage.create(live, now=T0)
        assert storage._by_id["compact::a"] == {"a", "b"}
        assert await storage.query(id="compact::a") == [finished, live]
        assert await storage.query(after=(T0, "a")) == [live]
        assert await storage.query(created_after=T0 + timedelta(seconds=1)) == [live]
        assert await storage.query(workflow="tests.Compact", limit=1) == [finished]
        assert await storage.query(workflow="other") == []
        summary = await storage.summary(now=T0)
        assert summary.counts == {
            ("tests.Compact", Status.COMPLETED): 1,
            ("tests.Compact", Status.PENDING): 1,
        }
        with pytest.raises(WakeupRefused) as refused:
            await storage.add_wakeup(
                NewWakeup(run_id="a", kind=WakeupKind.CANCEL, due_at=T0), now=T0
            )
        assert (refused.value.reason, refused.value.status) == ("not_live", "completed")
        assert await storage.purge(T0 + timedelta(hours=1)) == 1
        assert await storage.get("a") is None
        assert storage._by_id["compact::a"] == "b"
        assert await storage.query() == [live]


async def test_a_finished_run_that_json_cannot_write_is_kept_as_it_was() -> None:
    # Not JSON-safe (Instance.new refuses it), but a hand-built instance may hold it.
    async with MemoryStorage() as storage:
        done = await _finish_one(storage, "odd", runtime_metadata={"tags": {"a", "b"}})
        assert await storage.get("odd") == done


class Quick(Step):
    events = ("ok",)

    async def execute(self, instance: object, config: object, context: object) -> str:
        await trio.lowlevel.checkpoint()
        return "ok"


class CompactFlow(Workflow, unique=Unique(key="n"), name="tests.CompactFlow"):
    start_at = Quick
    transitions = {(Quick, "ok"): Done}


async def test_runs_an_engine_finishes_leave_no_object_graph_behind() -> None:
    storage = MemoryStorage()
    async with open_engine(storage, workflows=[CompactFlow]) as engine:
        for n in range(20):
            await engine.start_instance(CompactFlow, {"n": n}, id=f"n::{n}")
        for n in range(20):
            await engine.wait(f"n::{n}")
    async with storage:
        assert storage._runs == {}
        assert len(storage._finished) == 20
        gc.collect()
        gc.collect()
        assert not any(gc.is_tracked(record) for record in storage._finished.values())
        runs = await storage.query(workflow="tests.CompactFlow")
        assert [run.status for run in runs] == [Status.COMPLETED] * 20


async def test_the_claim_index_keeps_no_finished_run_alive() -> None:
    """A held run's index entry outlives it (until its lease would have expired):
    the entry must not keep the run's last document alive for the collector."""
    import weakref

    async with MemoryStorage() as storage:
        done = await _finish_one(storage, "r1")
        assert "r1" not in storage._runs
        last = weakref.ref(done)
        del done
        gc.collect()
        assert last() is None
        # The run is still found by every query, from its compact record.
        assert [run.run_id for run in await storage.query(status=Status.COMPLETED)] == ["r1"]


async def test_renewing_held_runs_does_not_grow_the_claim_index() -> None:
    """Each renewal re-files the run and leaves its old entry stale; stale entries are
    swept once they are the majority, so a long-lived lease costs constant memory."""
    from hephaestus_trio.storage._memory_index import _SWEEP_AT

    async with MemoryStorage() as storage:
        leases = []
        for n in range(10):
            run = Instance.new("tests.Compact", {}, id=f"held::{n}", run_id=f"h{n}", now=T0)
            lease = await storage.create(run, now=T0, owner="engine", ttl=30)
            assert lease is not None
            leases.append(lease)
        at = T0
        for _ in range(1_000):
            at += timedelta(seconds=1)
            leases = await storage.renew("engine", leases, now=at, ttl=30)
            assert len(leases) == 10
        index = storage._claimable
        assert index._entries <= 2 * _SWEEP_AT + 10
        # Still a correct index: the runs are claimable once their leases lapse.
        later = at + timedelta(seconds=31)
        claimed = await storage.claim("other", now=later, ttl=30, workflows=None, limit=100)
        assert sorted(c.run_id for c in claimed) == sorted(lease.run_id for lease in leases)
