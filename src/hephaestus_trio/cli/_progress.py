"""Live progress: engine events as one plain-text line each, prefixed with elapsed time.

``Progress`` is an event handler (``engine.subscribe(progress)``) and also
accepts events relayed from another process (``feed``), so the demo prints
both of its engines the same way. It also keeps the few counters the demo
needs: which steps run, which runs are parked, how often each step started.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from ..observability import Event

__all__ = ["Progress"]


def _steps(keys: Any) -> str:
    return ", ".join(str(k) for k in keys) if keys else "-"


class Progress:
    """Prints one line per step outcome, park, resume and run end.

    Args:
        out: where to print (default: ``sys.stdout`` at the time of printing).
        clock: seconds, for the elapsed-time prefix (default ``time.perf_counter``).
    """

    def __init__(
        self, out: TextIO | None = None, *, clock: Callable[[], float] = time.perf_counter
    ) -> None:
        self._out = out
        self._clock = clock
        self._start = clock()
        self.source = ""
        """Label of the engine whose events are being printed (e.g. ``engine 2``)."""
        self.running: dict[str, set[str]] = {}
        """Business id -> steps executing now."""
        self.parked: set[str] = set()
        """Business ids with a parked step."""
        self.step_starts: Counter[str] = Counter()
        """Business id -> step executions started (retries and re-runs included)."""
        self.retried: dict[str, set[str]] = {}
        """Business id -> steps that needed more than one attempt."""
        self._active: dict[str, list[str]] = {}
        self._status: dict[str, str] = {}
        self._errors: dict[str, str] = {}

    @property
    def elapsed(self) -> float:
        """Seconds since this object was created."""
        return self._clock() - self._start

    @property
    def running_steps(self) -> int:
        """Steps executing now, over every run."""
        return sum(len(steps) for steps in self.running.values())

    def say(self, text: str, *, source: str | None = None, subject: str = "") -> None:
        """Print ``text`` with the elapsed-time prefix."""
        label = self.source if source is None else source
        line = f"{self.elapsed:6.2f}s  "
        if label:
            line += f"{label:<9} "
        if subject:
            line += f"{subject:<17} "
        line += text
        print(line, file=self._out or sys.stdout, flush=True)

    def __call__(self, event: Event) -> None:
        self.feed(event.name, event.measurements, event.metadata)

    def feed(
        self,
        name: str,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
        *,
        source: str | None = None,
    ) -> None:
        """Handle one event (possibly relayed from another process)."""
        iid = str(metadata.get("instance_id", ""))
        step = metadata.get("step")
        text = self._track(name, iid, step, measurements, metadata)
        if text is not None:
            self.say(text, source=source, subject=iid)

    def _track(
        self,
        name: str,
        iid: str,
        step: Any,
        measurements: Mapping[str, float],
        metadata: Mapping[str, Any],
    ) -> str | None:
        running = self.running.setdefault(iid, set()) if iid else set()
        if name == "runner.init":
            recovered = int(measurements.get("recovered", 0))
            return (
                f"engine up: claimed {recovered} run(s) that needed a driver "
                "(parked runs stay in the storage until a wakeup or a timer)"
            )
        if name == "workflow.start":
            return "started"
        if name == "workflow.transition":
            self._active[iid] = list(metadata.get("active_steps") or [])
            self._status[iid] = str(metadata.get("to_status", ""))
            return None
        if name == "step.start":
            running.add(step)
            self.step_starts[iid] += 1
            attempt = int(measurements.get("attempt", 1))
            if attempt > 1:
                self.retried.setdefault(iid, set()).add(str(step))
                return f"{step}: attempt {attempt}"
            return None
        if name == "step.stop":
            running.discard(step)
            if metadata.get("failed"):
                return f"{step} -> Fail"
            if step == "done":
                return None
            return f"{step} -> {metadata.get('event')}{self._next(iid)}"
        if name == "step.exception":
            if not metadata.get("will_retry"):
                running.discard(step)
                return f"{step} raised {metadata.get('error')}; no attempts left"
            return f"{step} raised {metadata.get('error')}; will retry"
        if name == "step.async":
            running.discard(step)
            self.parked.add(iid)
            timer = metadata.get("timer")
            if timer is None:
                return f"{step} parked until resumed"
            return f"{step} parked; durable timer fires in {float(timer):.1f}s"
        if name == "step.resume":
            self.parked.discard(iid)
            how = "timer fired" if metadata.get("timer") else "resumed"
            return f"{step} <- {metadata.get('event')} ({how}){self._next(iid)}"
        if name == "workflow.exception":
            self._errors[iid] = str(metadata.get("error", ""))
            return None
        if name == "workflow.stop":
            self.running.pop(iid, None)
            self.parked.discard(iid)
            status = str(metadata.get("status", ""))
            if status == "failed":
                return f"FAILED: {self._errors.get(iid, 'see show')}"
            return f"{status.upper()} after {float(measurements.get('duration', 0.0)):.2f}s"
        if name == "instance.restart":
            return f"instance task crashed ({metadata.get('error')}); restarting it"
        return None  # engine.advance, instance.cancel (workflow.stop follows): no line

    def _next(self, iid: str) -> str:
        active = self._active.get(iid)
        if not active or self._status.get(iid) in ("completed", "failed", "cancelled"):
            return ""
        return f"; now {_steps(active)}"
