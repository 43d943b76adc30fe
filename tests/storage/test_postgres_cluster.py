"""``PostgresCluster``: a real throwaway server, removed afterwards; clear errors."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from hephaestus_trio import StorageError
from hephaestus_trio.testing import PostgresCluster, find_postgres_bindir

pytestmark = pytest.mark.slow


def test_a_cluster_listens_on_loopback_and_is_removed_afterwards() -> None:
    with PostgresCluster(fsync=False) as cluster:
        root = cluster.data_dir.parent
        assert cluster.dsn.startswith(f"postgresql://postgres@127.0.0.1:{cluster.port}/")
        dsn = cluster.create_database("orders")
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
            assert conn.execute("SELECT current_database()").fetchone() == ("orders",)
        assert root.exists()
    assert not root.exists()
    assert not cluster.running


def test_restart_keeps_the_port_and_the_data() -> None:
    with PostgresCluster(fsync=False) as cluster:
        dsn = cluster.create_database("kept")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE TABLE t (x int)")
            conn.execute("INSERT INTO t VALUES (7)")
        port = cluster.port
        cluster.restart()
        assert cluster.port == port
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(7,)]


def test_terminate_backends_kills_client_sessions(postgres_cluster: PostgresCluster) -> None:
    dsn = postgres_cluster.create_database("victims")
    try:
        conn = psycopg.connect(dsn, autocommit=True, application_name="victim")
        assert postgres_cluster.terminate_backends(application_name="victim") == 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        conn.close()
    finally:
        postgres_cluster.drop_database("victims")


def test_fsync_is_on_by_default() -> None:
    with PostgresCluster() as cluster, psycopg.connect(cluster.dsn) as conn:
        assert conn.execute("SHOW fsync").fetchone() == ("on",)


def test_a_bad_database_name_is_refused(postgres_cluster: PostgresCluster) -> None:
    with pytest.raises(StorageError, match="'Bad-Name' is not a plain identifier"):
        postgres_cluster.create_database("Bad-Name")


def test_missing_binaries_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match=r"initdb, pg_ctl\) not found.*apt-get install"):
        PostgresCluster(bindir=tmp_path).__enter__()


def test_a_server_that_cannot_start_shows_the_log() -> None:
    with (
        pytest.raises(StorageError, match=r"(?s)did not start.*log tail.*invalid value"),
        PostgresCluster(fsync=False, settings={"shared_buffers": "'nonsense'"}),
    ):
        pass


def test_the_binaries_are_found_here() -> None:
    bindir = find_postgres_bindir()
    assert bindir is not None
    assert (bindir / "pg_ctl").exists()
