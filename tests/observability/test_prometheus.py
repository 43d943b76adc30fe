"""Prometheus metrics: every counter, histogram and gauge, with its labels and values."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import prometheus_client
import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from hephaestus_trio import (
    METRICS,
    ConfigurationError,
    MemoryStorage,
    OpenTelemetryHandler,
    PrometheusHandler,
    open_engine,
    trio_wall_clock,
)
from hephaestus_trio.runtime._incarnation import Incarnation

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


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_run_counters_step_attempts_and_durations(
    autojump_clock: Any, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
):
    original = Incarnation._on_step_finished
    crashes = [0]

    async def buggy(self: Incarnation, message: Any) -> None:
        if self.state.id == "quick::restart" and crashes[0] == 0:
            crashes[0] += 1
            raise RuntimeError("loop bug")
        await original(self, message)

    monkeypatch.setattr(Incarnation, "_on_step_finished", buggy)
    async with open_engine(workflows=ALL, handlers=[PrometheusHandler(registry)]) as engine:
        await engine.wait(await engine.start_instance(Linear, {}, id="linear::a"))
        await engine.wait(await engine.start_instance(Refusing, {}, id="refusing::a"))
        await engine.wait(await engine.start_instance(Crashing, {}, id="crashing::a"))
        await engine.wait(await engine.start_instance(TimingOut, {}, id="timing::a"))
        await engine.wait(await engine.start_instance(Quick, {}, id="quick::restart"))
        gated = await engine.start_instance(Gated, {}, id="gated::a")
        await trio.sleep(1)
        await engine.resume(gated, "open")
        await engine.wait(gated)
        cancelled = await engine.start_instance(Gated, {}, id="gated::b")
        await trio.sleep(1)
        await engine.cancel(cancelled)

    def runs(kind: str, workflow: type) -> float | None:
        return value(registry, f"hephaestus_runs_{kind}_total", workflow=workflow.name)

    assert runs("started", Linear) == 1.0
    assert runs("started", Gated) == 2.0
    assert runs("completed", Linear) == 1.0
    assert runs("completed", Gated) == 1.0
    assert runs("completed", Quick) == 1.0
    assert runs("failed", Refusing) == 1.0
    assert runs("failed", Crashing) == 1.0
    assert runs("failed", TimingOut) == 1.0
    assert runs("failed", Linear) is None  # never failed: no sample
    assert runs("cancelled", Gated) == 1.0
    assert value(registry, "hephaestus_run_restarts_total", workflow=Quick.name) == 1.0

    def attempts(workflow: type, step: str, outcome: str) -> float | None:
        return value(
            registry,
            "hephaestus_step_attempts_total",
            workflow=workflow.name,
            step=step,
            outcome=outcome,
        )

    assert attempts(Linear, "flaky", "raised") == 1.0
    assert attempts(Linear, "flaky", "completed") == 1.0
    assert attempts(Linear, "slow", "completed") == 1.0
    assert attempts(Linear, "done", "completed") == 1.0
    assert attempts(Refusing, "refuse", "failed") == 1.0
    assert attempts(Crashing, "broken", "raised") == 1.0
    assert attempts(TimingOut, "sluggish", "timed_out") == 1.0
    assert attempts(Gated, "gate", "parked") == 2.0
    assert attempts(Gated, "done", "completed") == 1.0

    def step_duration(workflow: type, step: str, suffix: str, **labels: str) -> float | None:
        return value(
            registry,
            f"hephaestus_step_duration_seconds_{suffix}",
            workflow=workflow.name,
            step=step,
            **labels,
        )

    assert step_duration(Linear, "slow", "count") == 1.0
    assert step_duration(Linear, "slow", "sum") == 1.5
    assert step_duration(Linear, "slow", "bucket", le="1.0") == 0.0
    assert step_duration(Linear, "slow", "bucket", le="2.5") == 1.0
    assert step_duration(Linear, "flaky", "count") == 2.0  # both attempts
    assert step_duration(Linear, "flaky", "sum") == 0.0
    assert step_duration(TimingOut, "sluggish", "sum") == 1.0

    def run_duration(workflow: type, status: str, suffix: str) -> float | None:
        return value(
            registry,
            f"hephaestus_run_duration_seconds_{suffix}",
            workflow=workflow.name,
            status=status,
        )

    # flaky fails, 0.5 s backoff, flaky again, slow takes 1.5 s.
    assert run_duration(Linear, "completed", "sum") == 2.0
    assert run_duration(Linear, "completed", "count") == 1.0
    assert run_duration(TimingOut, "failed", "sum") == 1.0
    assert run_duration(Gated, "completed", "sum") == 1.0
    assert run_duration(Gated, "cancelled", "sum") == 1.0


async def test_resume_latency_from_recording_to_applying(
    autojump_clock: Any, registry: CollectorRegistry
):
    async with open_engine(workflows=ALL, handlers=[PrometheusHandler(registry)]) as engine:
        early = await engine.start_instance(EarlyResume, {}, id="early::a")
        await trio.sleep(1)
        await engine.resume(early, "go")  # its step parks at t = 3
        await engine.wait(early)
        gated = await engine.start_instance(Gated, {}, id="gated::a")
        await trio.sleep(1)
        await engine.resume(gated, "open")  # parked: applied at once
        await engine.wait(gated)
    name = "hephaestus_resume_latency_seconds"
    assert value(registry, f"{name}_sum", workflow=EarlyResume.name) == pytest.approx(2.0)
    assert value(registry, f"{name}_count", workflow=EarlyResume.name) == 1.0
    assert value(registry, f"{name}_bucket", workflow=EarlyResume.name, le="1.0") == 0.0
    assert value(registry, f"{name}_bucket", workflow=EarlyResume.name, le="5.0") == 1.0
    assert value(registry, f"{name}_sum", workflow=Gated.name) == 0.0
    assert value(registry, f"{name}_count", workflow=Gated.name) == 1.0


async def test_timer_lateness_counts_the_time_nobody_was_there_to_fire_it(
    autojump_clock: Any, registry: CollectorRegistry
):
    storage = MemoryStorage()
    clock = trio_wall_clock(EPOCH)
    handler = PrometheusHandler(registry)
    async with open_engine(storage, ALL, handlers=[handler], wall_clock=clock) as engine:
        on_time = await engine.start_instance(Timed, {}, id="timed::on-time")
        await engine.wait(on_time)  # fires at 5 s, applied at once
        late = await engine.start_instance(Timed, {}, id="timed::late")
        await trio.sleep(1)
    await trio.sleep(20)  # no engine while the timer is due
    async with open_engine(storage, ALL, handlers=[handler], wall_clock=clock) as engine:
        await engine.wait(late)
    name = "hephaestus_timer_lateness_seconds"
    assert value(registry, f"{name}_count", workflow=Timed.name) == 2.0
    # Due at 5 + 5 = 10 s after the second start; applied when the engine reopened.
    assert value(registry, f"{name}_sum", workflow=Timed.name) == pytest.approx(16.0)
    assert value(registry, f"{name}_bucket", workflow=Timed.name, le="0.001") == 1.0
    assert value(registry, f"{name}_bucket", workflow=Timed.name, le="60.0") == 2.0


class _Slow(MemoryStorage):
    """Writes take 0.25 s; releases take 1 s while ``slow_release`` is set."""

    slow_release = False

    async def write(self, lease: Any, instance: Any, **kwargs: Any) -> Any:
        await trio.sleep(0.25)
        return await super().write(lease, instance, **kwargs)

    async def release(self, lease: Any, **kwargs: Any) -> Any:
        if self.slow_release:
            await trio.sleep(1)
        return await super().release(lease, **kwargs)


async def test_storage_commit_latency_times_each_fenced_write(
    autojump_clock: Any, registry: CollectorRegistry
):
    async with open_engine(_Slow(), ALL, handlers=[PrometheusHandler(registry)]) as engine:
        await engine.wait(await engine.start_instance(Quick, {}, id="quick::a"))
    name = "hephaestus_storage_commit_seconds"
    # Two writes: pending -> running, then done's completion.
    assert value(registry, f"{name}_count", workflow=Quick.name) == 2.0
    assert value(registry, f"{name}_sum", workflow=Quick.name) == 0.5
    assert value(registry, f"{name}_bucket", workflow=Quick.name, le="0.1") == 0.0
    assert value(registry, f"{name}_bucket", workflow=Quick.name, le="0.25") == 2.0


def gauges(registry: CollectorRegistry) -> dict[str, float | None]:
    return {
        name: value(registry, name)
        for name in (
            "hephaestus_live_runs",
            "hephaestus_running_runs",
            "hephaestus_parked_runs",
            "hephaestus_owned_leases",
        )
    }


async def test_gauges_are_read_from_every_attached_engine_at_scrape_time(
    autojump_clock: Any, registry: CollectorRegistry
):
    storage = _Slow()
    zero = dict.fromkeys(gauges(registry), 0.0)
    assert gauges(registry) == {k: None for k in zero}  # no handler yet: no metrics
    first, second = PrometheusHandler(registry), PrometheusHandler(registry)  # shared metrics
    async with (
        open_engine(storage, ALL, handlers=[first]) as a,
        open_engine(storage, ALL) as b,
    ):
        assert gauges(registry) == zero
        unsubscribe = b.subscribe(second)
        await a.start_instance(Napping, {}, id="napping::a")
        await b.start_instance(Napping, {}, id="napping::b")
        await trio.sleep(1)
        assert gauges(registry) == {
            "hephaestus_live_runs": 2.0,
            "hephaestus_running_runs": 2.0,
            "hephaestus_parked_runs": 0.0,
            "hephaestus_owned_leases": 2.0,
        }
        storage.slow_release = True
        await a.start_instance(Gated, {}, id="gated::a")
        await trio.sleep(0.75)  # parked (two 0.25 s writes), releasing its lease for 1 s
        assert gauges(registry) == {
            "hephaestus_live_runs": 3.0,
            "hephaestus_running_runs": 2.0,
            "hephaestus_parked_runs": 1.0,
            "hephaestus_owned_leases": 2.0,  # the parked run's lease is being released
        }
        await trio.sleep(1)  # hibernated: no task, no lease
        assert gauges(registry)["hephaestus_live_runs"] == 2.0
        assert gauges(registry)["hephaestus_parked_runs"] == 0.0
        unsubscribe()  # b's runs no longer count
        assert gauges(registry)["hephaestus_live_runs"] == 1.0
        assert gauges(registry)["hephaestus_owned_leases"] == 1.0
    assert gauges(registry) == zero  # a closed engine is dropped


def test_every_exported_metric_is_documented_with_its_labels(registry: CollectorRegistry):
    PrometheusHandler(registry)
    found: dict[str, tuple[str, tuple[str, ...]]] = {}
    for family in registry.collect():
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, ())
    for name, (kind, labels) in METRICS.items():
        collector = registry._names_to_collectors.get(name.removesuffix("_total"))
        assert collector is not None, name
        if kind != "gauge":
            assert tuple(collector._labelnames) == labels, name
    assert {n: t for n, (t, _) in found.items()} == {n: t for n, (t, _) in METRICS.items()}


def test_none_is_the_default_registry_and_handlers_share_one_registrys_metrics():
    handler = PrometheusHandler()
    assert handler.registry is prometheus_client.REGISTRY
    assert PrometheusHandler(None).registry is prometheus_client.REGISTRY  # no duplicate error


def test_bad_arguments_raise_configuration_errors():
    with pytest.raises(ConfigurationError, match=r"registry=\.\.\.\) must be a .*got 'nope'"):
        PrometheusHandler("nope")
    with pytest.raises(ConfigurationError, match=r"tracer_provider=\.\.\.\) must be .*got 3"):
        OpenTelemetryHandler(3)
    assert issubclass(ConfigurationError, TypeError)
