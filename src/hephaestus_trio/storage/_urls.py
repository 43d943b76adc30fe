"""Storage URLs (used by the command line): ``sqlite:///path``, ``memory://``, PostgreSQL.

``sqlite:///app.db`` is the relative path ``app.db`` and ``sqlite:////var/app.db``
the absolute path ``/var/app.db`` (the SQLAlchemy convention); the path is
percent-decoded.

``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` URLs build a
``PostgresStorage``; the URL (with the ``+psycopg`` dialect suffix removed) is
handed to libpq as it is, except for these query-string options of our own,
which are taken out of it:

- ``notify=on|off`` (default ``on``): NOTIFY hints and a LISTEN connection;
  ``off`` behind a pooler in transaction mode;
- ``poll_interval=<seconds>`` (default ``1``);
- ``notify_interval=<seconds>`` (default ``0.05``): at most one NOTIFY per interval;
- ``pool_size=<n>`` (default ``10``);
- ``clock=database|caller`` (default ``database``).

Every other query parameter (``sslmode``, ``connect_timeout``,
``application_name``, ...) is libpq's.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from .._errors import StorageError
from ._memory import MemoryStorage
from ._postgres import PostgresStorage
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
        return _postgres(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StorageError(
        f"unsupported storage URL scheme {scheme!r} in {url!r}; expected 'sqlite:///path', "
        "'postgresql://user@host/database' or 'memory://'"
    )


_SWITCH = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _postgres(url: str) -> PostgresStorage:
    """A ``PostgresStorage`` from its URL, our options taken out of the query string."""
    parts = urlsplit(url)
    scheme = "postgresql" if parts.scheme.lower() == "postgresql+psycopg" else parts.scheme
    kept: list[tuple[str, str]] = []
    options: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("notify", "poll_interval", "notify_interval", "pool_size", "clock"):
            options[key] = value
        else:
            kept.append((key, value))
    dsn = urlunsplit((scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))

    def bad(key: str, expected: str) -> StorageError:
        return StorageError(
            f"storage URL option {key}={options[key]!r} is not valid: expected {expected}"
        )

    notify = True
    if "notify" in options:
        if options["notify"].lower() not in _SWITCH:
            raise bad("notify", "on or off")
        notify = _SWITCH[options["notify"].lower()]
    poll_interval = 1.0
    if "poll_interval" in options:
        try:
            poll_interval = float(options["poll_interval"])
        except ValueError:
            raise bad("poll_interval", "a positive number of seconds") from None
    notify_interval = 0.05
    if "notify_interval" in options:
        try:
            notify_interval = float(options["notify_interval"])
        except ValueError:
            raise bad("notify_interval", "a number of seconds") from None
    pool_size = 10
    if "pool_size" in options:
        try:
            pool_size = int(options["pool_size"])
        except ValueError:
            raise bad("pool_size", "a positive integer") from None
    clock = options.get("clock", "database")
    if clock not in ("database", "caller"):
        raise bad("clock", "database or caller")
    return PostgresStorage(
        dsn,
        notify=notify,
        poll_interval=poll_interval,
        notify_interval=notify_interval,
        pool_size=pool_size,
        clock="caller" if clock == "caller" else "database",
    )
