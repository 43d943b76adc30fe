"""Prometheus metrics from the engine's events (extra ``prometheus``: ``prometheus-client``).

Counters and histograms are updated by the events as they happen; gauges
(runs held, leases) are read from every attached engine at scrape time by a
custom collector, so they never drift. Labels are bounded: the workflow's
registry name, a step key, an outcome or a status; never an id.

One set of metrics exists per ``CollectorRegistry``: several handlers on the
same registry (one per engine, say) share it instead of failing on duplicate
names, and the gauges sum over every engine attached to it.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .._errors import ConfigurationError, MissingExtra
from ._events import Event

__all__ = ["METRICS", "PrometheusHandler"]

GaugeReader = Callable[[], Mapping[str, float] | None]

STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
RUN_BUCKETS = (0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 14400, 86400, 604800)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60, 300, 3600)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "hephaestus_runs_started_total": ("counter", ("workflow",)),
    "hephaestus_runs_completed_total": ("counter", ("workflow",)),
    "hephaestus_runs_failed_total": ("counter", ("workflow",)),
    "hephaestus_runs_cancelled_total": ("counter", ("workflow",)),
    "hephaestus_run_restarts_total": ("counter", ("workflow",)),
    "hephaestus_step_attempts_total": ("counter", ("workflow", "step", "outcome")),
    "hephaestus_step_duration_seconds": ("histogram", ("workflow", "step")),
    "hephaestus_run_duration_seconds": ("histogram", ("workflow", "status")),
    "hephaestus_resume_latency_seconds": ("histogram", ("workflow",)),
    "hephaestus_timer_lateness_seconds": ("histogram", ("workflow",)),
    "hephaestus_storage_commit_seconds": ("histogram", ("workflow",)),
    "hephaestus_live_runs": ("gauge", ()),
    "hephaestus_running_runs": ("gauge", ()),
    "hephaestus_parked_runs": ("gauge", ()),
    "hephaestus_owned_leases": ("gauge", ()),
}
"""Every metric the handler exports: name -> (type, label names)."""

_GAUGES = {
    "hephaestus_live_runs": ("live", "Runs the attached engines drive now (a task each)."),
    "hephaestus_running_runs": (
        "running",
        "Runs the attached engines drive that have a step to execute.",
    ),
    "hephaestus_parked_runs": (
        "parked",
        "Runs the attached engines hold whose every active step is parked.",
    ),
    "hephaestus_owned_leases": ("leases", "Run leases the attached engines hold."),
}
_OUTCOME_OF_KIND = {"TooSlowError": "timed_out"}
_FINISHED = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}


class _GaugeCollector:
    """Reads the gauges of every attached engine when the registry is scraped."""

    def __init__(self, family: Any) -> None:
        self._family = family
        self._readers: dict[int, GaugeReader] = {}
        self._lock = threading.Lock()
        self._next = 0

    def attach(self, read: GaugeReader) -> Callable[[], None]:
        with self._lock:
            token = self._next
            self._next += 1
            self._readers[token] = read

        def detach() -> None:
            with self._lock:
                self._readers.pop(token, None)

        return detach

    def _families(self, totals: Mapping[str, float]) -> Iterator[Any]:
        for name, (key, help_text) in _GAUGES.items():
            yield self._family(name, help_text, value=totals.get(key, 0.0))

    def describe(self) -> Iterator[Any]:
        return self._families({})

    def collect(self) -> Iterator[Any]:
        with self._lock:
            readers = list(self._readers.items())
        totals = dict.fromkeys(("live", "running", "parked", "leases"), 0.0)
        for token, read in readers:
            values = read()
            if values is None:  # the engine closed: forget it
                with self._lock:
                    self._readers.pop(token, None)
                continue
            for key in totals:
                totals[key] += float(values.get(key, 0.0))
        return self._families(totals)


class _Metrics:
    """The metric objects of one registry."""

    def __init__(self, client: Any, registry: Any) -> None:
        def counter(name: str, help_text: str) -> Any:
            labels = METRICS[name][1]
            return client.Counter(name.removesuffix("_total"), help_text, labels, registry=registry)

        def histogram(name: str, help_text: str, buckets: tuple[float, ...]) -> Any:
            labels = METRICS[name][1]
            return client.Histogram(name, help_text, labels, registry=registry, buckets=buckets)

        self.started = counter("hephaestus_runs_started_total", "Runs started.")
        self.finished = {
            "completed": counter("hephaestus_runs_completed_total", "Runs that completed."),
            "failed": counter("hephaestus_runs_failed_total", "Runs that failed."),
            "cancelled": counter("hephaestus_runs_cancelled_total", "Runs that were cancelled."),
        }
        self.restarts = counter(
            "hephaestus_run_restarts_total", "Restarts of a run's loop after a crash."
        )
        self.attempts = counter(
            "hephaestus_step_attempts_total", "Step attempts, by how they ended."
        )
        self.step_duration = histogram(
            "hephaestus_step_duration_seconds", "Duration of one step attempt.", STEP_BUCKETS
        )
        self.run_duration = histogram(
            "hephaestus_run_duration_seconds",
            "Time from a run's creation to its terminal state.",
            RUN_BUCKETS,
        )
        self.resume_latency = histogram(
            "hephaestus_resume_latency_seconds",
            "Time from recording a resume to applying it to its run.",
            WAIT_BUCKETS,
        )
        self.timer_lateness = histogram(
            "hephaestus_timer_lateness_seconds",
            "Time from a timer's due time to its application.",
            WAIT_BUCKETS,
        )
        self.commit = histogram(
            "hephaestus_storage_commit_seconds",
            "Duration of one fenced write of a run's state.",
            COMMIT_BUCKETS,
        )
        from prometheus_client.core import GaugeMetricFamily

        self.gauges = _GaugeCollector(GaugeMetricFamily)
        registry.register(self.gauges)


_BY_REGISTRY: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()
_BY_REGISTRY_LOCK = threading.Lock()


class PrometheusHandler:
    """Counters, histograms and gauges of runs and steps in a ``CollectorRegistry``.

    ``registry`` defaults to ``prometheus_client``'s default ``REGISTRY``
    (``None``), the one ``generate_latest()`` and ``start_http_server`` serve.
    Attach it with ``open_engine(handlers=[...])`` or ``engine.subscribe``; the
    engines it is attached to feed its gauges.

    Synopsis::

        registry = CollectorRegistry()
        async with open_engine(workflows=[OrderFlow], handlers=[PrometheusHandler(registry)]):
            ...
        text = generate_latest(registry)

    Raises:
        MissingExtra: ``prometheus-client`` is not installed (the ``prometheus`` extra).
        ConfigurationError: ``registry`` is not a ``CollectorRegistry``.
    """

    def __init__(self, registry: Any = None) -> None:
        try:
            import prometheus_client
        except ImportError as exc:
            raise MissingExtra("PrometheusHandler", "prometheus", "prometheus-client") from exc
        chosen = registry if registry is not None else prometheus_client.REGISTRY
        if not isinstance(chosen, prometheus_client.CollectorRegistry):
            raise ConfigurationError(
                f"PrometheusHandler(registry=...) must be a prometheus_client.CollectorRegistry "
                f"or None (the default registry), got {chosen!r}"
            )
        self.registry = chosen
        with _BY_REGISTRY_LOCK:
            metrics = _BY_REGISTRY.get(chosen)
            if metrics is None:
                metrics = _BY_REGISTRY[chosen] = _Metrics(prometheus_client, chosen)
        self._m = metrics
        self._dispatch: dict[str, Callable[[Event, str], None]] = {
            "workflow.start": self._started,
            "workflow.stop": self._stopped,
            "instance.restart": self._restarted,
            "step.stop": self._step_stop,
            "step.async": self._step_parked,
            "step.exception": self._step_exception,
            "step.resume": self._resumed,
            "storage.commit": self._committed,
        }

    def attach_engine(self, engine_id: str, read_gauges: GaugeReader) -> Callable[[], None]:
        """Read ``read_gauges`` at every scrape until detached (``Engine.subscribe`` calls it).

        Returns the detach callable; a reader answering ``None`` (its engine
        closed) is dropped at the next scrape.
        """
        return self._m.gauges.attach(read_gauges)

    def __call__(self, event: Event) -> None:
        """Update the counters and histograms ``event`` feeds (other events are ignored)."""
        handle = self._dispatch.get(event.name)
        if handle is None:
            return
        workflow = event.metadata.get("workflow")
        if workflow is not None:
            handle(event, str(workflow))

    def _started(self, event: Event, workflow: str) -> None:
        self._m.started.labels(workflow).inc()

    def _stopped(self, event: Event, workflow: str) -> None:
        status = str(event.metadata.get("status"))
        counter = self._m.finished.get(_FINISHED.get(status, ""))
        if counter is not None:
            counter.labels(workflow).inc()
        duration = event.measurements.get("duration")
        if duration is not None:
            self._m.run_duration.labels(workflow, status).observe(duration)

    def _restarted(self, event: Event, workflow: str) -> None:
        self._m.restarts.labels(workflow).inc()

    def _attempt(self, event: Event, workflow: str, outcome: str) -> None:
        step = str(event.metadata.get("step"))
        self._m.attempts.labels(workflow, step, outcome).inc()
        duration = event.measurements.get("duration")
        if duration is not None:
            self._m.step_duration.labels(workflow, step).observe(duration)

    def _step_stop(self, event: Event, workflow: str) -> None:
        outcome = "failed" if event.metadata.get("failed") else "completed"
        self._attempt(event, workflow, outcome)

    def _step_parked(self, event: Event, workflow: str) -> None:
        self._attempt(event, workflow, "parked")

    def _step_exception(self, event: Event, workflow: str) -> None:
        kind = str(event.metadata.get("kind"))
        self._attempt(event, workflow, _OUTCOME_OF_KIND.get(kind, "raised"))

    def _resumed(self, event: Event, workflow: str) -> None:
        measured = event.measurements
        if "latency" in measured:
            self._m.resume_latency.labels(workflow).observe(measured["latency"])
        if "lateness" in measured:
            self._m.timer_lateness.labels(workflow).observe(measured["lateness"])

    def _committed(self, event: Event, workflow: str) -> None:
        duration = event.measurements.get("duration")
        if duration is not None:
            self._m.commit.labels(workflow).observe(duration)
