"""Query filters shared by the backends: validated once, matched in memory or SQL."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import attrs

from .._errors import InvalidArgument
from ..core._instance import Instance, Status

__all__ = [
    "Filters",
    "Page",
    "matches",
    "normalize_filters",
    "normalize_now",
    "normalize_page",
    "on_page",
]


@attrs.frozen
class Filters:
    statuses: frozenset[Status] | None
    workflow: str | None
    workflow_version: int | None
    id: str | None


def normalize_filters(
    status: Status | str | None,
    status_in: Sequence[Status | str] | None,
    workflow: str | None,
    workflow_version: int | None,
    id: str | None,
) -> Filters:
    """Validate and combine the ``query`` keywords (``ValueError`` for an unknown status)."""
    statuses: set[Status] | None = None
    if status is not None:
        statuses = {Status.coerce(status)}
    if status_in is not None:
        if isinstance(status_in, str | Status):
            raise ValueError("status_in takes a list of statuses; use status= for one")
        wanted = {Status.coerce(s) for s in status_in}
        statuses = wanted if statuses is None else statuses & wanted
    return Filters(
        statuses=frozenset(statuses) if statuses is not None else None,
        workflow=workflow,
        workflow_version=workflow_version,
        id=id,
    )


def matches(instance: Instance, filters: Filters) -> bool:
    return (
        (filters.statuses is None or instance.status in filters.statuses)
        and (filters.workflow is None or instance.workflow == filters.workflow)
        and (
            filters.workflow_version is None
            or instance.workflow_version == filters.workflow_version
        )
        and (filters.id is None or instance.id == filters.id)
    )


@attrs.frozen
class Page:
    """The paging keywords of ``query``, validated: UTC datetimes, a positive limit."""

    created_after: datetime | None
    """Only runs created at or after this instant."""
    limit: int | None
    """At most this many runs."""
    after: tuple[datetime, str] | None
    """Only runs strictly after this ``(created_at, run_id)`` in the query's order."""


def _aware(value: object, name: str, allowed: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(name, value, allowed)
    return value.astimezone(UTC)


def normalize_now(now: datetime) -> datetime:
    """``summary``'s ``now`` in UTC (``InvalidArgument`` unless timezone-aware)."""
    return _aware(now, "now", "a timezone-aware datetime")


def normalize_page(
    created_after: datetime | None, limit: int | None, after: tuple[datetime, str] | None
) -> Page:
    """Validate the paging keywords of ``query`` (``InvalidArgument`` naming the bad one).

    Every backend calls this first, so a bad value is refused the same way
    everywhere and before any I/O.
    """
    since = None
    if created_after is not None:
        since = _aware(created_after, "created_after", "a timezone-aware datetime or None")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InvalidArgument("limit", limit, "a positive int or None")
    cursor = None
    if after is not None:
        allowed = "a (created_at, run_id) tuple: a timezone-aware datetime and a str, or None"
        if not (isinstance(after, tuple) and len(after) == 2 and isinstance(after[1], str)):
            raise InvalidArgument("after", after, allowed)
        cursor = (_aware(after[0], "after", allowed), after[1])
    return Page(created_after=since, limit=limit, after=cursor)


def on_page(instance: Instance, page: Page) -> bool:
    """Whether ``instance`` passes the ``created_after`` and ``after`` bounds (not ``limit``)."""
    if page.created_after is not None and instance.created_at < page.created_after:
        return False
    return page.after is None or (instance.created_at, instance.run_id) > page.after
