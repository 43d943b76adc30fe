"""Several engine processes on one real PostgreSQL database: kills, pauses, restarts.

Every test gets a database of its own on the run's throwaway server and
starts its engines as subprocesses (``_pg_app.py``) with short leases (TTL
1 s, renewal every 0.2 s) unless it says otherwise. Steps record each
execution when they start in a side log (``O_APPEND`` + ``fsync``), so an
execution a SIGKILL interrupted is counted too. Waits poll real conditions
(marker files, rows) under deadlines.

What each test proves is in its docstring; together they are the list of
issue 8, item 4.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
import trio

from hephaestus_trio import LeaseLost, PostgresStorage, Status, open_engine
from hephaestus_trio.core._workflow import get_workflow
from hephaestus_trio.runtime._calls import resume_run
from hephaestus_trio.runtime._ownership import claim_now
from hephaestus_trio.storage import Lease
from hephaestus_trio.testing import PostgresCluster

from . import _pg_app as app
from ._harness import Engines, assert_ended_as_uncrashed, history

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL and SIGSTOP are POSIX"),
]

TTL = 1.0
RENEWAL = 0.2


def _initial(n: int, **extra: Any) -> dict[str, Any]:
    return {"n": n, **extra}


async def resume_from_outside(dsn: str, ids: list[str], event: str = "go") -> dict[str, float]:
    """Resume runs from this process, with no engine (as the CLI does); when each was accepted."""
    accepted: dict[str, float] = {}
    async with PostgresStorage(dsn) as storage:
        for id in ids:
            added, _ = await resume_run(
                storage,
                lambda run: get_workflow(run.workflow),
                id,
                event,
                None,
                step=None,
                workflow=None,
                dedup_key=None,
                now=datetime.now(UTC),
                max_pending=None,
            )
            assert added is not None, id
            accepted[id] = time.time()
    return accepted


async def started(engines: Engines, role: str, runs: list[list[Any]]) -> dict[str, str]:
    return await engines.result(role, engines.send(role, {"op": "start", "runs": runs}))


def executions_by(engines: Engines) -> dict[tuple[str, str], list[int]]:
    by: dict[tuple[str, str], list[int]] = {}
    for line in engines.lines():
        by.setdefault((line.instance, line.step), []).append(line.pid)
    return by


async def test_sigkill_mid_step_three_engines_take_over_after_lease_expiry(
    engines: Engines,
) -> None:
    """Three engines; SIGKILL one mid-step. Its run is taken over once its lease expires
    (not before), the interrupted step runs once more, completed steps never again, and
    every resume accepted (before and after the kill, from inside and outside the
    engines) is applied exactly once."""
    pids = {role: engines.start(role) for role in "abc"}
    await engines.ready("a", "b", "c")
    runs = {
        "a": [
            ["Gated", "gated::a", _initial(1, block_in="a")],
            ["Approve", "approve::a1", _initial(2)],
            ["Approve", "approve::a2", _initial(3)],
        ],
        "b": [["Approve", "approve::b1", _initial(4)], ["Approve", "approve::b2", _initial(5)]],
        "c": [["Approve", "approve::c1", _initial(6)], ["Gated", "gated::c", _initial(7)]],
    }
    initial = {id: init for role in runs for _, id, init in runs[role]}
    for role in runs:
        assert set((await started(engines, role, runs[role])).values()) == {"started"}
    await engines.wait_for([app.marker_name("gated::a", "hold")])
    parked = [id for id in initial if id != "gated::a"]
    await engines.until(dict.fromkeys(parked, Status.WAITING))

    # A resume for the step after the one engine a is running: kept until it parks.
    await resume_from_outside(engines.dsn, ["gated::a"])
    killed_at = engines.kill("a")

    # Resumes from outside and from the surviving engines, while a's lease runs out.
    await resume_from_outside(engines.dsn, ["approve::a1", "approve::b1"])
    for role, ids in (("b", ["approve::a2", "approve::c1"]), ("c", ["approve::b2", "gated::c"])):
        done = await engines.result(
            role, engines.send(role, {"op": "resume", "ids": ids, "event": "go"})
        )
        assert set(done.values()) == {"accepted"}
    final = await engines.until(dict.fromkeys(initial, Status.COMPLETED))

    by = executions_by(engines)
    [first, rerun] = engines.executions("gated::a", "hold")
    assert first.pid == pids["a"]
    assert rerun.pid in (pids["b"], pids["c"])
    # Taken over once the lease lapsed (a TTL after a's last renewal), not before.
    last_renewal = await _last_heartbeat(engines.dsn, engines.engine_id("a"))
    assert rerun.at >= last_renewal + TTL - 0.05
    assert rerun.at - killed_at < 10 * TTL, f"taken over {rerun.at - killed_at:.2f}s after"
    for key, pids_ in by.items():
        if key != ("gated::a", "hold"):
            assert len(pids_) == 1, f"{key} ran {len(pids_)} times: {pids_}"
    for id, inst in final.items():
        assert_ended_as_uncrashed(inst, initial[id])
        assert history(inst).count(("wait_for_event", "received")) == 1, id
        assert {"prepare", "finish"} <= inst.completed_steps
        for step in inst.completed_steps & set(app.FACTORS):
            assert (id, step) in by, f"{id}: {step} never ran"
    async with PostgresStorage(engines.dsn) as storage:
        for inst in final.values():
            assert await storage.wakeups(inst.run_id) == []


async def test_a_step_ten_ttls_long_is_never_taken_over_while_renewed(engines: Engines) -> None:
    """An engine running one step for ten lease TTLs keeps renewing; its idle peer,
    polling for claimable runs all along, never takes the run."""
    settings = app.EngineSettings(ttl=0.5, renewal=0.1, poll=0.1)
    pids = {role: engines.start(role, settings) for role in "ab"}
    await engines.ready("a", "b")
    steps = 10 * settings.ttl
    init = _initial(1, block_in="a", block_s=steps)
    assert (await started(engines, "a", [["Held", "held::long", init]])) == {"0": "started"}
    final = await engines.until({"held::long": Status.COMPLETED}, timeout=steps + 20)
    by = executions_by(engines)
    assert by == {
        ("held::long", "prepare"): [pids["a"]],
        ("held::long", "hold"): [pids["a"]],
        ("held::long", "finish"): [pids["a"]],
    }
    [hold] = engines.executions("held::long", "hold")
    assert_ended_as_uncrashed(final["held::long"], init)
    entry = next(e for e in final["held::long"].execution_history if e.step == "hold")
    assert entry.timestamp.timestamp() - hold.at >= steps - 0.05
    assert "lease lost" not in engines.output("a")


async def test_a_paused_engine_is_taken_over_and_its_late_write_is_refused(
    engines: Engines,
) -> None:
    """SIGSTOP freezes an engine mid-step (renewals too): a peer takes the run over
    after the lease expires and finishes it. A write under the paused engine's lease is
    refused (its epoch is stale). After SIGCONT the paused engine stops the run locally
    (its overdue renewal, or its refused write, tells it): the history shows each step
    once, and nothing the paused engine did after the takeover reaches the database."""
    pids = {role: engines.start(role) for role in "ab"}
    await engines.ready("a", "b")
    init = _initial(1, block_in="a", block_s=1.5)
    await started(engines, "a", [["Held", "held::paused", init]])
    await engines.wait_for([app.marker_name("held::paused", "hold")])
    paused_at = engines.pause("a")
    stale = await _lease_of(engines.dsn, "held::paused")
    assert stale.owner == engines.engine_id("a")
    final = await engines.until({"held::paused": Status.COMPLETED})
    [_, rerun] = engines.executions("held::paused", "hold")
    assert rerun.pid == pids["b"]
    assert rerun.at >= await _last_heartbeat(engines.dsn, engines.engine_id("a")) + TTL - 0.05
    assert rerun.at > paused_at
    before_wake = final["held::paused"]
    async with PostgresStorage(engines.dsn) as storage:
        with pytest.raises(LeaseLost):
            await storage.write(stale, before_wake, now=datetime.now(UTC))

    engines.wake("a")
    stopped = ("lease lost", "past the trust window")
    await engines.until_true(
        lambda: any(text in engines.output("a") for text in stopped),
        "the paused engine stopping the run",
        15.0,
    )
    engines.check_alive()
    after = (await engines.runs())["held::paused"]
    assert after == before_wake  # nothing the paused engine did reached the database
    assert_ended_as_uncrashed(after, init)
    by = executions_by(engines)
    assert by[("held::paused", "hold")] == [pids["a"], pids["b"]]
    assert by[("held::paused", "finish")] == [pids["b"]]
    assert history(after) == [("prepare", "ok"), ("hold", "ok"), ("finish", "ok"), ("done", "done")]


async def _last_heartbeat(dsn: str, engine_id: str) -> float:
    """When an engine last renewed its leases (unix time, the database's clock)."""
    async with PostgresStorage(dsn) as storage:
        [record] = [
            e for e in await storage.engines(now=datetime.now(UTC)) if e.engine_id == engine_id
        ]
    assert record.last_heartbeat is not None
    return record.last_heartbeat.timestamp()


async def _lease_of(dsn: str, id: str) -> Lease:
    """The lease a run is held under now, read straight from the table."""

    def read() -> Lease:
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT run_id, owner, lease_epoch, lease_expires_at FROM hephaestus_runs "
                "WHERE id = %s",
                [id],
            ).fetchone()
        assert row is not None
        run_id, owner, epoch, expires_at = row
        return Lease(run_id=run_id, owner=owner, epoch=epoch, expires_at=expires_at)

    return await trio.to_thread.run_sync(read)


class SameProcessInfo(PostgresStorage):
    """A storage whose engine registers with another process's host and pid: what a
    restarted engine looks like when its pid was reused by the new process."""

    def __init__(self, dsn: str, *, pid: int, **options: Any) -> None:
        super().__init__(dsn, **options)
        self._pid = pid

    async def register_engine(
        self, engine_id: str, *, now: datetime, info: Mapping[str, Any]
    ) -> None:
        await super().register_engine(
            engine_id, now=now, info={**info, "host": socket.gethostname(), "pid": self._pid}
        )


async def test_an_engine_restarted_with_the_same_host_and_pid_reclaims_its_runs(
    engines: Engines,
) -> None:
    """Engine a (30 s leases) dies mid-step. A new engine registering with a's host and
    pid proves a dead: a's leases expire at once and the new engine reclaims its run,
    long before the 30 s TTL."""
    settings = app.EngineSettings(ttl=30.0, renewal=0.2)
    pid = engines.start("a", settings)
    await engines.ready("a")
    init = _initial(1, block_in="a")
    await started(engines, "a", [["Held", "held::reused", init]])
    await engines.wait_for([app.marker_name("held::reused", "hold")])
    killed_at = engines.kill("a")

    app.configure(engines.workdir, role="restarted")
    storage = SameProcessInfo(engines.dsn, pid=pid, poll_interval=0.2)
    async with open_engine(
        storage, workflows=app.WORKFLOWS, lease_ttl=settings.ttl, lease_renewal=settings.renewal
    ) as engine:
        with trio.fail_after(10):
            final = await engine.wait("held::reused")
    [_, rerun] = engines.executions("held::reused", "hold")
    assert rerun.pid == os.getpid()
    assert rerun.at - killed_at < 10 < settings.ttl
    assert_ended_as_uncrashed(final, init)


async def test_a_run_started_while_claim_passes_run_in_the_same_engine_runs_once(
    postgres_dsn: str, tmp_path: Any
) -> None:
    """Runs started while the same engine's claim pass runs again and again (and a second
    engine's too) are driven by the engine that started them, each step once."""
    app.configure(tmp_path, role="here")
    storage = PostgresStorage(postgres_dsn, poll_interval=0.1)
    other_storage = PostgresStorage(postgres_dsn, poll_interval=0.1)
    ids = [f"order::{i}" for i in range(30)]
    async with (
        open_engine(
            storage, workflows=app.WORKFLOWS, lease_ttl=TTL, lease_renewal=RENEWAL
        ) as engine,
        open_engine(
            other_storage, workflows=app.WORKFLOWS, lease_ttl=TTL, lease_renewal=RENEWAL
        ) as other,
    ):
        claimed = Counter[str]()
        stop = trio.Event()

        async def claims(which: Any) -> None:
            while not stop.is_set():
                claimed[which.engine_id] += await claim_now(which)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(claims, engine)
            nursery.start_soon(claims, other)
            async with trio.open_nursery() as starts:
                for n, id in enumerate(ids):
                    start = functools.partial(engine.start_instance, id=id)
                    starts.start_soon(start, app.Order, _initial(n))
            with trio.fail_after(20):
                finals = [await engine.wait(id) for id in ids]
            stop.set()
    assert claimed == Counter()  # nothing was ever claimable: each run had its starter
    side = (tmp_path / "side.log").read_text().splitlines()
    count = Counter(tuple(line.split()[:2]) for line in side)
    assert count == Counter({(id, step): 1 for id in ids for step in ("prepare", "finish")})
    for n, final in enumerate(finals):
        assert_ended_as_uncrashed(final, _initial(n))


def _listening_backends(cluster: PostgresCluster, database: str) -> list[int]:
    rows = cluster.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'listen%%'",
        [database],
    )
    return [int(pid) for (pid,) in rows]


async def test_listen_connections_killed_while_resumes_are_sent(
    engines: Engines, postgres_cluster: PostgresCluster, postgres_database: str
) -> None:
    """The engines' LISTEN connections are terminated over and over while resumes arrive
    from another process: every resume is still applied, each within one poll interval
    (plus the time to run the two steps that follow it), because polling never stops."""
    poll = 1.0
    settings = app.EngineSettings(poll=poll)
    for role in "ab":
        engines.start(role, settings)
    await engines.ready("a", "b")
    ids = [f"approve::l{i}" for i in range(8)]
    await started(engines, "a", [["Approve", id, _initial(i)] for i, id in enumerate(ids)])
    await engines.until(dict.fromkeys(ids, Status.WAITING))
    await engines.until_true(
        lambda: len(_listening_backends(postgres_cluster, postgres_database)) >= 2,
        "both engines listening",
        10.0,
    )
    killed = 0
    accepted: dict[str, float] = {}

    async def killer() -> None:
        nonlocal killed
        while True:
            for pid in _listening_backends(postgres_cluster, postgres_database):
                postgres_cluster.execute("SELECT pg_terminate_backend(%s)", [pid])
                killed += 1
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(killer)
        for id in ids:
            accepted.update(await resume_from_outside(engines.dsn, [id]))
            await trio.sleep(0.15)
        final = await engines.until(dict.fromkeys(ids, Status.COMPLETED), timeout=poll * 10)
        nursery.cancel_scope.cancel()
    assert killed >= 2
    grace = 2.0  # claim, the resumed step, finish and done on a shared 2-core machine
    for id in ids:
        applied = final[id].updated_at.timestamp() - accepted[id]
        assert applied < poll + grace, f"{id} applied {applied:.2f}s after its resume"
        assert history(final[id]).count(("wait_for_event", "received")) == 1


async def test_the_server_restarts_while_engines_run(
    engines: Engines, postgres_cluster: PostgresCluster
) -> None:
    """PostgreSQL is restarted while three engines run steps and hold parked runs: they
    reconnect and every run finishes, none failed. The outage outlasts the lease trust
    window, so the engines stop their runs locally and claim them again: a step that was
    running may run again (at least once), a completed step never does."""
    for role in "abc":
        engines.start(role)
    await engines.ready("a", "b", "c")
    held = {f"held::r{r}": _initial(i, hold_s=1.0) for i, r in enumerate("abc")}
    approve = {f"approve::r{r}": _initial(10 + i) for i, r in enumerate("abc")}
    for role in "abc":
        runs = [["Held", f"held::r{role}", held[f"held::r{role}"]]]
        runs.append(["Approve", f"approve::r{role}", approve[f"approve::r{role}"]])
        await started(engines, role, runs)
    await engines.until(dict.fromkeys(approve, Status.WAITING))
    await engines.until_true(
        lambda: all(engines.executions(id, "hold") for id in held), "holds running", 10.0
    )
    await trio.to_thread.run_sync(postgres_cluster.restart)
    await resume_from_outside(engines.dsn, list(approve))
    final = await engines.until(dict.fromkeys([*held, *approve], Status.COMPLETED), timeout=60)
    for id, inst in final.items():
        assert_ended_as_uncrashed(inst, {**held, **approve}[id])
    count = Counter((x.instance, x.step) for x in engines.lines())
    for id in approve:
        assert count[(id, "prepare")] == 1
        assert count[(id, "finish")] == 1
    for id in held:
        assert count[(id, "prepare")] == 1
        assert 1 <= count[(id, "hold")] <= 2


async def test_a_short_outage_inside_the_trust_window_interrupts_no_step(
    engines: Engines, postgres_cluster: PostgresCluster
) -> None:
    """With 20 s leases a server restart is shorter than the trust window: the failed
    renewals are retried, the engine keeps its run, the running step is never stopped
    or repeated, and its completion is written once the server is back."""
    settings = app.EngineSettings(ttl=20.0, renewal=0.2)
    pid = engines.start("a", settings)
    await engines.ready("a")
    init = _initial(1, block_in="a", block_s=4.0)
    await started(engines, "a", [["Held", "held::outage", init]])
    await engines.wait_for([app.marker_name("held::outage", "hold")])
    await trio.to_thread.run_sync(postgres_cluster.restart)
    final = await engines.until({"held::outage": Status.COMPLETED}, timeout=30)
    assert_ended_as_uncrashed(final["held::outage"], init)
    assert executions_by(engines)[("held::outage", "hold")] == [pid]
    said = engines.output("a")
    # The engine lost its connections (which call noticed first depends on timing)...
    assert any(text in said for text in ("broken connection", "closed connection", "failed"))
    # ...and never gave its run up.
    assert "past the trust window" not in said
    assert "lease lost" not in said


async def test_a_thousand_resumes_from_three_engines_with_few_notifies(
    engines: Engines, postgres_dsn: str
) -> None:
    """1,000 parked runs, resumed by three engines (each resumes runs the others
    started): every resume is applied once, and a listener sees far fewer NOTIFYs
    than resumes (they are coalesced hints)."""
    total = 999
    # Leases long enough for the burst: 333 concurrent starts per engine queue every
    # renewal behind them for the pool's connections (see docs/scale-out.md).
    settings = app.EngineSettings(ttl=10.0, renewal=1.0)
    for role in "abc":
        engines.start(role, settings)
    await engines.ready("a", "b", "c")
    ids = {role: [f"approve::{role}{i}" for i in range(total // 3)] for role in "abc"}
    names = {
        role: engines.send(
            role,
            {
                "op": "start",
                "runs": [["Approve", id, _initial(i)] for i, id in enumerate(ids[role])],
            },
        )
        for role in "abc"
    }
    for role, name in names.items():
        assert set((await engines.result(role, name, timeout=120)).values()) == {"started"}
    every = [id for role in "abc" for id in ids[role]]
    await engines.until(dict.fromkeys(every, Status.WAITING), timeout=120)

    notifies = 0
    listener = await trio.to_thread.run_sync(lambda: psycopg.connect(postgres_dsn, autocommit=True))
    try:
        # The engines' channels (whatever the backend names them), read off their sessions.
        rows = listener.execute(
            "SELECT DISTINCT query FROM pg_stat_activity "
            "WHERE datname = current_database() AND query ILIKE 'listen%'"
        ).fetchall()
        channels = sorted({q.split(None, 1)[1].strip().rstrip(";") for (q,) in rows})
        assert channels, "no engine is listening"
        for channel in channels:
            listener.execute(f"LISTEN {channel}")

        async def count_notifies() -> None:
            nonlocal notifies
            while True:
                await trio.lowlevel.wait_readable(listener.fileno())
                listener.pgconn.consume_input()
                while listener.pgconn.notifies() is not None:
                    notifies += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(count_notifies)
            sent = {
                role: engines.send(
                    role,
                    {"op": "resume", "ids": ids["abc"[("abc".index(role) + 1) % 3]], "event": "go"},
                )
                for role in "abc"
            }
            for role, name in sent.items():
                assert set((await engines.result(role, name, timeout=120)).values()) == {"accepted"}
            final = await engines.until(dict.fromkeys(every, Status.COMPLETED), timeout=120)
            nursery.cancel_scope.cancel()
    finally:
        listener.close()
    for id, inst in final.items():
        assert history(inst).count(("wait_for_event", "received")) == 1, id
    count = Counter((x.instance, x.step) for x in engines.lines())
    assert all(count[(id, "finish")] == 1 for id in every)
    # Every NOTIFY while resumes were applied is counted, those of the runs' later
    # writes too; coalescing keeps them at a fraction of the resumes (measured: about
    # one for every four resumes on a loaded 2-core machine).
    assert 0 < notifies <= total / 2, f"{notifies} NOTIFYs for {total} resumes"


async def test_fifty_concurrent_starts_of_one_business_key_from_three_engines(
    engines: Engines,
) -> None:
    """50 starts of one id at once from three engines: exactly one run exists and exactly
    one start succeeded; the other 49 were told a live run holds the key."""
    for role in "abc":
        engines.start(role)
    await engines.ready("a", "b", "c")
    shares = {"a": 17, "b": 17, "c": 16}
    names = {
        role: engines.send(
            role,
            {
                "op": "start",
                "runs": [["Contested", "contested::same", _initial(k)] for k in range(n)],
            },
        )
        for role, n in shares.items()
    }
    outcomes = Counter[str]()
    for role, name in names.items():
        outcomes.update((await engines.result(role, name)).values())
    assert outcomes == Counter({"started": 1, "already_running": 49})
    await resume_from_outside(engines.dsn, ["contested::same"])
    final = await engines.until({"contested::same": Status.COMPLETED})
    async with PostgresStorage(engines.dsn) as storage:
        assert len(await storage.query(id="contested::same")) == 1
    count = Counter((x.instance, x.step) for x in engines.lines())
    assert count == Counter({("contested::same", "prepare"): 1, ("contested::same", "finish"): 1})
    assert final["contested::same"].status is Status.COMPLETED
