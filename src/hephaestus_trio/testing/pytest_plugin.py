"""pytest fixtures for testing your own workflows.

Loaded by the ``pytest11`` entry point when hephaestus-trio is installed with
its ``test`` extra (``pip install "hephaestus-trio[test]"``: pytest,
pytest-trio and Hypothesis), or by naming it in a conftest::

    pytest_plugins = ["hephaestus_trio.testing.pytest_plugin"]

The fixtures are async (pytest-trio runs them in the test's own Trio run),
so they serve ``async def`` tests under ``trio_mode`` or
``@pytest.mark.trio``. Take pytest-trio's ``autojump_clock`` in the same test
for virtual time: the engines' wall time follows Trio's clock from
``EPOCH``, so timers, retries and timeouts cost no real time.

* ``hephaestus_engine``: an engine on a fresh ``MemoryStorage``;
* ``hephaestus_sqlite_engine``: an engine on SQLite in ``tmp_path`` (calls to
  the database hold the mock clock, so it never jumps while a write is on
  the disk);
* ``hephaestus_reopen``: ``await hephaestus_reopen(engine)`` closes that
  engine and returns a new one on the same storage (the same object for
  memory, a new ``SQLiteStorage`` on the same file for SQLite).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ..runtime._open_engine import Engine
from ..storage._sqlite import SQLiteStorage
from ._harness import open_harness, reopen

__all__ = ["hephaestus_engine", "hephaestus_reopen", "hephaestus_sqlite_engine"]


@pytest.fixture
async def hephaestus_engine() -> AsyncIterator[Engine]:
    """An open engine on a fresh ``MemoryStorage``; wall time follows Trio's clock."""
    async with open_harness() as harness:
        yield harness.engine


@pytest.fixture
async def hephaestus_sqlite_engine(tmp_path: Path) -> AsyncIterator[Engine]:
    """An open engine on ``SQLiteStorage(tmp_path / "hephaestus.db")``."""
    path = tmp_path / "hephaestus.db"
    async with open_harness(lambda: SQLiteStorage(path)) as harness:
        yield harness.engine


@pytest.fixture
def hephaestus_reopen() -> Callable[[Engine], Awaitable[Engine]]:
    """``await hephaestus_reopen(engine)``: close it, open a new engine on the same storage."""
    return reopen
