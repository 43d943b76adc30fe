"""The ``crash`` fixture: a scenario's child process plus its files, always reaped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import _crash_app as app
from ._harness import Child


@pytest.fixture
def crash(tmp_path: Path) -> Iterator[Callable[[str], Child]]:
    """``crash(scenario)`` starts a child engine on a fresh SQLite file in ``tmp_path``.

    The restarted engine runs in this process and records to the same side
    file; the fixture kills any child still alive and resets the app's settings.
    """
    children: list[Child] = []

    def start(scenario: str) -> Child:
        markers = tmp_path / f"markers-{len(children)}"
        markers.mkdir()
        child = Child(
            scenario=scenario,
            db=tmp_path / "crash.db",
            side=tmp_path / "side.log",
            markers=markers,
            log=tmp_path / f"child-{len(children)}.log",
        )
        children.append(child)
        child.start()
        return child

    try:
        yield start
    finally:
        for child in children:
            child.ensure_dead()
        app.configure(None)
