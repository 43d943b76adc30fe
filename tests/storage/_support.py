"""Shared pieces of the storage tests: the backends and a run builder.

Adding a backend to the conformance suite is one entry in ``BACKENDS``: a
function from pytest's ``tmp_path`` and the test's ``request`` to a
``Backend``. The folder (for PostgreSQL: a new database on the run's cluster)
is a fresh location, so ``Backend.new_storage`` is exactly the
``hephaestus_trio.testing.StorageFactory`` the conformance checks take. A
backend never skips: PostgreSQL that cannot start fails the tests.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from hephaestus_trio import (
    Instance,
    MemoryStorage,
    PostgresStorage,
    SQLiteStorage,
    Status,
    Storage,
)
from hephaestus_trio.testing import PostgresCluster

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@attrs.frozen
class Backend:
    """How to reach one backend's data from a test."""

    name: str
    durable: bool
    """Whether a new storage object on the same location sees earlier writes."""
    new_storage: Callable[[], Storage]
    """A new, unopened storage object on the same data (called again to "reopen").

    A non-durable backend shares nothing between objects; the checks call its
    factory once (``MemoryStorage`` itself is such a factory)."""


def _memory(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    return Backend(name="memory", durable=False, new_storage=MemoryStorage)


def _sqlite(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    path = tmp_path / "conformance.db"
    return Backend(name="sqlite", durable=True, new_storage=lambda: SQLiteStorage(path))


_databases = itertools.count()


def _postgres(tmp_path: Path, request: pytest.FixtureRequest) -> Backend:
    """A fresh database on the run's cluster, dropped after the test; the caller's clock.

    The checks drive time through ``now``, so the storage uses it (``clock="caller"``);
    the database clock is tested in ``test_postgres.py``.
    """
    cluster: PostgresCluster = request.getfixturevalue("postgres_cluster")
    name = f"conformance_{os.getpid()}_{next(_databases)}"
    dsn = cluster.create_database(name)
    request.addfinalizer(lambda: cluster.drop_database(name))
    return Backend(
        name="postgres",
        durable=True,
        new_storage=lambda: PostgresStorage(dsn, clock="caller", poll_interval=0.5),
    )


BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "postgres": _postgres,
}

DURABLE_BACKENDS: frozenset[str] = frozenset({"sqlite", "postgres"})
"""Backends whose data outlives the storage object (the reopen tests run on these)."""


def make_instance(
    id: str = "orderid::a1",
    *,
    workflow: str = "tests.Order",
    version: int = 1,
    status: Status = Status.PENDING,
    unique_key: str | None = None,
    run_id: str | None = None,
    created_at: datetime = T0,
    updated_at: datetime | None = None,
    **changes: Any,
) -> Instance:
    """A run built the way the engine builds one: ``Instance.new`` then ``attrs.evolve``."""
    instance = Instance.new(
        workflow,
        {"items": 3, "note": "é"},
        id=id,
        version=version,
        run_id=run_id,
        now=created_at,
        unique_key=unique_key,
    )
    return attrs.evolve(instance, status=status, updated_at=updated_at or created_at, **changes)
