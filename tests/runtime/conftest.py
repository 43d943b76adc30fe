"""Fixtures of the runtime tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hephaestus_trio import MemoryStorage, SQLiteStorage, Storage


@pytest.fixture(params=["memory", "sqlite"])
def storage(request: pytest.FixtureRequest, tmp_path: Path, mock_clock: Any) -> Storage:
    """Each backend, with virtual time. A test using it also takes ``mock_clock``
    (pytest-trio runs a test on the clock among its own arguments).

    SQLite does real I/O in worker threads, so its clock jumps only after 50 ms
    of real idleness (never while a write runs); memory's jumps at once.
    """
    if request.param == "memory":
        mock_clock.autojump_threshold = 0
        return MemoryStorage()
    mock_clock.autojump_threshold = 0.05
    return SQLiteStorage(tmp_path / "runtime.db")
