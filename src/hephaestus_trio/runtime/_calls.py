"""Calls on a run that need no engine: the running engine and the command line share them.

Each validates against the *stored* run and only adds a wakeup row (or, for a
cancel of a run nobody owns, writes once under a lease of its own), so it is
the same whether an engine of this process, another engine, or no engine at
all drives the run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

import attrs

from .._errors import (
    AmbiguousInstance,
    Backpressure,
    DefinitionMismatch,
    InstanceNotFound,
    InvalidResume,
    NotCancellable,
)
from ..core import _decisions as decide
from ..core._instance import Instance, Status
from ..core._workflow import Workflow
from ..storage._protocol import (
    Advance,
    ClaimedRun,
    Lease,
    NewWakeup,
    Storage,
    Wakeup,
    WakeupKind,
    WakeupRefused,
    WorkflowKey,
)

__all__ = [
    "ClaimRequest",
    "Matches",
    "ResumeInClaim",
    "cancel_directly",
    "find_run",
    "request_cancel",
    "resume_run",
]

Matches = Callable[[Instance, str | None], bool]
"""Whether a run belongs to the workflow a caller named (``None``: any)."""


@attrs.frozen(kw_only=True)
class ClaimRequest:
    """Who claims a hibernated run along with a resume for it, as ``Storage.claim`` takes it."""

    owner: str
    ttl: float
    workflows: Collection[WorkflowKey] | None
    advance: ResumeInClaim | None = None
    """Apply the resume in the claim, as this says (its ``workflow`` is set here)."""
    driving: Callable[[str], bool] = lambda run_id: False
    """Whether the claimer drives a run already (by ``run_id``): then ``advance``
    is not used; that run, even on a lapsed lease, keeps its own loop's state."""


@attrs.define
class ResumeInClaim:
    """The ``Advancer`` of a resume that claims a hibernated run: apply it in the claim.

    Why: its new driver would otherwise start by writing this very transition,
    one more commit between ``resume`` and the next step. It declines (the
    driver applies the resume, as without it) whenever the driver's own order
    could differ: another wakeup is due, the run is not simply parked on the
    step, or the transition would end the run (the loop that writes the
    terminal state announces it); and when the transition is a ``@route``:
    the application's code never runs inside a storage transaction (on
    SQLite, holding the write lock every run's writes wait for).
    """

    at: datetime
    workflow: type[Workflow] | None = None
    """The run's workflow, set by ``resume_run`` once it found the run."""
    before: Instance | None = None
    """The state the claim read, once the resume was applied to it."""
    event: str | None = None
    """The event the resumed step completed with, after mapping."""

    def __call__(self, claimed: ClaimedRun, recorded: Wakeup) -> Advance | None:
        inst, at, workflow = claimed.instance, self.at, self.workflow
        if (
            workflow is None
            or recorded.kind is not WakeupKind.RESUME
            or recorded.step is None
            or recorded.event is None
            or inst.status is not Status.WAITING
            or recorded.step not in inst.waiting_steps
        ):
            return None
        for other in claimed.wakeups:
            if other.seq != recorded.seq and not (
                other.kind is WakeupKind.TIMER and other.due_at > at
            ):
                return None
        try:
            decide.check_definition(inst, workflow)
        except DefinitionMismatch:
            return None
        step_cls = workflow.definition().steps[recorded.step]
        delivered = step_cls.resume_event(inst.step_configs.get(recorded.step), recorded.event)
        taken = workflow.compiled().transitions.get((recorded.step, delivered or ""))
        if taken is not None and taken.route is not None:
            return None  # a route is the application's code: not inside a storage transaction
        decision = decide.apply_resume(
            inst,
            recorded.step,
            recorded.event,
            recorded.payload,
            at=at,
            workflow=workflow,
            wakeup=recorded.seq,
        )
        if decision.outcome != "completed" or decision.instance.is_terminal:
            return None
        self.before, self.event = inst, decision.event
        return Advance(instance=decision.instance, timers=decision.timers)


def _same_workflow(instance: Instance, workflow: str | None) -> bool:
    return workflow is None or workflow == instance.workflow


async def find_run(
    storage: Storage, id: str, workflow: str | None, matches: Matches | None = None
) -> tuple[Instance | None, Instance]:
    """(the live run of business id ``id`` or ``None``, its most recent run).

    Raises:
        InstanceNotFound: no run has this id (among ``workflow``'s).
        AmbiguousInstance: several live runs share it; the caller must narrow.
    """
    keep = matches or _same_workflow
    runs = [i for i in await storage.query(id=id) if keep(i, workflow)]
    if not runs:
        raise InstanceNotFound(id)
    live = [i for i in runs if i.status.is_live]
    if len(live) > 1:
        raise AmbiguousInstance(id, tuple(sorted(i.workflow for i in live)))
    return (live[0] if live else None), runs[-1]


async def resume_run(
    storage: Storage,
    workflow_for: Callable[[Instance], type[Workflow]],
    id: str,
    event: str,
    payload: Mapping[str, Any] | None,
    *,
    step: str | None,
    workflow: str | None,
    dedup_key: str | None,
    now: datetime,
    max_pending: int | None,
    matches: Matches | None = None,
    trace_context: Mapping[str, str] | None = None,
    claim_for: ClaimRequest | None = None,
) -> tuple[Wakeup | None, ClaimedRun | None]:
    """Validate a resume against the stored run and record it; ``None`` if deduplicated.

    Shared by ``Engine.resume`` and the command line (which has no engine);
    ``workflow_for`` finds the run's workflow class (or raises). With
    ``claim_for``, the run is claimed for that engine in the same transaction
    when nobody holds it (a hibernated run): the second value is what its new
    driver starts from (with the resume applied, ``ClaimedRun.applied``, when
    ``claim_for.advance`` did apply it: it then holds what it applied).

    Raises:
        DefinitionMismatch: the run started with another definition of its
            workflow than the one ``workflow_for`` returns (nothing recorded).
    """
    run, latest = await find_run(storage, id, workflow, matches)
    if run is None:
        if dedup_key is not None and await storage.seen_dedup_key(latest.run_id, dedup_key):
            return None, None
        raise InvalidResume(id, event, f"the instance is {latest.status.value}")
    wf = workflow_for(run)
    decide.check_definition(run, wf)
    # A step with a resume pending already is refused by the storage itself
    # ("step_pending", below), atomically with the dedup check: reading the
    # wakeups first to tell would cost a read and could only race.
    try:
        chosen = decide.choose_resume_step(run, wf, event, step=step)
    except InvalidResume:
        if dedup_key is not None and await storage.seen_dedup_key(run.run_id, dedup_key):
            return None, None
        raise
    wakeup = NewWakeup(
        run_id=run.run_id,
        kind=WakeupKind.RESUME,
        step=chosen,
        event=event,
        payload=payload,
        dedup_key=dedup_key,
        due_at=now,
        trace_context=trace_context,
    )
    try:
        if claim_for is None:
            return await storage.add_wakeup(wakeup, now=now, max_pending=max_pending), None
        advance = claim_for.advance
        if advance is not None:
            if claim_for.driving(run.run_id):
                advance = None
            else:
                advance.workflow = wf
        return await storage.add_wakeup_and_claim(
            wakeup,
            now=now,
            max_pending=max_pending,
            owner=claim_for.owner,
            ttl=claim_for.ttl,
            workflows=claim_for.workflows,
            advance=advance,
        )
    except WakeupRefused as exc:
        if exc.reason == "full":
            raise Backpressure(id, max_pending or 0) from None
        if exc.reason == "step_pending":
            raise InvalidResume(
                id, event, f"step {chosen!r} already has a pending resume"
            ) from None
        raise InvalidResume(id, event, f"the instance is {exc.status}") from None


async def request_cancel(storage: Storage, run: Instance, *, now: datetime) -> None:
    """Record a cancel request for live ``run`` (idempotent).

    Raises:
        NotCancellable: the run is no longer live.
    """
    try:
        await storage.add_wakeup(
            NewWakeup(run_id=run.run_id, kind=WakeupKind.CANCEL, due_at=now), now=now
        )
    except WakeupRefused as exc:
        raise NotCancellable(run.id, exc.status or "gone") from None


async def cancel_directly(storage: Storage, lease: Lease, *, now: datetime) -> Instance | None:
    """Apply a cancel with one fenced write under ``lease`` (no step code runs).

    Used when the caller claimed an unowned run it cannot drive (its workflow
    is not registered here, or the caller is the command line).
    """
    run = await storage.get(lease.run_id)
    if run is None or run.is_terminal:
        return run
    decision = decide.apply_cancel(run, at=now)
    await storage.write(lease, decision.instance, now=now)
    return decision.instance
