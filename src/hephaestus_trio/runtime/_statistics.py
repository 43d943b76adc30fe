"""``EngineStatistics``: a frozen snapshot of what one running engine holds right now.

It answers "what is this process doing?" without touching the storage: the
counts come from the engine's own memory (the runs it drives, their loops and
step tasks, their leases), so ``engine.statistics()`` is cheap enough to call
from a health check or a metrics scrape. Runs that hibernate (parked with
nothing to do) are held by no engine, so they are not counted here; ask the
storage (``engine.list(status="waiting")``) for those.
"""

from __future__ import annotations

from typing import final

import attrs

__all__ = ["EngineStatistics"]


@final
@attrs.frozen(kw_only=True)
class EngineStatistics:
    """What one engine holds at the moment ``Engine.statistics()`` was called."""

    runs: int
    """Runs this engine drives (each has one driver task and one lease)."""
    running: int
    """Of those, runs with at least one step executing (backoffs included)."""
    parked: int
    """Of those, runs whose every active step is parked (about to hibernate, or
    applying the wakeups that woke them)."""
    backing_off: int
    """Of those, runs with a step sleeping in a retry backoff."""
    steps: int
    """Steps executing now, inline in their run's loop or in a task of their own."""
    tasks: int
    """Trio tasks the engine runs for workflow runs: one driver per run plus one per
    step that runs in a task of its own (the engine's claim loop and heartbeat aside)."""
    leases: int
    """Leases held: runs driven and not yet released."""
    queued_wakeups: int
    """Resumes, timers and cancel requests read by the runs' loops and not applied yet
    (early resumes and future timers included), plus messages waiting in mailboxes."""
    refused: int
    """Runs this engine refused since it opened because their definition changed
    (``DefinitionMismatch``); each is offered again to every engine later."""
