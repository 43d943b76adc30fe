"""``storage_from_url``: the URLs the command line accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hephaestus_trio import MemoryStorage, PostgresStorage, SQLiteStorage, StorageError
from hephaestus_trio.storage import storage_from_url


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///app.db", "app.db"),
        ("sqlite:///data/app.db", "data/app.db"),
        ("sqlite:////var/lib/app.db", "/var/lib/app.db"),
        ("sqlite:///my%20app.db", "my app.db"),
        ("SQLite:///app.db", "app.db"),
    ],
)
def test_sqlite_urls(url: str, path: str) -> None:
    storage = storage_from_url(url)
    assert isinstance(storage, SQLiteStorage)
    assert storage.path == path


@pytest.mark.parametrize("url", ["memory://", "memory:"])
def test_memory_urls(url: str) -> None:
    assert isinstance(storage_from_url(url), MemoryStorage)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://db/app?notify=maybe", r"notify='maybe' is not valid: expected on or off"),
        ("postgresql://db/app?poll_interval=soon", "poll_interval='soon' is not valid"),
        ("postgresql://db/app?poll_interval=0", "poll_interval must be a positive number"),
        ("postgresql://db/app?pool_size=many", "pool_size='many' is not valid"),
        ("postgresql://db/app?pool_size=0", "pool_size must be a positive integer"),
        ("postgresql://db/app?clock=wall", "clock='wall' is not valid"),
        ("postgresql://db/app?notify_interval=-1", "notify_interval must be a number"),
        ("sqlite://app.db", "malformed SQLite URL"),
        ("sqlite:///", "names no database file"),
        ("sqlite:///:memory:", "names no database file"),
        ("memory://somewhere", "takes no path"),
        ("mysql://db/app", "unsupported storage URL scheme 'mysql'"),
        ("app.db", "unsupported storage URL"),
    ],
)
def test_bad_urls(url: str, message: str) -> None:
    with pytest.raises(StorageError, match=message):
        storage_from_url(url)


async def test_a_url_storage_opens(tmp_path: Path) -> None:
    async with storage_from_url(f"sqlite:///{tmp_path / 'app.db'}") as storage:
        assert await storage.query() == []
    assert (tmp_path / "app.db").exists()


@pytest.mark.parametrize(
    ("url", "dsn", "options"),
    [
        ("postgresql://user@db/app", "postgresql://user@db/app", {}),
        ("postgres://db:5433/app", "postgres://db:5433/app", {}),
        ("postgresql+psycopg://user@db/app", "postgresql://user@db/app", {}),
        (
            "postgresql://db/app?sslmode=require&notify=off&poll_interval=0.25&notify_interval=0",
            "postgresql://db/app?sslmode=require",
            {"_notify": False, "_poll_interval": 0.25, "_notify_interval": 0.0},
        ),
        (
            "POSTGRESQL://db/app?pool_size=3&clock=caller",
            "postgresql://db/app",
            {"_pool_size": 3, "_clock": "caller"},
        ),
    ],
)
def test_postgres_urls(url: str, dsn: str, options: dict[str, object]) -> None:
    storage = storage_from_url(url)
    assert isinstance(storage, PostgresStorage)
    assert storage.dsn == dsn
    defaults = {
        "_notify": True,
        "_poll_interval": 1.0,
        "_notify_interval": 0.05,
        "_pool_size": 10,
        "_clock": "database",
    }
    for name, value in (defaults | options).items():
        assert getattr(storage, name) == value, name


async def test_a_postgres_url_storage_opens(postgres_dsn: str) -> None:
    async with storage_from_url(postgres_dsn + "?notify=off") as storage:
        assert await storage.query() == []
