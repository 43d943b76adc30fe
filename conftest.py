"""Shared pytest configuration: Hypothesis profiles for every test folder.

``dev`` (default) is quick, ``ci`` is bounded and derandomized so CI is
reproducible, ``thorough`` runs long locally (``--hypothesis-profile=thorough``).
Also the PostgreSQL fixtures: ``postgres_cluster`` (one server per run, started
lazily), ``postgres_database`` and ``postgres_dsn`` (a fresh database per test).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from hephaestus_trio.testing import PostgresCluster

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


# -- PostgreSQL --------------------------------------------------------------
# One throwaway cluster for the whole run, started on first use only (a run
# that never asks for ``postgres_dsn`` starts no server). ``fsync`` is off:
# the cluster dies with the run, and the tests check behaviour, not the disk.
# Where PostgreSQL cannot start, the fixture raises (the test errors); it never
# skips, so a machine without PostgreSQL cannot pass the suite silently.

_database_names = itertools.count()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """The run's PostgreSQL server (loopback, free port, removed at the end)."""
    with PostgresCluster(fsync=False, settings={"max_connections": "400"}) as cluster:
        yield cluster


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> Iterator[str]:
    """The name of a fresh, empty database for one test (dropped afterwards)."""
    name = f"test_{os.getpid()}_{next(_database_names)}"
    postgres_cluster.create_database(name)
    yield name
    postgres_cluster.drop_database(name)


@pytest.fixture
def postgres_dsn(postgres_cluster: PostgresCluster, postgres_database: str) -> str:
    """The DSN of a fresh, empty database for one test."""
    return postgres_cluster.dsn_for(postgres_database)
