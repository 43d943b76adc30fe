"""One running engine per database file, enforced with an advisory file lock.

SQLite has no ownership leases: two engines on one file would both recover
and run the same live runs, executing steps twice and overwriting each
other's transitions. ``open_engine`` therefore holds an exclusive ``flock``
on ``<database>.engine-lock`` for its whole life. The kernel releases the
lock when the process dies, so a SIGKILLed engine never blocks its successor.
Inspecting the file (``SQLiteStorage`` without an engine, the CLI's ``list``
and ``show``) takes no lock.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from .._errors import StorageError

__all__ = ["engine_lock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks to take
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def engine_lock(database: str) -> Iterator[None]:
    """Hold the engine lock of ``database`` for the ``with`` block.

    Raises:
        StorageError: another engine (in this or another process) holds it.
    """
    if fcntl is None:
        yield
        return
    path = f"{database}.engine-lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise StorageError(
                f"{database} is in use by another running engine (pid {holder}); "
                "open one engine per SQLite database"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
