"""What tracing and metrics cost: the throughput workload of row (a), with and without them.

Throughput here is orders per second of *CPU time* of this process (all its
threads: ``time.process_time``), not of wall time: a handler's cost is CPU
work, and CPU time is not inflated when other processes share the machine,
which would swamp a difference of a few percent in wall time.

Three comparisons, each interleaved in the same run (the median of adjacent pairs):

- (g) *disabled*: the engine as shipped, no tracing or metrics handler, against
  the same engine with its tracing and metrics hooks patched out (no
  ``incarnation.*`` announcements, no trace-context capture). The ratio shows
  what the hooks cost when nobody uses them: it should be 1 within noise.
- (h) *OpenTelemetry on*: an ``OpenTelemetryHandler`` on an SDK tracer provider
  whose exporter drops every span (the cost of building and ending spans,
  not of shipping them), against no handler.
- (i) *Prometheus on*: a ``PrometheusHandler`` on a fresh registry, against
  no handler.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import trio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from prometheus_client import CollectorRegistry

from hephaestus_trio import OpenTelemetryHandler, PrometheusHandler, open_engine
from hephaestus_trio.observability import EventBus
from hephaestus_trio.runtime._incarnation import Incarnation

from ._flows import BenchOrder
from ._measure import _Countdown, _storage

__all__ = ["hooks_removed", "observed_throughput"]


class _Dropping(SpanExporter):
    """Accepts every span and keeps none."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def _tracing() -> OpenTelemetryHandler:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(_Dropping()))
    return OpenTelemetryHandler(provider)


HANDLERS: dict[str, Callable[[], list[Any]]] = {
    "none": list,
    "otel": lambda: [_tracing()],
    "prometheus": lambda: [PrometheusHandler(CollectorRegistry())],
}


@contextlib.contextmanager
def hooks_removed() -> Iterator[None]:
    """The engine without its tracing and metrics hooks: what it cost before them."""
    saved = (
        Incarnation._announce_start,
        Incarnation._announce_stop,
        EventBus.capture_trace_context,
    )

    Incarnation._announce_start = lambda self, inst: None  # type: ignore[method-assign]
    Incarnation._announce_stop = lambda self, exc: None  # type: ignore[method-assign]
    EventBus.capture_trace_context = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        (
            Incarnation._announce_start,
            Incarnation._announce_stop,
            EventBus.capture_trace_context,
        ) = saved  # type: ignore[method-assign]


async def observed_throughput(kind: str, count: int, tmp: Path, handlers: str) -> float:
    """Orders per CPU second, as row (a), with the ``handlers`` named in ``HANDLERS`` attached."""
    countdown = _Countdown(count)
    storage = _storage(kind, tmp, f"observed-{handlers}")
    async with open_engine(storage, [BenchOrder], handlers=HANDLERS[handlers]()) as engine:
        engine.subscribe(countdown, events=["workflow.stop"])
        started = time.process_time()
        async with trio.open_nursery() as nursery:
            for i in range(count):
                start = functools.partial(
                    engine.start_instance, BenchOrder, {"i": i}, id=f"order::{i}"
                )
                nursery.start_soon(start)
        await countdown.done.wait()
        return count / (time.process_time() - started)


def compare(
    kind: str, count: int, tmp: Path, repeats: int, engine_side: str, baseline_side: str
) -> tuple[float, float]:
    """``repeats`` adjacent pairs of runs, one per side; the pair with the median ratio.

    A side is a ``HANDLERS`` name, or ``"unhooked"``: no handler, hooks removed.
    The two runs of a pair run back to back (who goes first alternates), so
    they share the machine's state; the median pair is robust to a pair that a
    neighbour's burst of work disturbed. Returns that pair's (engine, baseline).
    """

    def one(side: str) -> float:
        if side == "unhooked":
            with hooks_removed():
                return trio.run(observed_throughput, kind, count, tmp, "none")
        return trio.run(observed_throughput, kind, count, tmp, side)

    pairs: list[tuple[float, float]] = []
    for repeat in range(repeats):
        if repeat % 2 == 0:
            engine = one(engine_side)
            baseline = one(baseline_side)
        else:
            baseline = one(baseline_side)
            engine = one(engine_side)
        pairs.append((engine, baseline))
    pairs.sort(key=lambda pair: pair[0] / pair[1])
    return pairs[len(pairs) // 2]
