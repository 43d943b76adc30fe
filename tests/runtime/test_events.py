"""Observability events: order, metadata, measurements, subscriptions, failing handlers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
import trio

from hephaestus_trio import (
    EVENT_NAMES,
    Done,
    Event,
    LoggingHandler,
    Step,
    Suspend,
    Unique,
    Workflow,
    open_engine,
)


class Split(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class Short(Step):
    events = ("done",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(1)
        return "done"


class Long(Step):
    events = ("done",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        await trio.sleep(2)
        return "done"


class Join(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        return "ok"


class FanOut(Workflow, unique=Unique(key="fan")):
    start_at = Split
    transitions = {
        (Split, "ok"): [Short, Long],
        (Short, "done"): Join,
        (Long, "done"): Join,
        (Join, "ok"): Done,
    }


class Gate(Step):
    events = ("open",)

    async def execute(self, instance: Any, config: Any, context: Any) -> Suspend:
        return Suspend()


class Gated(Workflow, unique=Unique(key="gate")):
    start_at = Gate
    transitions = {(Gate, "open"): Done}


class Broken(Step):
    events = ("ok",)

    async def execute(self, instance: Any, config: Any, context: Any) -> str:
        raise RuntimeError("kaput")


class Crashing(Workflow, unique=Unique(key="crash")):
    start_at = Broken
    transitions = {(Broken, "ok"): Done}


ALL = [FanOut, Gated, Crashing]

# Steps of the fan-out in the order they start; Short and Long start together.
FAN_OUT_NAMES = [
    "workflow.start",
    "workflow.transition",  # pending -> running, [split]
    "engine.advance",
    "step.start",  # split
    "workflow.transition",  # [short, long]
    "engine.advance",
    "step.stop",  # split
    "step.start",  # short | long
    "step.start",  # long | short
    "workflow.transition",  # [long]  (t = 1)
    "engine.advance",
    "step.stop",  # short
    "workflow.transition",  # [join]  (t = 2)
    "engine.advance",
    "step.stop",  # long
    "step.start",  # join
    "workflow.transition",  # [done]
    "engine.advance",
    "step.stop",  # join
    "step.start",  # done
    "workflow.transition",  # running -> completed
    "engine.advance",
    "step.stop",  # done
    "workflow.stop",
]


def collector() -> tuple[list[Event], Callable[[Event], None]]:
    seen: list[Event] = []
    return seen, seen.append


async def test_fan_out_event_sequence(autojump_clock: Any):
    seen, handler = collector()
    telemetry = {"tenant": "acme", "request": "r-1"}
    async with open_engine(workflows=ALL) as engine:
        engine.subscribe(handler)
        iid = await engine.start_instance(FanOut, {}, id="fan::a", telemetry_metadata=telemetry)
        final = await engine.wait(iid)
    assert final.status.value == "completed"

    assert [e.name for e in seen] == FAN_OUT_NAMES
    assert seen[0].name == "workflow.start"
    assert seen[-1].name == "workflow.stop"
    for event in seen:
        meta = event.metadata
        assert meta["instance_id"] == iid
        assert meta["run_id"] == final.run_id
        assert meta["workflow"] == FanOut.name
        assert meta["workflow_version"] == 1
        assert meta["tenant"] == "acme"
        assert meta["request"] == "r-1"
        assert all(isinstance(v, float) for v in event.measurements.values())

    def steps_of(name: str) -> list[str]:
        return [e.metadata["step"] for e in seen if e.name == name]

    starts = steps_of("step.start")
    assert starts[0] == "split"
    assert sorted(starts[1:3]) == ["long", "short"]
    assert starts[3:] == ["join", "done"]
    assert steps_of("step.stop") == ["split", "short", "long", "join", "done"]
    for step in ["split", "short", "long", "join", "done"]:
        start = next(
            i for i, e in enumerate(seen) if e.name == "step.start" and e.metadata["step"] == step
        )
        stop = next(
            i for i, e in enumerate(seen) if e.name == "step.stop" and e.metadata["step"] == step
        )
        assert start < stop

    stops = {e.metadata["step"]: e for e in seen if e.name == "step.stop"}
    assert stops["short"].measurements["duration"] == 1.0
    assert stops["long"].measurements["duration"] == 2.0
    assert stops["split"].measurements["duration"] == 0.0
    assert stops["short"].metadata["event"] == "done"
    assert seen[-1].measurements["duration"] == 2.0
    assert isinstance(seen[-1].measurements["duration"], float)
    assert seen[-1].metadata["status"] == "completed"

    transitions = [e.metadata for e in seen if e.name == "workflow.transition"]
    assert [t["active_steps"] for t in transitions] == [
        ["split"],
        ["long", "short"],
        ["long"],
        ["join"],
        ["done"],
        [],
    ]
    assert (transitions[0]["from_status"], transitions[0]["to_status"]) == ("pending", "running")
    assert transitions[-1]["to_status"] == "completed"
    for event in seen:
        if event.name == "engine.advance":
            assert isinstance(event.measurements["duration"], float)


async def test_park_resume_and_exception_events(autojump_clock: Any):
    seen, handler = collector()
    async with open_engine(workflows=ALL) as engine:
        engine.subscribe(
            handler, events=["step.async", "step.resume", "step.exception", "workflow.exception"]
        )
        gate = await engine.start_instance(Gated, {}, id="gate::a")
        await trio.sleep(1)
        await engine.resume(gate, "open")
        await engine.wait(gate)
        crash = await engine.start_instance(Crashing, {}, id="crash::a")
        await engine.wait(crash)
    assert [(e.name, e.metadata["instance_id"], e.metadata.get("step")) for e in seen] == [
        ("step.async", "gate::a", "gate"),
        ("step.resume", "gate::a", "gate"),
        ("step.exception", "crash::a", "broken"),
        ("workflow.exception", "crash::a", None),
    ]
    assert seen[1].metadata["event"] == "open"
    assert "kaput" in seen[2].metadata["error"]
    assert seen[2].metadata["will_retry"] is False
    assert "kaput" in seen[3].metadata["error"]


async def test_subscribe_filters_and_unsubscribe(autojump_clock: Any):
    only, only_handler = collector()
    everything, all_handler = collector()
    async with open_engine(workflows=ALL) as engine:
        unsubscribe = engine.subscribe(only_handler, events=["workflow.start", "workflow.stop"])
        engine.subscribe(all_handler)
        await engine.wait(await engine.start_instance(FanOut, {}, id="fan::b"))
        assert [e.name for e in only] == ["workflow.start", "workflow.stop"]

        unsubscribe()
        unsubscribe()  # idempotent
        await engine.wait(await engine.start_instance(FanOut, {}, id="fan::c"))
    assert [e.name for e in only] == ["workflow.start", "workflow.stop"]
    assert [e.name for e in everything].count("workflow.stop") == 2

    single, single_handler = collector()
    async with open_engine(workflows=ALL) as engine:
        engine.subscribe(single_handler, events="workflow.stop")  # one name as a string
        await engine.wait(await engine.start_instance(FanOut, {}, id="fan::d"))
    assert [e.name for e in single] == ["workflow.stop"]


async def test_subscribe_rejects_unknown_event_names(autojump_clock: Any):
    async with open_engine(workflows=ALL) as engine:
        with pytest.raises(ValueError, match="workflow.started"):
            engine.subscribe(lambda e: None, events=["workflow.start", "workflow.started"])
        with pytest.raises(TypeError):
            engine.subscribe("not callable")  # type: ignore[arg-type]


async def test_a_raising_handler_is_logged_and_detached(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
):
    calls: list[str] = []
    seen, handler = collector()

    def bad(event: Event) -> None:
        calls.append(event.name)
        raise ZeroDivisionError("handler bug")

    async with open_engine(workflows=ALL) as engine:
        engine.subscribe(bad, events=["step.start"])
        engine.subscribe(handler, events=["step.start"])
        final = await engine.wait(await engine.start_instance(FanOut, {}, id="fan::e"))
    assert final.status.value == "completed"
    assert calls == ["step.start"]  # detached after its first failure
    assert len(seen) == 5  # the other handler saw every step start
    errors = [
        r for r in caplog.records if r.levelno == logging.ERROR and "detached" in r.getMessage()
    ]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], ZeroDivisionError)


async def test_handlers_given_to_open_engine_see_runner_init(autojump_clock: Any):
    seen, handler = collector()
    async with open_engine(workflows=ALL, handlers=[handler]) as engine:
        await engine.wait(await engine.start_instance(FanOut, {}, id="fan::f"))
    assert seen[0].name == "runner.init"
    # Hibernating runs are rows, not tasks: the engine counts only what it claimed.
    assert seen[0].measurements == {"recovered": 0.0}
    assert seen[0].metadata["storage"] == "MemoryStorage"
    assert [e.name for e in seen[1:]] == FAN_OUT_NAMES


def test_event_names_are_the_spec_list():
    assert set(EVENT_NAMES) == {
        "workflow.start",
        "workflow.stop",
        "workflow.exception",
        "workflow.transition",
        "step.start",
        "step.stop",
        "step.exception",
        "step.async",
        "step.resume",
        "engine.advance",
        "runner.init",
        "instance.restart",
        "instance.cancel",
    }


async def test_logging_handler_default_levels(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="hephaestus_trio.events")
    log = logging.getLogger("hephaestus_trio.events")
    async with open_engine(workflows=ALL, handlers=[LoggingHandler(log)]) as engine:
        gate = await engine.start_instance(Gated, {}, id="gate::b")
        await trio.sleep(1)
        await engine.resume(gate, "open")
        await engine.wait(gate)
        await engine.wait(await engine.start_instance(Crashing, {}, id="crash::b"))

    levels: dict[str, set[int]] = {}
    for record in caplog.records:
        if record.name != "hephaestus_trio.events":
            continue
        name = record.getMessage().split("]", 1)[0].lstrip("[")
        levels.setdefault(name, set()).add(record.levelno)
    assert levels["step.async"] == {logging.INFO}  # parked is normal, not a warning
    assert levels["workflow.start"] == {logging.INFO}
    assert levels["workflow.stop"] == {logging.INFO}
    assert levels["workflow.transition"] == {logging.DEBUG}
    assert levels["engine.advance"] == {logging.DEBUG}
    assert levels["step.exception"] == {logging.ERROR}
    assert levels["workflow.exception"] == {logging.ERROR}
    assert levels["step.start"] == {logging.INFO}
    assert levels["step.resume"] == {logging.INFO}
    assert levels["runner.init"] == {logging.INFO}
    messages = [r.getMessage() for r in caplog.records if r.name == "hephaestus_trio.events"]
    assert any(m.startswith("[step.async] gate::b step=gate") for m in messages)


async def test_logging_handler_level_overrides_and_threshold(
    autojump_clock: Any, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.INFO, logger="hephaestus_trio.quiet")
    log = logging.getLogger("hephaestus_trio.quiet")
    handler = LoggingHandler(log, levels={"step.async": logging.DEBUG})
    async with open_engine(workflows=ALL, handlers=[handler]) as engine:
        await engine.start_instance(Gated, {}, id="gate::c")
        await trio.sleep(1)
    names = [
        r.getMessage().split("]", 1)[0].lstrip("[") for r in caplog.records if r.name == log.name
    ]
    assert "step.async" not in names  # lowered to DEBUG, below the INFO threshold
    assert "workflow.transition" not in names
    assert "workflow.start" in names
