"""One running engine per SQLite file: a second one is refused with a clear error."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from hephaestus_trio import SQLiteStorage, StorageError, open_engine


async def test_a_second_engine_on_the_same_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    async with open_engine(SQLiteStorage(db)):
        with pytest.raises(StorageError, match=r"app\.db is in use by another running engine"):
            async with open_engine(SQLiteStorage(db)):
                pass  # pragma: no cover - never entered
        # Inspecting the file without an engine stays possible.
        async with SQLiteStorage(db) as storage:
            assert await storage.query() == []
    # Once the first engine is gone the file is free again.
    async with open_engine(SQLiteStorage(db)):
        pass


async def test_engines_on_different_files_do_not_interfere(tmp_path: Path) -> None:
    async with open_engine(SQLiteStorage(tmp_path / "a.db")):
        async with open_engine(SQLiteStorage(tmp_path / "b.db")):
            pass


@pytest.mark.slow
async def test_a_killed_engine_does_not_block_its_successor(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    ready = tmp_path / "ready"
    child = textwrap.dedent(
        f"""
        import pathlib, trio
        from hephaestus_trio import SQLiteStorage, open_engine

        async def main():
            async with open_engine(SQLiteStorage({str(db)!r})):
                pathlib.Path({str(ready)!r}).write_text("up")
                await trio.sleep_forever()

        trio.run(main)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", child])
    try:
        with trio.fail_after(30):
            while not ready.exists():
                assert process.poll() is None, "the child engine died before it was up"
                await trio.sleep(0.01)
        with pytest.raises(StorageError, match=f"pid {process.pid}"):
            async with open_engine(SQLiteStorage(db)):
                pass  # pragma: no cover - never entered
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    async with open_engine(SQLiteStorage(db)):
        pass
