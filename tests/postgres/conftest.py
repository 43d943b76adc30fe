"""Fixtures of the multi-engine PostgreSQL tests: engine processes, always reaped."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import _pg_app as app
from ._harness import Engines


@pytest.fixture
def engines(postgres_dsn: str, tmp_path: Path) -> Iterator[Engines]:
    """Engine processes on a fresh database of their own (``engines.start(role)``).

    Whatever the test did, every process is continued (if paused), killed and
    reaped afterwards, and this process's app settings are reset.
    """
    found = Engines(postgres_dsn, tmp_path)
    try:
        yield found
    finally:
        found.stop_all()
        app.configure(None)
