"""OpenTelemetry spans: names, parents, attributes, errors, and trace joining across engines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from opentelemetry.trace import SpanKind, StatusCode

from hephaestus_trio import (
    SPAN_ATTRIBUTES,
    SPAN_NAMES,
    MemoryStorage,
    OpenTelemetryHandler,
    RestartPolicy,
    SQLiteStorage,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.runtime._incarnation import Incarnation

from .conftest import Tracing
from .flows import (
    ALL,
    Crashing,
    EarlyResume,
    Gated,
    Linear,
    Napping,
    Quick,
    Refusing,
    Timed,
    TimingOut,
)

EPOCH = datetime(2026, 1, 1, tzinfo=UTC)


def ids(iid: str, run_id: str, workflow: str) -> dict[str, Any]:
    return {
        "hephaestus.instance.id": iid,
        "hephaestus.run.id": run_id,
        "hephaestus.workflow.name": workflow,
        "hephaestus.workflow.version": 1,
    }


def step_attrs(base: dict[str, Any], step: str, attempt: int, **rest: Any) -> dict[str, Any]:
    found = {**base, "hephaestus.step.key": step, "hephaestus.step.attempt": attempt}
    found.update({f"hephaestus.step.{k}": v for k, v in rest.items()})
    return found


def exception_events(span: Any) -> list[dict[str, Any]]:
    return [
        {
            k: v
            for k, v in e.attributes.items()
            if k not in ("exception.stacktrace", "exception.escaped")
        }
        for e in span.events
        if e.name == "exception"
    ]


async def test_run_and_step_spans_are_children_of_the_callers_span(
    autojump_clock: Any, tracing: Tracing
):
    handler = OpenTelemetryHandler(tracing.provider)
    async with open_engine(workflows=ALL, handlers=[handler]) as engine:
        with tracing.tracer.start_as_current_span("caller") as caller:
            iid = await engine.start_instance(Linear, {}, id="linear::a")
        final = await engine.wait(iid)
    assert final.status.value == "completed"
    base = ids(iid, final.run_id, Linear.name)

    [run] = tracing.spans("hephaestus.run")
    assert run.kind is SpanKind.INTERNAL
    assert run.context.trace_id == caller.get_span_context().trace_id
    assert run.parent is not None
    assert run.parent.span_id == caller.get_span_context().span_id
    assert dict(run.attributes) == {
        **base,
        "hephaestus.run.outcome": "completed",
        "hephaestus.run.status": "completed",
    }
    assert run.status.status_code is StatusCode.UNSET

    steps = tracing.spans("hephaestus.step")
    assert [dict(s.attributes) for s in steps] == [
        step_attrs(base, "flaky", 1, outcome="raised", will_retry=True),
        step_attrs(base, "flaky", 2, outcome="completed", event="ok"),
        step_attrs(base, "slow", 1, outcome="completed", event="ok"),
        step_attrs(base, "done", 1, outcome="completed", event="done"),
    ]
    for span in steps:
        assert span.parent is not None
        assert span.parent.span_id == run.context.span_id
        assert span.context.trace_id == run.context.trace_id
    failed = steps[0]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "KeyError('missing')"
    assert exception_events(failed) == [
        {
            "exception.type": "KeyError",
            "exception.message": "'missing'",
        }
    ]
    assert all(s.status.status_code is StatusCode.UNSET for s in steps[1:])
    assert all(exception_events(s) == [] for s in steps[1:])
    # Every span name and attribute used is a documented one.
    ours = [s for s in tracing.spans() if s.name != "caller"]
    assert {s.name for s in ours} <= set(SPAN_NAMES)
    assert {k for s in ours for k in s.attributes} <= set(SPAN_ATTRIBUTES)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_a_resume_joins_the_resumers_trace_and_links_the_run(
    autojump_clock: Any, tracing: Tracing, kind: str, tmp_path: Path
):
    # On SQLite the resume is applied in the claim it makes (one commit):
    # the run's first loop announces it, with the same spans.
    handler = OpenTelemetryHandler(tracing.provider)
    storage: Any = None
    if kind == "sqlite":
        autojump_clock.autojump_threshold = 0.05  # SQLite does real I/O in threads
        storage = SQLiteStorage(tmp_path / "runs.db")
    async with open_engine(storage, workflows=ALL, handlers=[handler]) as engine:
        with tracing.tracer.start_as_current_span("starter") as starter:
            iid = await engine.start_instance(Gated, {}, id="gated::a")
        await trio.sleep(1)  # parked, hibernated
        assert engine.live_tasks == 0
        with tracing.tracer.start_as_current_span("resumer") as resumer:
            await engine.resume(iid, "open")
        final = await engine.wait(iid)
    base = ids(iid, final.run_id, Gated.name)
    first, second = tracing.spans("hephaestus.run")
    assert dict(first.attributes) == {
        **base,
        "hephaestus.run.outcome": "hibernated",
        "hephaestus.run.status": "waiting",
    }
    assert dict(second.attributes) == {
        **base,
        "hephaestus.run.outcome": "completed",
        "hephaestus.run.status": "completed",
    }
    for run in (first, second):  # both incarnations are children of the starter's span
        assert run.context.trace_id == starter.get_span_context().trace_id
        assert run.parent.span_id == starter.get_span_context().span_id

    [resume] = tracing.spans("hephaestus.resume")
    assert dict(resume.attributes) == {
        **base,
        "hephaestus.step.key": "gate",
        "hephaestus.step.event": "open",
        "hephaestus.wakeup.kind": "resume",
    }
    assert resume.context.trace_id == resumer.get_span_context().trace_id
    assert resume.parent.span_id == resumer.get_span_context().span_id
    assert [link.context.span_id for link in resume.links] == [second.context.span_id]

    gate, done = tracing.spans("hephaestus.step")
    assert dict(gate.attributes) == step_attrs(base, "gate", 1, outcome="parked")
    assert gate.parent.span_id == first.context.span_id
    assert dict(done.attributes) == step_attrs(base, "done", 1, outcome="completed", event="done")
    assert done.parent.span_id == second.context.span_id


async def test_untraced_callers_give_root_run_spans_and_timer_spans_inside_them(
    autojump_clock: Any, tracing: Tracing
):
    async with open_engine(workflows=ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        iid = await e.start_instance(Timed, {}, id="timed::a")
        final = await e.wait(iid)
        assert final.trace_context is None  # nothing to capture outside a span
    first, second = tracing.spans("hephaestus.run")
    assert first.parent is None
    assert second.parent is None
    assert first.attributes["hephaestus.run.outcome"] == "hibernated"
    assert second.attributes["hephaestus.run.outcome"] == "completed"
    [timer] = tracing.spans("hephaestus.resume")
    assert dict(timer.attributes) == {
        **ids(iid, final.run_id, Timed.name),
        "hephaestus.step.key": "pause",
        "hephaestus.step.event": "wake",
        "hephaestus.wakeup.kind": "timer",
    }
    assert timer.parent.span_id == second.context.span_id
    assert timer.links == ()


async def test_an_early_resume_joins_the_resumers_trace_when_it_applies(
    autojump_clock: Any, tracing: Tracing
):
    async with open_engine(workflows=ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        iid = await e.start_instance(EarlyResume, {}, id="early::a")
        await trio.sleep(1)
        with tracing.tracer.start_as_current_span("resumer") as resumer:
            await e.resume(iid, "go")
        await e.wait(iid)
    # Recorded while the step still ran, applied once it parked: in the resumer's
    # trace, linked to the incarnation that applied it (the run's last one).
    run = tracing.spans("hephaestus.run")[-1]
    [resume] = tracing.spans("hephaestus.resume")
    assert resume.context.trace_id == resumer.get_span_context().trace_id
    assert resume.parent.span_id == resumer.get_span_context().span_id
    assert [link.context.span_id for link in resume.links] == [run.context.span_id]
    assert resume.attributes["hephaestus.step.event"] == "go"


async def test_failures_are_recorded_as_exceptions_with_status_error(
    autojump_clock: Any, tracing: Tracing
):
    async with open_engine(workflows=ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        refused = await e.wait(await e.start_instance(Refusing, {}, id="refusing::a"))
        crashed = await e.wait(await e.start_instance(Crashing, {}, id="crashing::a"))
        timed_out = await e.wait(await e.start_instance(TimingOut, {}, id="timing::a"))
    runs = {s.attributes["hephaestus.instance.id"]: s for s in tracing.spans("hephaestus.run")}
    steps = {s.attributes["hephaestus.instance.id"]: s for s in tracing.spans("hephaestus.step")}

    run = runs["refusing::a"]
    assert dict(run.attributes) == {
        **ids("refusing::a", refused.run_id, Refusing.name),
        "hephaestus.run.outcome": "failed",
        "hephaestus.run.status": "failed",
        "hephaestus.error.kind": "failure",
    }
    assert run.status.status_code is StatusCode.ERROR
    assert run.status.description == "failure: out of stock"
    assert exception_events(run) == [
        {"exception.type": "hephaestus.failure", "exception.message": "out of stock"}
    ]
    step = steps["refusing::a"]
    assert step.attributes["hephaestus.step.outcome"] == "failed"
    assert step.status.status_code is StatusCode.ERROR
    assert step.status.description == "out of stock"

    run = runs["crashing::a"]
    assert run.attributes["hephaestus.error.kind"] == "crash"
    assert run.status.status_code is StatusCode.ERROR
    assert exception_events(run) == [
        {"exception.type": "KeyError", "exception.message": "'missing'"}
    ]
    step = steps["crashing::a"]
    assert dict(step.attributes) == step_attrs(
        ids("crashing::a", crashed.run_id, Crashing.name),
        "broken",
        1,
        outcome="raised",
        will_retry=False,
    )
    assert exception_events(step)[0]["exception.type"] == "KeyError"

    run = runs["timing::a"]
    assert run.attributes["hephaestus.error.kind"] == "timeout"
    step = steps["timing::a"]
    assert dict(step.attributes) == step_attrs(
        ids("timing::a", timed_out.run_id, TimingOut.name),
        "sluggish",
        1,
        outcome="timed_out",
        will_retry=False,
    )
    assert step.status.status_code is StatusCode.ERROR
    assert exception_events(step)[0]["exception.type"] == "trio.TooSlowError"


async def test_a_run_joins_its_callers_trace_after_a_restart_in_another_engine(
    tmp_path: Path, mock_clock: Any
):
    """Start under a caller span, stop the engine mid-step, take over with another provider."""
    mock_clock.autojump_threshold = 0.05  # SQLite does real I/O in threads
    first, second = Tracing(), Tracing()
    db = tmp_path / "runs.db"
    clock = trio_wall_clock(EPOCH)
    async with open_engine(
        SQLiteStorage(db),
        ALL,
        handlers=[OpenTelemetryHandler(first.provider)],
        wall_clock=clock,
    ) as engine:
        with first.tracer.start_as_current_span("caller") as caller:
            iid = await engine.start_instance(Napping, {}, id="napping::a")
        await trio.sleep(2)  # nap is running
    stored = await _stored(db, iid)
    assert stored.trace_context is not None
    caller_context = caller.get_span_context()
    assert stored.trace_context["traceparent"] == (
        f"00-{caller_context.trace_id:032x}-{caller_context.span_id:016x}"
        f"-{caller_context.trace_flags:02x}"
    )
    [stopped] = first.spans("hephaestus.run")
    assert stopped.attributes["hephaestus.run.outcome"] == "engine_stopped"
    assert stopped.attributes["hephaestus.run.status"] == "running"
    assert stopped.status.status_code is StatusCode.UNSET
    [interrupted] = first.spans("hephaestus.step")
    assert interrupted.attributes["hephaestus.step.outcome"] == "interrupted"

    async with open_engine(
        SQLiteStorage(db),
        ALL,
        handlers=[OpenTelemetryHandler(second.provider)],
        wall_clock=clock,
    ) as engine:
        final = await engine.wait(iid)
    assert final.status.value == "completed"
    assert second.spans()  # the second engine's own provider got the spans
    [run] = second.spans("hephaestus.run")
    assert run.context.trace_id == caller_context.trace_id
    assert run.parent.span_id == caller_context.span_id
    assert run.attributes["hephaestus.run.outcome"] == "completed"
    for step in second.spans("hephaestus.step"):
        assert step.context.trace_id == caller_context.trace_id
        assert step.parent.span_id == run.context.span_id
    first.provider.shutdown()
    second.provider.shutdown()


async def _stored(db: Path, iid: str) -> Any:
    async with SQLiteStorage(db) as storage:
        [found] = await storage.query(id=iid)
        return found


class _Refusing(MemoryStorage):
    """Refuses every lease renewal once ``refuse`` is set: the engine loses its runs."""

    refuse = False

    async def renew(self, owner: str, leases: Any, *, now: Any, ttl: float) -> Any:
        if self.refuse:
            await trio.lowlevel.checkpoint()
            return []
        return await super().renew(owner, leases, now=now, ttl=ttl)


async def test_lease_loss_ends_the_run_span(autojump_clock: Any, tracing: Tracing):
    storage = _Refusing()
    async with open_engine(storage, ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        await e.start_instance(Napping, {}, id="napping::lost")
        await trio.sleep(1)
        storage.refuse = True
        await trio.sleep(6)  # the next heartbeat finds the lease gone
        [run] = tracing.spans("hephaestus.run")
        assert run.attributes["hephaestus.run.outcome"] == "lease_lost"
        assert run.attributes["hephaestus.run.status"] == "running"
        assert run.status.status_code is StatusCode.UNSET
        [step] = tracing.spans("hephaestus.step")
        assert step.attributes["hephaestus.step.outcome"] == "interrupted"


async def test_a_loop_crash_and_a_storage_fault_are_errors_on_the_run_span(
    autojump_clock: Any, tracing: Tracing, monkeypatch: pytest.MonkeyPatch
):
    original = Incarnation._on_step_finished
    crashes = [0]

    async def buggy(self: Incarnation, message: Any) -> None:
        if crashes[0] == 0:
            crashes[0] += 1
            raise RuntimeError("loop bug")
        await original(self, message)

    monkeypatch.setattr(Incarnation, "_on_step_finished", buggy)

    class Faulty(MemoryStorage):
        faults = 0

        async def write(self, lease: Any, instance: Any, **kwargs: Any) -> Any:
            if instance.status.value == "completed" and self.faults == 0:
                self.faults += 1
                raise OSError("disk full")
            return await super().write(lease, instance, **kwargs)

    async with open_engine(Faulty(), ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        final = await e.wait(await e.start_instance(Linear, {}, id="linear::crash"))
    assert final.status.value == "completed"
    outcomes = [s.attributes["hephaestus.run.outcome"] for s in tracing.spans("hephaestus.run")]
    assert outcomes == ["crashed", "storage_fault", "completed"]
    crashed, faulted, _ = tracing.spans("hephaestus.run")
    assert crashed.status.status_code is StatusCode.ERROR
    assert crashed.status.description == "crashed: RuntimeError('loop bug')"
    assert exception_events(crashed) == [
        {
            "exception.type": "RuntimeError",
            "exception.message": "loop bug",
        }
    ]
    assert faulted.status.status_code is StatusCode.ERROR
    [fault] = exception_events(faulted)
    assert fault["exception.type"] == "hephaestus_trio.runtime._incarnation.StorageFault"
    assert "disk full" in fault["exception.message"]


async def test_cancel_ends_the_run_span_as_cancelled(autojump_clock: Any, tracing: Tracing):
    async with open_engine(workflows=ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        parked = await e.start_instance(Gated, {}, id="gated::cancel")
        busy = await e.start_instance(Napping, {}, id="napping::cancel")
        await trio.sleep(1)
        await e.cancel(parked)
        await e.cancel(busy)
    runs = [
        (s.attributes["hephaestus.instance.id"], s.attributes["hephaestus.run.outcome"])
        for s in tracing.spans("hephaestus.run")
    ]
    assert sorted(runs) == [
        ("gated::cancel", "cancelled"),
        ("gated::cancel", "hibernated"),
        ("napping::cancel", "cancelled"),
    ]
    [nap] = [
        s for s in tracing.spans("hephaestus.step") if s.attributes["hephaestus.step.key"] == "nap"
    ]
    assert nap.attributes["hephaestus.step.outcome"] == "interrupted"


async def test_trace_context_is_captured_only_when_a_tracing_handler_asks(
    autojump_clock: Any, tracing: Tracing
):
    async with open_engine(workflows=ALL) as engine:
        with tracing.tracer.start_as_current_span("caller"):
            iid = await engine.start_instance(Gated, {}, id="gated::plain")
            await trio.sleep(1)
            await engine.resume(iid, "open")
        assert (await engine.wait(iid)).trace_context is None
    storage = MemoryStorage()
    async with open_engine(storage, ALL, handlers=[OpenTelemetryHandler(tracing.provider)]) as e:
        with tracing.tracer.start_as_current_span("caller") as caller:
            iid = await e.start_instance(Gated, {}, id="gated::traced")
            await trio.sleep(1)
            captured = {}
            original = storage.add_wakeup

            async def spy(wakeup: Any, **kwargs: Any) -> Any:
                captured["resume"] = wakeup.trace_context
                return await original(wakeup, **kwargs)

            storage.add_wakeup = spy  # type: ignore[method-assign]
            await e.resume(iid, "open")
        final = await e.wait(iid)
    context = caller.get_span_context()
    header = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert final.trace_context == {"traceparent": header}
    assert captured["resume"] == {"traceparent": header}


def test_none_means_the_global_tracer_provider() -> None:
    code = textwrap.dedent(
        """
        import trio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from hephaestus_trio import Done, OpenTelemetryHandler, Unique, Workflow, open_engine

        class Quick(Workflow, unique=Unique(key="quick")):
            start_at = Done
            transitions = {}

        handler = OpenTelemetryHandler()  # created before the global provider is set
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        async def main():
            async with open_engine(workflows=[Quick], handlers=[handler]) as engine:
                await engine.wait(await engine.start_instance(Quick, id="quick::a"))

        trio.run(main)
        print(sorted(s.name for s in exporter.get_finished_spans()))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['hephaestus.run', 'hephaestus.step']"


async def test_a_handler_attached_mid_run_traces_the_rest_and_stays_attached(
    autojump_clock: Any, tracing: Tracing
):
    handler = OpenTelemetryHandler(tracing.provider)
    async with open_engine(workflows=ALL) as engine:
        iid = await engine.start_instance(Linear, {}, id="linear::late")
        await trio.sleep(0.25)  # flaky's first attempt failed; it retries at 0.5 s
        engine.subscribe(handler)
        await engine.wait(iid)
        await engine.wait(await engine.start_instance(Linear, {}, id="linear::after"))
    late = [s for s in tracing.spans() if s.attributes["hephaestus.instance.id"] == "linear::late"]
    assert [(s.name, s.attributes.get("hephaestus.step.key")) for s in late] == [
        ("hephaestus.step", "flaky"),
        ("hephaestus.step", "slow"),
        ("hephaestus.step", "done"),
    ]
    assert all(s.parent is None for s in late)  # no run span to be children of
    after = [
        s.name for s in tracing.spans() if s.attributes["hephaestus.instance.id"] != "linear::late"
    ]
    assert after.count("hephaestus.run") == 1  # still attached: the next run is traced


async def test_the_give_up_after_the_restart_budget_is_a_failed_run_span(
    autojump_clock: Any, tracing: Tracing, monkeypatch: pytest.MonkeyPatch
):
    async def buggy(self: Incarnation, message: Any) -> None:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("loop bug")

    monkeypatch.setattr(Incarnation, "_on_step_finished", buggy)
    async with open_engine(
        workflows=ALL,
        handlers=[OpenTelemetryHandler(tracing.provider)],
        restart_policy=RestartPolicy(max_restarts=0),
    ) as engine:
        final = await engine.wait(await engine.start_instance(Quick, {}, id="quick::poison"))
    assert final.status.value == "failed"
    crashed, gave_up = tracing.spans("hephaestus.run")
    assert crashed.attributes["hephaestus.run.outcome"] == "crashed"
    assert dict(gave_up.attributes) == {
        **ids("quick::poison", final.run_id, Quick.name),
        "hephaestus.run.outcome": "failed",
        "hephaestus.run.status": "failed",
        "hephaestus.error.kind": "restart_limit",
    }
    assert gave_up.status.status_code is StatusCode.ERROR
    [event] = exception_events(gave_up)
    assert event["exception.type"] == "RuntimeError"


async def test_a_run_refused_for_an_edited_definition_is_an_error_span(
    autojump_clock: Any, tracing: Tracing
):
    from hephaestus_trio import Done, Unique, Workflow

    from .flows import Nap, Slow

    class Before(Workflow, unique=Unique(key="edited"), name="edited", version=1):
        start_at = Nap
        transitions = {(Nap, "ok"): Done}

    class After(Workflow, unique=Unique(key="edited"), name="edited", version=1):
        start_at = Nap
        transitions = {(Nap, "ok"): Slow, (Slow, "ok"): Done}

    storage = MemoryStorage()
    handler = OpenTelemetryHandler(tracing.provider)
    async with open_engine(storage, [Before], handlers=[handler]) as engine:
        await engine.start_instance(Before, {}, id="edited::a")
        await trio.sleep(1)
    async with open_engine(storage, [After], handlers=[handler]):
        await trio.sleep(1)
    stopped, refused = tracing.spans("hephaestus.run")
    assert stopped.attributes["hephaestus.run.outcome"] == "engine_stopped"
    assert refused.attributes["hephaestus.run.outcome"] == "refused"
    assert refused.attributes["hephaestus.run.status"] == "running"
    assert refused.status.status_code is StatusCode.ERROR
    [event] = exception_events(refused)
    assert event["exception.type"] == "hephaestus_trio._errors.DefinitionMismatch"
    assert "added step 'slow'" in event["exception.message"]
