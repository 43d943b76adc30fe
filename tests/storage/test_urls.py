"""``storage_from_url``: the URLs the command line accepts."""

from __future__ import annotations

from pathlib import Path

import pytest

from hephaestus_trio import MemoryStorage, SQLiteStorage, StorageError
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
        ("postgresql://user@db/app", "not available yet"),
        ("postgres://db/app", "not available yet"),
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
