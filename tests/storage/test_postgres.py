"""What ``PostgresStorage`` promises beyond the conformance suite, against a real server.

Migrations, cancellation that really stops a query, NOTIFY as a coalesced
hint with polling behind it, a LISTEN connection that survives being killed,
races between several storage objects (as between engines on several
machines), the database clock, proof of death by a reused host and pid, and
the purge lock. Waits for the server are real (a thread, a socket): each is
bounded by a deadline, never a fixed sleep.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import psycopg
import pytest
import trio

from hephaestus_trio import PostgresStorage, Status, StorageError
from hephaestus_trio.storage import Lease, NewWakeup, UniqueViolation, WakeupKind
from hephaestus_trio.storage._postgres_ops import PURGE_LOCK
from hephaestus_trio.storage._postgres_schema import SCHEMA_VERSION
from hephaestus_trio.testing import PostgresCluster

from ._support import T0, make_instance

pytestmark = pytest.mark.slow

DEADLINE = 20.0
"""Real seconds any wait for the server may take before the test fails."""

_names = itertools.count()


def app_name() -> str:
    """A unique application_name, so a test kills exactly its own sessions."""
    return f"heph-test-{next(_names)}"


@asynccontextmanager
async def opened(dsn: str, **options: Any) -> AsyncIterator[PostgresStorage]:
    async with PostgresStorage(dsn, **options) as storage:
        yield storage


def resume(run_id: str, step: str = "wait", *, dedup_key: str | None = None) -> NewWakeup:
    return NewWakeup(
        run_id=run_id,
        kind=WakeupKind.RESUME,
        step=step,
        event="go",
        dedup_key=dedup_key,
        due_at=datetime.now(UTC),
    )


def parked(run_id: str, *steps: str, **changes: Any) -> Any:
    run = make_instance(f"orderid::{run_id}", run_id=run_id, **changes)
    return attrs.evolve(
        run,
        status=Status.WAITING,
        active_steps=frozenset(steps),
        waiting_steps=frozenset(steps),
    )


def db_now(dsn: str) -> datetime:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT now()").fetchone()
        assert row is not None
        return row[0].astimezone(UTC)


async def until(what: str, check: Callable[[], Any], *, deadline: float = DEADLINE) -> Any:
    """Poll ``check`` (sync or async) until truthy; fail after ``deadline`` real seconds."""
    give_up = time.monotonic() + deadline
    while True:
        value = check()
        if hasattr(value, "__await__"):
            value = await value
        if value:
            return value
        if time.monotonic() > give_up:
            raise AssertionError(f"{what}: not within {deadline}s")
        await trio.sleep(0.02)


# -- migrations ----------------------------------------------------------------------


def schema_version(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT version FROM hephaestus_schema_version").fetchone()
        assert row is not None
        return int(row[0])


async def test_open_migrates_once_and_records_the_version(postgres_dsn: str) -> None:
    async with opened(postgres_dsn) as first:
        await first.create(make_instance(run_id="r1"), now=T0)
    assert schema_version(postgres_dsn) == SCHEMA_VERSION
    async with opened(postgres_dsn) as again:  # idempotent: nothing re-created, data kept
        assert [run.run_id for run in await again.query()] == ["r1"]
    assert schema_version(postgres_dsn) == SCHEMA_VERSION


async def test_concurrent_opens_of_a_fresh_database_migrate_it_once(postgres_dsn: str) -> None:
    async with AsyncExitStack() as stack:
        storages = [PostgresStorage(postgres_dsn) for _ in range(4)]
        async with trio.open_nursery() as nursery:
            for storage in storages:
                nursery.start_soon(stack.enter_async_context, storage)
        await storages[0].create(make_instance(run_id="r1"), now=T0)
        assert await storages[3].get("r1") is not None
    assert schema_version(postgres_dsn) == SCHEMA_VERSION


async def test_a_newer_schema_is_refused_and_left_alone(postgres_dsn: str) -> None:
    async with opened(postgres_dsn):
        pass
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("UPDATE hephaestus_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await PostgresStorage(postgres_dsn).open()
    assert schema_version(postgres_dsn) == SCHEMA_VERSION + 1


async def test_foreign_tables_are_refused(postgres_dsn: str) -> None:
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE hephaestus_runs (x int)")
    with pytest.raises(StorageError, match="was not made by hephaestus-trio"):
        await PostgresStorage(postgres_dsn).open()


# -- connection trouble ------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_an_unreachable_server_is_a_storage_error() -> None:
    dsn = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    storage = PostgresStorage(dsn, connect_timeout=2)
    with pytest.raises(StorageError, match=r"is not available \(cannot connect\).*refused"):
        await storage.open()
    with pytest.raises(StorageError, match="not open"):
        await storage.get("r1")


def test_the_password_never_shows(postgres_dsn: str) -> None:
    storage = PostgresStorage("postgresql://app:s3cret@db.internal/orders")
    assert "s3cret" not in repr(storage)
    assert "s3cret" not in repr(PostgresStorage("host=db password=s3cret dbname=x"))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"pool_size": 0}, "pool_size must be a positive integer"),
        ({"poll_interval": 0}, "poll_interval must be a positive number"),
        ({"clock": "wall"}, "clock must be 'database' or 'caller'"),
        ({"connect_timeout": -1}, "connect_timeout must be a positive number"),
    ],
)
def test_bad_options_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageError, match=message):
        PostgresStorage("postgresql://db/app", **options)


def test_importable_and_clear_without_psycopg() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["psycopg"] = None
        sys.modules["psycopg_pool"] = None
        import trio
        import hephaestus_trio
        from hephaestus_trio import PostgresStorage, StorageError
        storage = PostgresStorage("postgresql://db/app")
        try:
            trio.run(storage.open)
        except StorageError as exc:
            assert "'postgres' extra" in str(exc), exc
        else:
            raise AssertionError("open without psycopg did not fail")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_a_server_restart_is_survived() -> None:
    with PostgresCluster(fsync=False) as cluster:
        dsn = cluster.create_database("restarted")
        async with opened(dsn, poll_interval=0.2) as storage, opened(dsn) as other:
            await storage.create(make_instance(run_id="r1"), now=T0)
            connects = storage.listener_connects
            await trio.to_thread.run_sync(cluster.restart)

            async def answers() -> bool:
                try:
                    return await storage.get("r1") is not None
                except StorageError:
                    return False  # a connection that died with the server, once

            await until("the pool reconnects after the restart", answers)
            seen = await storage.wait_for_change(-1)

            async def listening_again() -> bool:
                nonlocal seen
                with trio.move_on_after(0.5):
                    seen = await storage.wait_for_change(seen)
                return storage.listener_connects > connects

            await until("the LISTEN connection is re-established", listening_again)
            await until(
                "the other storage works again",
                lambda: _quietly(other.add_wakeup(resume("r1"), now=T0)),
            )
            assert len(await storage.wakeups("r1")) == 1


async def _quietly(call: Any) -> Any:
    try:
        return await call
    except StorageError:
        return None


async def test_a_transaction_left_idle_by_a_paused_process_is_ended(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, idle_in_transaction_timeout=0.3) as storage:
        setting = await storage._run(
            "show", lambda conn: conn.execute("SHOW idle_in_transaction_session_timeout").fetchone()
        )
        assert setting == ("300ms",)

        def stuck(conn: Any) -> Any:
            # What a process paused inside a transaction leaves behind.
            conn.execute("BEGIN")
            conn.execute("SELECT 1")
            time.sleep(1.0)
            return conn.execute("SELECT 1").fetchone()

        with pytest.raises(StorageError, match="idle-in-transaction timeout|terminat"):
            await storage._run("stuck", stuck)
        assert await storage.query() == []  # the pool replaced the connection


# -- cancellation --------------------------------------------------------------------


def active_queries(dsn: str, text: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(
            "SELECT pid, state FROM pg_stat_activity WHERE state = 'active' "
            "AND query LIKE %s AND pid <> pg_backend_pid()",
            (f"%{text}%",),
        ).fetchall()


async def test_cancelling_a_call_stops_its_query(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, pool_size=2) as storage:
        started = time.monotonic()
        with trio.move_on_after(0.5) as scope:
            await storage._run("sleep", lambda conn: conn.execute("SELECT pg_sleep(60)"))
        elapsed = time.monotonic() - started
        assert scope.cancelled_caught
        assert elapsed < 10, f"the cancelled call took {elapsed:.1f}s to return"
        # The call returned only once the query had stopped: nothing runs now.
        assert active_queries(postgres_dsn, "pg_sleep(60)") == []
        # And the storage is still fine: its connections are usable.
        for n in range(4):
            await storage.create(make_instance(run_id=f"r{n}"), now=T0)
        assert len(await storage.query()) == 4


async def test_cancelling_many_calls_leaves_nothing_running(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, pool_size=3) as storage:
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                for _ in range(8):  # more than the pool: some never get a connection
                    nursery.start_soon(
                        storage._run,
                        "sleep",
                        lambda conn: conn.execute("SELECT pg_sleep(60)"),
                    )
        assert active_queries(postgres_dsn, "pg_sleep(60)") == []
        assert await storage.query() == []


async def test_renewals_do_not_queue_behind_a_busy_pool(postgres_dsn: str) -> None:
    # Every pooled connection busy with a long transaction (a burst of
    # transitions, a slow disk): the heartbeat has a connection of its own, so
    # the engine's leases do not lapse while it is alive.
    async with opened(postgres_dsn, pool_size=2, clock="caller") as storage:
        lease = await storage.create(make_instance(run_id="r1"), now=T0, owner="e1", ttl=30)
        assert lease is not None
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(
                    storage._run, "sleep", lambda conn: conn.execute("SELECT pg_sleep(60)")
                )
            with trio.fail_after(DEADLINE):
                while len(active_queries(postgres_dsn, "pg_sleep(60)")) < 2:
                    await trio.sleep(0.05)
            started = time.monotonic()
            with trio.fail_after(DEADLINE):
                renewed = await storage.renew("e1", [lease], now=T0 + timedelta(seconds=10), ttl=30)
            took = time.monotonic() - started
            nursery.cancel_scope.cancel()
        assert [r.run_id for r in renewed] == ["r1"]
        assert renewed[0].expires_at == T0 + timedelta(seconds=40)
        assert took < 10, f"the renewal waited {took:.1f}s behind the busy pool"
        assert active_queries(postgres_dsn, "pg_sleep(60)") == []


# -- NOTIFY and LISTEN --------------------------------------------------------------


async def wait_changed(storage: PostgresStorage, seen: int, *, within: float) -> float:
    """Seconds until ``wait_for_change(seen)`` returned (fail after ``within``)."""
    started = time.monotonic()
    with trio.fail_after(within):
        await storage.wait_for_change(seen)
    return time.monotonic() - started


async def test_a_notify_wakes_another_storage_long_before_its_poll(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, poll_interval=60) as waiter, opened(postgres_dsn) as sender:
        await sender.create(parked("r1", "wait"), now=T0)
        seen = await waiter.wait_for_change(-1)
        async with trio.open_nursery() as nursery:
            took: list[float] = []

            async def wait() -> None:
                took.append(await wait_changed(waiter, seen, within=DEADLINE))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await sender.add_wakeup(resume("r1"), now=T0)
        assert took[0] < 30, took
        assert waiter.notifications_received >= 1
        assert sender.notifies_sent >= 1


async def test_a_storage_ignores_its_own_notify(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, poll_interval=60) as storage:
        await storage.create(parked("r1", "wait"), now=T0)
        seen = await storage.wait_for_change(-1)
        await storage.add_wakeup(resume("r1"), now=T0)
        seen = await storage.wait_for_change(seen)  # the local change, at once
        with trio.move_on_after(1.0) as scope:
            await storage.wait_for_change(seen)
        assert scope.cancelled_caught, "its own NOTIFY woke it a second time"
        assert storage.notifications_received == 0


async def test_a_killed_listen_connection_comes_back_and_misses_nothing(
    postgres_cluster: PostgresCluster, postgres_dsn: str
) -> None:
    name = app_name()
    async with (
        opened(postgres_dsn, poll_interval=60, application_name=name) as waiter,
        opened(postgres_dsn) as sender,
    ):
        await sender.create(parked("r1", "wait", "other"), now=T0)
        assert waiter.listener_connects == 1
        killed = postgres_cluster.terminate_backends(application_name=f"{name} listener")
        assert killed == 1
        seen = await waiter.wait_for_change(-1)
        # The loss is noticed (the socket turns readable), the connection comes
        # back, and the caller is told to re-check the database.
        await wait_changed(waiter, seen, within=DEADLINE)

        async def back() -> bool:
            nonlocal seen
            with trio.move_on_after(0.5):  # an engine keeps waiting for changes
                seen = await waiter.wait_for_change(seen)
            return waiter.listener_connects == 2

        await until("the LISTEN connection is back", back)
        assert waiter.listener_losses == 1
        seen = await waiter.wait_for_change(-1)
        async with trio.open_nursery() as nursery:
            took: list[float] = []

            async def wait() -> None:
                took.append(await wait_changed(waiter, seen, within=DEADLINE))

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            await sender.add_wakeup(resume("r1", "other"), now=T0)
        assert took[0] < 30, "the wakeup after the reconnect was noticed by NOTIFY"
        assert [w.step for w in await waiter.wakeups("r1")] == ["other"]


async def test_without_notify_polling_finds_the_change(
    postgres_cluster: PostgresCluster, postgres_dsn: str, postgres_database: str
) -> None:
    name = app_name()
    async with (
        opened(postgres_dsn, notify=False, poll_interval=0.3, application_name=name) as waiter,
        opened(postgres_dsn, notify=False) as sender,
    ):
        await sender.create(parked("r1", "wait"), now=T0)
        seen = await waiter.wait_for_change(-1)
        await sender.add_wakeup(resume("r1"), now=T0)
        took = await wait_changed(waiter, seen, within=DEADLINE)
        assert took < 5, took
        assert [w.step for w in await waiter.wakeups("r1")] == ["wait"]
        assert sender.notifies_sent == 0
        assert waiter.listener_connects == 0
        sessions = postgres_cluster.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            [f"{name} listener"],
        )
        assert sessions == [(0,)], "notify=False opens no LISTEN connection"


async def test_cancelled_waits_leave_no_doze_thread_behind(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, poll_interval=30) as storage:
        seen = await storage.wait_for_change(-1)
        for _ in range(40):  # as an engine's claim loop woken by its doorbell
            with trio.move_on_after(0.01):
                await storage.wait_for_change(seen)
        limiter = storage._doze_limiter
        await until("every doze thread ended", lambda: limiter.borrowed_tokens == 0)
        took = await wait_changed_after(storage, seen, lambda: storage.release_all("x", now=T0))
        assert took < 5


async def wait_changed_after(storage: PostgresStorage, seen: int, change: Any) -> float:
    async with trio.open_nursery() as nursery:
        took: list[float] = []

        async def wait() -> None:
            took.append(await wait_changed(storage, seen, within=DEADLINE))

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        await change()
    return took[0]


async def test_notifies_are_coalesced(postgres_dsn: str) -> None:
    async with opened(postgres_dsn) as setup:
        for n in range(100):
            await setup.create(parked(f"r{n:03d}", *[f"s{k}" for k in range(10)]), now=T0)
    listener = await trio.to_thread.run_sync(lambda: psycopg.connect(postgres_dsn, autocommit=True))
    try:
        listener.execute("LISTEN hephaestus_changes")
        async with opened(postgres_dsn, pool_size=10) as storage:

            async def resumes(batch: int) -> None:
                for n in range(batch * 10, batch * 10 + 10):
                    for step in range(10):
                        added = await storage.add_wakeup(resume(f"r{n:03d}", f"s{step}"), now=T0)
                        assert added is not None

            async with trio.open_nursery() as nursery:
                for batch in range(10):
                    nursery.start_soon(resumes, batch)
        sent = storage.notifies_sent  # closing sent the last hint first
        received = 0
        for _ in listener.notifies(timeout=2.0, stop_after=sent):
            received += 1
    finally:
        listener.close()
    assert received == sent, "every NOTIFY sent arrived"
    assert 1 <= sent <= 250, f"{sent} NOTIFYs for 1000 wakeups: not coalesced"


# -- races between storages (engines on several machines) --------------------------


async def test_fifty_concurrent_creates_of_one_key_from_three_storages(postgres_dsn: str) -> None:
    async with AsyncExitStack() as stack:
        storages = [await stack.enter_async_context(opened(postgres_dsn)) for _ in range(3)]
        won: list[str] = []
        lost: list[UniqueViolation] = []

        async def start(n: int) -> None:
            run = make_instance("orderid::same", run_id=f"r{n:02d}", unique_key="k")
            try:
                await storages[n % 3].create(run, now=T0)
            except UniqueViolation as exc:
                lost.append(exc)
            else:
                won.append(run.run_id)

        async with trio.open_nursery() as nursery:
            for n in range(50):
                nursery.start_soon(start, n)
        assert len(won) == 1
        assert len(lost) == 49
        assert {(e.existing_run_id, e.existing_id) for e in lost} == {(won[0], "orderid::same")}


async def test_concurrent_claims_from_three_storages_never_share_a_run(
    postgres_dsn: str,
) -> None:
    runs = [f"r{n:03d}" for n in range(150)]
    async with AsyncExitStack() as stack:
        storages = [await stack.enter_async_context(opened(postgres_dsn)) for _ in range(3)]
        for run_id in runs:
            await storages[0].create(make_instance(run_id=run_id), now=T0)
        got: dict[str, list[Lease]] = {}

        async def drain(n: int) -> None:
            owner = f"E{n}"
            got[owner] = []
            while leases := await storages[n % 3].claim(
                owner, now=T0, ttl=30, workflows=None, limit=7
            ):
                got[owner].extend(leases)

        async with trio.open_nursery() as nursery:
            for n in range(6):
                nursery.start_soon(drain, n)
        claimed = sorted(lease.run_id for leases in got.values() for lease in leases)
        assert claimed == runs, "every run claimed exactly once"
        assert all(lease.epoch == 1 for leases in got.values() for lease in leases)


# -- the database clock ----------------------------------------------------------------

FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)
FAR_PAST = datetime(1990, 1, 1, tzinfo=UTC)


async def test_a_lease_expires_by_the_database_clock(postgres_dsn: str) -> None:
    async with opened(postgres_dsn) as a, opened(postgres_dsn) as b:
        before = db_now(postgres_dsn)
        started = time.monotonic()
        lease = await a.create(make_instance(run_id="r1"), now=FAR_PAST, owner="A", ttl=0.2)
        assert lease is not None
        after = db_now(postgres_dsn)
        assert before + timedelta(seconds=0.2) <= lease.expires_at
        assert lease.expires_at <= after + timedelta(seconds=0.2)
        claims = await b.claim("B", now=FAR_FUTURE, ttl=30, workflows=None, limit=10)
        if time.monotonic() - started < 0.2:  # (a machine this slow proves nothing here)
            assert claims == [], "taken before the lease lapsed, by a far-future caller now"

        async def taken() -> list[Lease]:
            return await b.claim("B", now=FAR_PAST, ttl=30, workflows=None, limit=10)

        (claimed,) = await until("the lease lapses on the server's clock", taken)
        assert time.monotonic() - started >= 0.15
        assert (claimed.owner, claimed.epoch) == ("B", 2)
        assert claimed.expires_at - db_now(postgres_dsn) > timedelta(seconds=25)


async def test_a_bogus_caller_clock_changes_nothing(postgres_dsn: str) -> None:
    async with opened(postgres_dsn) as a, opened(postgres_dsn) as b:
        lease = await a.create(parked("r1", "wait"), now=T0, owner="A", ttl=300)
        assert lease is not None
        claims = await b.claim("B", now=FAR_FUTURE, ttl=30, workflows=None, limit=10)
        assert claims == [], "a far-future 'now' must not take a live lease"
        assert await b.next_wake("B", workflows=None) == lease.expires_at
        (renewed,) = await a.renew("A", [lease], now=FAR_PAST, ttl=60)
        assert renewed.expires_at - db_now(postgres_dsn) < timedelta(seconds=61)
        assert renewed.expires_at - db_now(postgres_dsn) > timedelta(seconds=50)
        # A resume is due by the server's clock too, whatever the caller says.
        await a.write(renewed, parked("r1", "wait"), now=T0)
        assert not await a.release(renewed, now=T0, wake_at=None, seen=0)
        wakeup = NewWakeup(
            run_id="r1", kind=WakeupKind.RESUME, step="wait", event="go", due_at=FAR_FUTURE
        )
        await b.add_wakeup(wakeup, now=FAR_FUTURE)
        (again,) = await b.claim("B", now=FAR_PAST, ttl=30, workflows=None, limit=10)
        assert again.run_id == "r1"


# -- engines ---------------------------------------------------------------------


def register_in_another_process(dsn: str, engine_id: str, info: dict[str, Any]) -> None:
    """An engine of an earlier process: it registers, takes a run, and its process ends."""
    code = textwrap.dedent(
        f"""
        import trio
        from datetime import UTC, datetime
        from hephaestus_trio import Instance, PostgresStorage

        async def main():
            async with PostgresStorage({dsn!r}) as storage:
                now = datetime.now(UTC)
                await storage.register_engine({engine_id!r}, now=now, info={info!r})
                run = Instance.new("tests.Order", {{}}, id="orderid::r1", run_id="r1", now=now)
                await storage.create(run, now=now, owner={engine_id!r}, ttl=300)

        trio.run(main)
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


async def test_a_new_engine_with_the_same_host_and_pid_reclaims_at_once(
    postgres_dsn: str,
) -> None:
    info = {"host": "box-1", "pid": 4242}
    await trio.to_thread.run_sync(register_in_another_process, postgres_dsn, "E-old", info)
    async with opened(postgres_dsn) as new:
        await new.register_engine("E-other", now=T0, info={"host": "box-2", "pid": 4242})
        await new.create(make_instance(run_id="r2"), now=T0, owner="E-other", ttl=300)
        assert await new.claim("E-new", now=T0, ttl=30, workflows=None, limit=10) == []
        seen = await new.wait_for_change(-1)
        await new.register_engine("E-new", now=T0, info=info)
        assert await new.wait_for_change(seen) != seen, "the reclaimable runs are a change"
        claimed = await new.claim("E-new", now=T0, ttl=30, workflows=None, limit=10)
        assert [lease.run_id for lease in claimed] == ["r1"], "only the dead engine's run"
        engines = await new.engines(now=T0)
        assert [(e.engine_id, e.runs_owned) for e in engines] == [
            ("E-new", 1),
            ("E-other", 1),
        ]
        for engine_id in ("E-new", "E-other"):
            await new.unregister_engine(engine_id)


async def test_engines_of_one_process_share_host_and_pid_and_stay_alive(
    postgres_dsn: str,
) -> None:
    async with opened(postgres_dsn) as first, opened(postgres_dsn) as second:
        info = {"host": "box-1", "pid": 4343}
        await first.register_engine("E-a", now=T0, info=info)
        await first.create(make_instance(run_id="r1"), now=T0, owner="E-a", ttl=300)
        await second.register_engine("E-b", now=T0, info=info)
        assert await second.claim("E-b", now=T0, ttl=30, workflows=None, limit=10) == []
        assert [e.engine_id for e in await second.engines(now=T0)] == ["E-a", "E-b"]
        await first.unregister_engine("E-a")
        await first.unregister_engine("E-b")


async def test_an_engine_whose_storage_closed_is_gone_for_its_successor(
    postgres_dsn: str,
) -> None:
    info = {"host": "box-3", "pid": 4444}
    async with opened(postgres_dsn) as crashed:  # closed without unregistering: gone
        await crashed.register_engine("E-crashed", now=T0, info=info)
        await crashed.create(make_instance(run_id="r1"), now=T0, owner="E-crashed", ttl=300)
    async with opened(postgres_dsn) as successor:
        await successor.register_engine("E-successor", now=T0, info=info)
        claimed = await successor.claim("E-successor", now=T0, ttl=30, workflows=None, limit=5)
        assert [lease.run_id for lease in claimed] == ["r1"]
        await successor.unregister_engine("E-successor")


async def test_the_heartbeat_is_the_database_clock(postgres_dsn: str) -> None:
    async with opened(postgres_dsn) as storage:
        await storage.register_engine("E1", now=FAR_PAST, info={"host": "h", "pid": 1})
        lease = await storage.create(make_instance(run_id="r1"), now=T0, owner="E1")
        assert lease is not None
        (record,) = await storage.engines(now=T0)
        assert record.started_at == FAR_PAST, "started_at is metadata from the engine"
        assert record.last_heartbeat is not None
        assert abs(record.last_heartbeat - db_now(postgres_dsn)) < timedelta(seconds=30)
        await storage.renew("E1", [lease], now=FAR_PAST, ttl=30)
        (record,) = await storage.engines(now=T0)
        assert record.runs_owned == 1


# -- purge ---------------------------------------------------------------------------


async def test_only_one_engine_purges_at_a_time(postgres_dsn: str) -> None:
    async with opened(postgres_dsn, clock="caller") as storage:
        lease = await storage.create(make_instance(run_id="r1"), now=T0, owner="A")
        assert lease is not None
        done = make_instance(run_id="r1", status=Status.COMPLETED, updated_at=T0)
        await storage.write(lease, done, now=T0)
        holder = await trio.to_thread.run_sync(lambda: psycopg.connect(postgres_dsn))
        try:
            holder.execute("SELECT pg_advisory_xact_lock(%s)", (PURGE_LOCK,))
            cutoff = T0 + timedelta(days=1)
            assert await storage.purge(cutoff) == 0, "another engine is purging"
            assert await storage.get("r1") is not None
            holder.rollback()
            assert await storage.purge(cutoff) == 1
        finally:
            holder.close()


# -- owned_wakeups across transactions ---------------------------------------------


async def test_owned_wakeups_reports_a_lower_seq_that_committed_later(
    postgres_dsn: str,
) -> None:
    async with opened(postgres_dsn, clock="caller") as storage:
        for run_id in ("r1", "r2"):
            await storage.create(parked(run_id, "wait"), now=T0, owner="A")
        await storage.owned_wakeups("A", after=0)
        slow = await trio.to_thread.run_sync(lambda: psycopg.connect(postgres_dsn))
        try:
            # A wakeup of r1 whose transaction is still open when r2's commits.
            row = slow.execute(
                "INSERT INTO hephaestus_wakeups (run_id, kind, step, event, due_at, created_at)"
                " VALUES ('r1', 'resume', 'wait', 'go', now(), now()) RETURNING seq"
            ).fetchone()
            assert row is not None
            low = int(row[0])
            high = await storage.add_wakeup(resume("r2"), now=T0)
            assert high is not None
            assert high.seq > low
            assert await storage.owned_wakeups("A", after=0) == [("r2", high.seq)]
            slow.commit()
        finally:
            slow.close()
        assert await storage.owned_wakeups("A", after=high.seq) == [("r1", low)]
        assert await storage.owned_wakeups("A", after=high.seq) == []
