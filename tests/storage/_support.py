"""Shared pieces of the storage tests: the backends and a run builder.

Adding a backend to the conformance suite is one entry in ``BACKENDS``: a
function from pytest's ``tmp_path`` to a ``Backend`` (call ``pytest.skip``
inside it when the backend cannot run here, e.g. no PostgreSQL server). The
folder is a fresh location, so ``Backend.new_storage`` is exactly the
``hephaestus_trio.testing.StorageFactory`` the conformance checks take.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from hephaestus_trio import Instance, MemoryStorage, SQLiteStorage, Status, Storage

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


def _memory(tmp_path: Path) -> Backend:
    return Backend(name="memory", durable=False, new_storage=MemoryStorage)


def _sqlite(tmp_path: Path) -> Backend:
    path = tmp_path / "conformance.db"
    return Backend(name="sqlite", durable=True, new_storage=lambda: SQLiteStorage(path))


BACKENDS: dict[str, Callable[[Path], Backend]] = {
    "memory": _memory,
    "sqlite": _sqlite,
    # "postgres": _postgres,  # scale-out backend: start or find a server, else pytest.skip
}

DURABLE_BACKENDS: frozenset[str] = frozenset({"sqlite"})
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
