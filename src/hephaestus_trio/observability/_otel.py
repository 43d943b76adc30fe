"""OpenTelemetry spans for runs and step attempts (extra ``otel``: ``opentelemetry-api``).

The handler turns the engine's events into spans; it never imports
``opentelemetry`` until it is created, so ``import hephaestus_trio`` works
without the extra and an engine without this handler pays nothing.

- one ``hephaestus.run`` span per *incarnation* of a run: from the moment an
  engine starts driving it (after its start or claim) to its hibernation, its
  terminal state, the loss of its lease or the engine's stop;
- one ``hephaestus.step`` span per step attempt, a child of the run span;
- one ``hephaestus.resume`` span per applied resume or timer, in the trace of
  the code that called ``resume`` (linked to the run span), else a child of it.

The trace context (W3C ``traceparent``/``tracestate``, through the global
propagator) of the code that started the run is stored with the run, so every
incarnation's span, in any engine, even after a restart or a takeover, is a
child of the caller's span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import ConfigurationError, MissingExtra
from .._version import __version__
from ._events import Event

__all__ = [
    "SPAN_ATTRIBUTES",
    "SPAN_NAMES",
    "OpenTelemetryHandler",
]

SPAN_NAMES: tuple[str, ...] = ("hephaestus.run", "hephaestus.step", "hephaestus.resume")
"""Every span name the handler creates."""

SPAN_ATTRIBUTES: tuple[str, ...] = (
    "hephaestus.instance.id",
    "hephaestus.run.id",
    "hephaestus.workflow.name",
    "hephaestus.workflow.version",
    "hephaestus.run.outcome",
    "hephaestus.run.status",
    "hephaestus.error.kind",
    "hephaestus.step.key",
    "hephaestus.step.attempt",
    "hephaestus.step.event",
    "hephaestus.step.outcome",
    "hephaestus.step.will_retry",
    "hephaestus.wakeup.kind",
)
"""Every span attribute the handler sets (documented in ``docs/observability.md``)."""

_OUTCOME_OF_KIND = {"TooSlowError": "timed_out"}


def _run_attributes(meta: Mapping[str, Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for key, name in (
        ("instance_id", "hephaestus.instance.id"),
        ("run_id", "hephaestus.run.id"),
        ("workflow", "hephaestus.workflow.name"),
        ("workflow_version", "hephaestus.workflow.version"),
    ):
        value = meta.get(key)
        if value is not None:
            attributes[name] = value
    return attributes


class _RunSpans:
    """The open spans of one run in this process: its incarnation and its attempts.

    ``span`` is ``None`` when the handler was attached after the incarnation
    started: its attempts are then spans of their own (roots), never lost.
    """

    def __init__(self, span: Any) -> None:
        self.span = span
        self.steps: dict[str, Any] = {}


class OpenTelemetryHandler:
    """Spans for every run incarnation, step attempt and applied wakeup.

    ``tracer_provider`` defaults to the global one (``None``; spans follow
    ``opentelemetry.trace.set_tracer_provider`` even when it is set later).
    Attach it with ``open_engine(handlers=[...])`` or ``engine.subscribe``.

    Synopsis::

        async with open_engine(workflows=[OrderFlow], handlers=[OpenTelemetryHandler()]):
            ...

    Raises:
        MissingExtra: ``opentelemetry-api`` is not installed (the ``otel`` extra).
        ConfigurationError: ``tracer_provider`` is not a tracer provider.
    """

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import context, propagate, trace
        except ImportError as exc:
            raise MissingExtra("OpenTelemetryHandler", "otel", "opentelemetry-api") from exc
        if tracer_provider is not None and not callable(
            getattr(tracer_provider, "get_tracer", None)
        ):
            raise ConfigurationError(
                "OpenTelemetryHandler(tracer_provider=...) must be an opentelemetry "
                f"TracerProvider or None (the global one), got {tracer_provider!r}"
            )
        self._trace = trace
        self._propagate = propagate
        self._context = context
        self._tracer = trace.get_tracer(
            "hephaestus_trio", __version__, tracer_provider=tracer_provider
        )
        self._runs: dict[str, _RunSpans] = {}
        self._dispatch = {
            "incarnation.start": self._incarnation_start,
            "incarnation.stop": self._incarnation_stop,
            "step.start": self._step_start,
            "step.stop": self._step_stop,
            "step.async": self._step_parked,
            "step.exception": self._step_exception,
            "step.resume": self._resumed,
        }

    # -- hooks the engine calls -------------------------------------------------

    def capture_trace_context(self) -> dict[str, str] | None:
        """The current trace headers (``traceparent``, ``tracestate``), ``None`` outside a span.

        The engine calls it in ``start_instance``, ``resume`` and
        ``schedule_resume`` and stores the answer with the run or the wakeup.
        """
        carrier: dict[str, str] = {}
        self._propagate.inject(carrier)
        return carrier or None

    def __call__(self, event: Event) -> None:
        """Open or end the spans ``event`` stands for (other events are ignored)."""
        handle = self._dispatch.get(event.name)
        if handle is not None:
            handle(event)

    # -- spans ----------------------------------------------------------------------

    def _parent(self, headers: Mapping[str, str] | None) -> Any:
        """A context holding the remote parent of ``headers`` (none: a new trace)."""
        return self._propagate.extract(dict(headers or {}), context=self._context.Context())

    def _in_run(self, run_id: str) -> Any:
        found = self._runs.get(run_id)
        if found is None or found.span is None:
            return self._context.Context()
        return self._trace.set_span_in_context(found.span)

    def _incarnation_start(self, event: Event) -> None:
        meta = event.metadata
        run_id = str(meta.get("run_id"))
        previous = self._runs.pop(run_id, None)
        if previous is not None:  # a stop we never saw: do not leak its spans
            self._end_run(previous, "stopped")
        span = self._tracer.start_span(
            "hephaestus.run",
            context=self._parent(meta.get("trace_context")),
            attributes=_run_attributes(meta),
        )
        self._runs[run_id] = _RunSpans(span)

    def _incarnation_stop(self, event: Event) -> None:
        meta = event.metadata
        found = self._runs.pop(str(meta.get("run_id")), None)
        if found is None:
            return
        span = found.span
        if span is None:  # attached after the incarnation started: only its attempts
            self._end_run(found, "stopped")
            return
        reason = str(meta.get("reason", "stopped"))
        status = meta.get("status")
        if status is not None:
            span.set_attribute("hephaestus.run.status", str(status))
        error = self._trace.StatusCode.ERROR
        exception = meta.get("exception")
        if reason == "failed":
            kind = str(meta.get("error_kind"))
            message = str(meta.get("error_message"))
            span.set_attribute("hephaestus.error.kind", kind)
            span.add_event(
                "exception",
                {
                    "exception.type": str(meta.get("error_type") or f"hephaestus.{kind}"),
                    "exception.message": message,
                },
            )
            span.set_status(self._trace.Status(error, f"{kind}: {message}"))
        elif isinstance(exception, BaseException):
            span.record_exception(exception)
            span.set_status(self._trace.Status(error, f"{reason}: {exception!r}"))
        self._end_run(found, reason)

    def _end_run(self, found: _RunSpans, reason: str) -> None:
        for step_span in found.steps.values():
            step_span.set_attribute("hephaestus.step.outcome", "interrupted")
            step_span.end()
        found.steps.clear()
        if found.span is not None:
            found.span.set_attribute("hephaestus.run.outcome", reason)
            found.span.end()

    def _step_start(self, event: Event) -> None:
        meta = event.metadata
        run_id = str(meta.get("run_id"))
        step = str(meta.get("step"))
        attributes = _run_attributes(meta)
        attributes["hephaestus.step.key"] = step
        attributes["hephaestus.step.attempt"] = int(event.measurements.get("attempt", 1))
        span = self._tracer.start_span(
            "hephaestus.step", context=self._in_run(run_id), attributes=attributes
        )
        found = self._runs.get(run_id)
        if found is None:
            found = self._runs[run_id] = _RunSpans(None)
        stale = found.steps.pop(step, None)
        if stale is not None:
            stale.end()
        found.steps[step] = span

    def _take_step(self, event: Event) -> Any:
        meta = event.metadata
        found = self._runs.get(str(meta.get("run_id")))
        if found is None:
            return None
        span = found.steps.pop(str(meta.get("step")), None)
        if found.span is None and not found.steps:
            del self._runs[str(meta.get("run_id"))]
        return span

    def _step_stop(self, event: Event) -> None:
        span = self._take_step(event)
        if span is None:
            return
        meta = event.metadata
        if meta.get("failed"):
            span.set_attribute("hephaestus.step.outcome", "failed")
            reason = str(meta.get("reason", "failed"))
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, reason))
        else:
            span.set_attribute("hephaestus.step.outcome", "completed")
            if meta.get("event") is not None:
                span.set_attribute("hephaestus.step.event", str(meta["event"]))
        span.end()

    def _step_parked(self, event: Event) -> None:
        span = self._take_step(event)
        if span is None:
            return
        span.set_attribute("hephaestus.step.outcome", "parked")
        span.end()

    def _step_exception(self, event: Event) -> None:
        span = self._take_step(event)
        if span is None:
            return
        meta = event.metadata
        kind = str(meta.get("kind", "Exception"))
        span.set_attribute("hephaestus.step.outcome", _OUTCOME_OF_KIND.get(kind, "raised"))
        span.set_attribute("hephaestus.step.will_retry", bool(meta.get("will_retry")))
        exception = meta.get("exception")
        if isinstance(exception, BaseException):
            span.record_exception(exception)
        span.set_status(
            self._trace.Status(self._trace.StatusCode.ERROR, str(meta.get("error", kind)))
        )
        span.end()

    def _resumed(self, event: Event) -> None:
        meta = event.metadata
        run_id = str(meta.get("run_id"))
        headers = meta.get("trace_context")
        attributes = _run_attributes(meta)
        attributes["hephaestus.step.key"] = str(meta.get("step"))
        attributes["hephaestus.wakeup.kind"] = "timer" if meta.get("timer") else "resume"
        if meta.get("event") is not None:
            attributes["hephaestus.step.event"] = str(meta["event"])
        found = self._runs.get(run_id)
        links = []
        if headers:
            parent = self._parent(headers)
            if found is not None and found.span is not None:
                links.append(self._trace.Link(found.span.get_span_context()))
        else:
            parent = self._in_run(run_id)
        span = self._tracer.start_span(
            "hephaestus.resume", context=parent, attributes=attributes, links=links
        )
        span.end()
