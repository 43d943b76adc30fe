"""Fixtures of the storage tests: ``backend`` is parametrized over every backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hephaestus_trio import Instance, Storage

from ._support import BACKENDS, DURABLE_BACKENDS, Backend, make_instance


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path, request)


@pytest.fixture(params=sorted(DURABLE_BACKENDS))
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Each durable backend, for tests that only make sense when data outlives the object."""
    backend = BACKENDS[request.param](tmp_path, request)
    assert backend.durable
    return backend


@pytest.fixture
async def storage(backend: Backend) -> AsyncIterator[Storage]:
    async with backend.new_storage() as opened:
        yield opened


@pytest.fixture
def make() -> Callable[..., Instance]:
    """``make_instance``, as a fixture."""
    return make_instance
