"""The storage conformance suite, one test per check and backend.

The checks themselves are public API (``hephaestus_trio.testing.STORAGE_CHECKS``,
``check_storage``), so a third-party backend runs exactly the suite the
built-in ones pass. ``MemoryStorage`` passes the same suite as the durable
backends, which is what makes it a trustworthy fake. Each test gets pytest's
fresh ``tmp_path``: the backend's factory (``_support.BACKENDS``) is on a
fresh, empty location.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hephaestus_trio import MemoryStorage
from hephaestus_trio.testing import STORAGE_CHECKS, StorageFactory, check_storage

from ._support import BACKENDS, Backend


@pytest.mark.parametrize("check", list(STORAGE_CHECKS))
async def test_storage_check(backend: Backend, check: str) -> None:
    await STORAGE_CHECKS[check](backend.new_storage, durable=backend.durable)


@pytest.mark.parametrize("name", sorted(BACKENDS))
async def test_check_storage_runs_every_check(
    name: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    counter = itertools.count()

    def new_location() -> StorageFactory:
        folder = tmp_path / f"location-{next(counter)}"
        folder.mkdir()
        return BACKENDS[name](folder, request).new_storage

    await check_storage(new_location, durable=BACKENDS[name](tmp_path, request).durable)
    assert next(counter) == len(STORAGE_CHECKS)  # one fresh location per check


class ForgetfulTimers(MemoryStorage):
    """Breaks one rule: a cancelled timer reports success twice."""

    async def cancel_timer(self, run_id: str, seq: int) -> bool:
        await super().cancel_timer(run_id, seq)
        return True


async def test_check_storage_names_the_failing_check() -> None:
    with pytest.raises(AssertionError, match="'cancel_timer_applies_once' failed") as info:
        await check_storage(lambda: ForgetfulTimers, durable=False)
    assert "cancel_timer through another run" in str(info.value)
    assert isinstance(info.value.__cause__, AssertionError)


async def test_a_wrong_durable_flag_fails_the_first_check() -> None:
    with pytest.raises(AssertionError, match="'is_a_storage' failed.*durable"):
        await check_storage(lambda: MemoryStorage, durable=True)


def test_the_checks_work_without_pytest() -> None:
    # pytest is installed here (and trio.testing imports it when it can), so
    # block it: the suite must import and run where pytest is absent.
    code = textwrap.dedent(
        """
        import sys
        sys.modules["pytest"] = None
        sys.modules["_pytest"] = None
        import trio
        from hephaestus_trio import MemoryStorage
        from hephaestus_trio.testing import check_storage
        trio.run(lambda: check_storage(lambda: MemoryStorage, durable=False))
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
