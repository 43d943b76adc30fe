"""Proof of life for engines sharing a SQLite file: one ``flock``ed file per engine.

A running engine holds an exclusive ``flock`` on
``<database>.engines/<engine_id>.lock`` from before it registers its row until
it unregisters (or its process ends). The kernel releases the lock when the
process dies, however it dies (``SIGKILL`` included), so another engine that
can take the lock has *proof* that the registered engine is gone and may
expire its leases at once instead of waiting for them to lapse.

``flock`` locks belong to an open file description, not to a process: two
engines in one process each open their own description and see each other as
alive, exactly like engines in two processes. Without ``fcntl`` (not POSIX)
nothing can be proved: ``fcntl`` is ``None`` and the storage never reaps.

Everything here is blocking; the storage calls it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import re

from .._errors import StorageError

__all__ = ["close_lock", "fcntl", "lock_path", "probe", "take_lock"]

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no advisory locks to take
    fcntl = None  # type: ignore[assignment]

_ENGINE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def lock_path(database: str, engine_id: str) -> str:
    """Where the lock file of ``engine_id`` lives.

    Raises:
        ValueError: ``engine_id`` is not usable as a file name.
    """
    if not _ENGINE_ID.match(engine_id):
        raise ValueError(
            f"engine id {engine_id!r} must be 1-128 letters, digits, '.', '_' or '-' "
            "(it names a lock file)"
        )
    return os.path.join(f"{database}.engines", f"{engine_id}.lock")


def take_lock(database: str, engine_id: str) -> int | None:
    """Create and lock the engine's file; returns its descriptor (``None`` without ``fcntl``).

    Raises:
        StorageError: another live engine holds this id, or the file cannot be made.
    """
    path = lock_path(database, engine_id)
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"SQLite storage {database!r}: cannot create {path!r}: {exc}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        raise StorageError(
            f"SQLite storage {database!r}: engine id {engine_id!r} is held by a live engine"
        ) from exc
    return fd


def probe(database: str, engine_id: str) -> int | None:
    """Take the lock of a registered engine if its holder is gone.

    Returns a descriptor holding the lock (``-1`` when the file does not exist:
    a live engine always has one) when the engine is provably dead, ``None``
    when it is alive or nothing can be proved.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        return None
    try:
        path = lock_path(database, engine_id)
    except ValueError:
        return None  # no lock file can be named after it: prove nothing
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return -1  # not even the folder exists
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def close_lock(fd: int | None, database: str, engine_id: str, *, unlink: bool) -> None:
    """Remove the engine's file (when ``unlink``) while still locked, then release it."""
    try:
        if unlink:
            with contextlib.suppress(OSError, ValueError):
                os.unlink(lock_path(database, engine_id))
    finally:
        if fd is not None and fd >= 0:
            os.close(fd)
