"""Query filters shared by the backends: validated once, matched in memory or SQL."""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from ..core._instance import Instance, Status

__all__ = ["Filters", "matches", "normalize_filters"]


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
