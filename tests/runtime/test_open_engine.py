"""``open_engine`` behaves like a resource, not like a bare nursery: an exception
raised in its block (or by its own setup) comes out as it was raised."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from hephaestus_trio import (
    Done,
    MemoryStorage,
    Status,
    Step,
    StorageError,
    Unique,
    Workflow,
    open_engine,
)


class Slow(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(100)
        return "ok"


class Flow(Workflow, unique=Unique(key="flow")):
    start_at = Slow
    transitions = {(Slow, "ok"): Done}


class Boom(Exception):
    pass


async def _start_then_raise(storage: MemoryStorage, iid: str) -> None:
    async with open_engine(storage, workflows=[Flow]) as engine:
        await engine.start_instance(Flow, {}, id=iid)
        await trio.sleep(1)
        raise Boom("from the block")


async def test_an_error_in_the_block_comes_out_unwrapped(autojump_clock: Any) -> None:
    storage = MemoryStorage()
    iid = "flow::a"
    with pytest.raises(Boom, match="from the block") as caught:
        await _start_then_raise(storage, iid)
    assert not isinstance(caught.value, BaseExceptionGroup)
    # The live run was stopped, not lost: it is still running as persisted.
    # (open_engine closed the storage it opened; open it again to read it.)
    async with storage:
        (run,) = await storage.query(id=iid)
    assert run.status is Status.RUNNING
    assert run.running_steps == {"slow"}


async def test_a_cancelled_caller_is_cancelled_cleanly(autojump_clock: Any) -> None:
    with trio.move_on_after(5) as scope:
        async with open_engine(workflows=[Flow]) as engine:
            await engine.start_instance(Flow, {}, id="flow::b")
            await trio.sleep_forever()
    assert scope.cancelled_caught


class BrokenClaims(MemoryStorage):
    # Recovery is a claim of every run that needs a driver (no query any more).
    async def claim(self, owner: str, **kwargs: Any) -> Any:
        raise StorageError("the disk is gone")


async def test_a_failed_recovery_comes_out_unwrapped() -> None:
    with pytest.raises(StorageError, match="the disk is gone"):
        async with open_engine(BrokenClaims()):
            pass  # pragma: no cover - never entered
