"""Storage URLs (used by the command line): ``sqlite:///path`` or ``memory://``.

``sqlite:///app.db`` is the relative path ``app.db`` and ``sqlite:////var/app.db``
the absolute path ``/var/app.db`` (the SQLAlchemy convention); the path is
percent-decoded. ``postgresql://`` is recognised but not available yet.
"""

from __future__ import annotations

from urllib.parse import unquote

from .._errors import StorageError
from ._memory import MemoryStorage
from ._protocol import Storage
from ._sqlite import SQLiteStorage

__all__ = ["storage_from_url"]

_SQLITE = "sqlite:///"
_POSTGRES = ("postgresql://", "postgres://", "postgresql+psycopg://")


def storage_from_url(url: str) -> Storage:
    """Build an unopened storage from its URL.

    Synopsis::

        async with storage_from_url("sqlite:///app.db") as storage:
            print(await storage.query(status="waiting"))

    Raises:
        StorageError: the URL is malformed, names an unknown scheme, or a
            backend that is not available (``postgresql://``, for now).
    """
    lowered = url.lower()
    if lowered.startswith("memory:"):
        if url[len("memory:") :] not in ("", "//"):
            raise StorageError(f"memory storage takes no path: use 'memory://', not {url!r}")
        return MemoryStorage()
    if lowered.startswith(_SQLITE):
        path = unquote(url[len(_SQLITE) :])
        if not path or path == ":memory:":
            raise StorageError(
                f"storage URL {url!r} names no database file; use 'sqlite:///app.db' "
                "(or 'memory://' for a non-durable in-process storage)"
            )
        return SQLiteStorage(path)
    if lowered.startswith("sqlite:"):
        raise StorageError(
            f"malformed SQLite URL {url!r}: write 'sqlite:///relative.db' or "
            "'sqlite:////absolute/path.db'"
        )
    if lowered.startswith(_POSTGRES):
        raise StorageError(
            f"PostgreSQL storage ({url.split('://', 1)[0]}://...) is not available yet in "
            "this release; use 'sqlite:///path' or 'memory://'"
        )
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StorageError(
        f"unsupported storage URL scheme {scheme!r} in {url!r}; expected 'sqlite:///path' "
        "or 'memory://'"
    )
