"""The class-method facade of ``Workflow``: ``OrderFlow.start("abc", {...})``.

The facade is thin: it turns a business value into an id and calls the
running engine, which it finds through ``current_engine`` (set by
``open_engine``) unless ``engine=`` is given. The core never imports the
runtime; ``EngineLike`` is the shape it relies on.
"""

from __future__ import annotations

import contextvars
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._errors import EngineClosed, InvalidValue
from ._unique import build_id, validate_value

if TYPE_CHECKING:
    from ._instance import Instance, Status
    from ._workflow import Workflow

__all__ = ["EngineLike", "FacadeMixin", "current_engine"]


class EngineLike(Protocol):
    """What the facade needs from a running engine."""

    async def start_instance(
        self,
        workflow: type[Workflow],
        context: Mapping[str, Any] | None = None,
        *,
        id: str,
        version: int | None = None,
        telemetry_metadata: Mapping[str, Any] | None = None,
    ) -> str: ...

    async def resume(
        self,
        id: str,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        step: str | None = None,
        workflow: str | None = None,
        dedup_key: str | None = None,
    ) -> None: ...

    async def get(self, id: str, *, workflow: str | None = None) -> Instance: ...

    async def list(
        self,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow: str | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
    ) -> list[Instance]: ...

    async def cancel(self, id: str, *, workflow: str | None = None) -> Instance: ...


current_engine: contextvars.ContextVar[EngineLike | None] = contextvars.ContextVar(
    "hephaestus_trio_current_engine", default=None
)


def _engine(engine: EngineLike | None) -> EngineLike:
    found = engine if engine is not None else current_engine.get()
    if found is None:
        raise EngineClosed(
            "no running engine: call this inside `async with open_engine(...)` or pass engine="
        )
    return found


class FacadeMixin:
    """Class methods every ``Workflow`` gets; each accepts ``engine=``."""

    @classmethod
    def id_for(cls, value: str) -> str:
        """The id of ``value`` (a business value, or an id this workflow already built).

        Raises:
            InvalidValue: the value is not ``[a-z0-9]+`` or a UUID (a ``ValueError``).
        """
        unique = cls.unique  # type: ignore[attr-defined]
        prefix = f"{unique.key}::"
        if isinstance(value, str) and value.startswith(prefix):
            parts = value[len(prefix) :].split("::")
            validate_value(parts[0])
            return value
        if unique.scope == "none":
            raise InvalidValue(
                f"{cls.__name__} uses scope 'none': pass the full id returned by start(), "
                f"not the bare value {value!r}"
            )
        return build_id(unique, value)

    @classmethod
    async def start(
        cls,
        value: str,
        context: Mapping[str, Any] | None = None,
        *,
        version: int | None = None,
        telemetry_metadata: Mapping[str, Any] | None = None,
        engine: EngineLike | None = None,
    ) -> str:
        """Start a run for business ``value``; returns its id ``"key::value"``.

        Raises:
            ValueError: bad value or unknown version.
            TypeError: JSON-unsafe context.
            AlreadyRunning: a live run holds the key in this workflow's scope.
        """
        running = _engine(engine)
        instance_id = build_id(cls.unique, value)  # type: ignore[attr-defined]
        return await running.start_instance(
            cls,  # type: ignore[arg-type]
            context,
            id=instance_id,
            version=version,
            telemetry_metadata=telemetry_metadata,
        )

    @classmethod
    async def resume(
        cls,
        value: str,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        step: str | None = None,
        dedup_key: str | None = None,
        engine: EngineLike | None = None,
    ) -> None:
        """Record ``event`` (and ``payload``) for the live run of ``value``.

        See ``Engine.resume``.
        """
        await _engine(engine).resume(
            cls.id_for(value),
            event,
            payload,
            step=step,
            workflow=cls.name,  # type: ignore[attr-defined]
            dedup_key=dedup_key,
        )

    @classmethod
    async def get(cls, value: str, *, engine: EngineLike | None = None) -> Instance:
        """The live run of ``value``, else its most recent one."""
        return await _engine(engine).get(cls.id_for(value), workflow=cls.name)  # type: ignore[attr-defined]

    @classmethod
    async def cancel(cls, value: str, *, engine: EngineLike | None = None) -> Instance:
        """Cancel the live run of ``value``; returns the cancelled instance."""
        return await _engine(engine).cancel(cls.id_for(value), workflow=cls.name)  # type: ignore[attr-defined]

    @classmethod
    async def list(
        cls,
        *,
        status: Status | str | None = None,
        status_in: Sequence[Status | str] | None = None,
        workflow_version: int | None = None,
        id: str | None = None,
        engine: EngineLike | None = None,
    ) -> list[Instance]:
        """Runs of this workflow (of every version, for a dispatcher) matching the filters."""
        running = _engine(engine)
        versions = getattr(cls, "versions", None)
        names = [v.name for v in versions.values()] if versions else [cls.name]  # type: ignore[attr-defined]
        found: list[Instance] = []
        for name in names:
            found.extend(
                await running.list(
                    status=status,
                    status_in=status_in,
                    workflow=name,
                    workflow_version=workflow_version,
                    id=id,
                )
            )
        found.sort(key=lambda inst: inst.created_at)
        return found
