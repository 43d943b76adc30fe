"""Business keys: ``Unique(key, scope)``, ids ``"key::value"`` and the constraint key.

Uniqueness holds among *live* runs (pending, running, waiting). The storage
enforces it atomically on ``Instance.unique_key``, which this module computes.
"""

from __future__ import annotations

import re
import uuid
from typing import Literal, final

import attrs

from .._errors import InvalidValue, WorkflowDefinitionError

__all__ = ["InvalidUnique", "Scope", "Unique", "build_id", "constraint_key", "validate_value"]

Scope = Literal["workflow", "version", "global", "none"]
SCOPES: tuple[str, ...] = ("workflow", "version", "global", "none")
_KEY_RE = re.compile(r"^[a-z0-9]+$")
_VALUE_RE = re.compile(r"^[a-z0-9]+$")


class InvalidUnique(WorkflowDefinitionError, InvalidValue):
    """A ``Unique(...)`` with a bad key or scope.

    ``Unique`` is built inside the ``class`` statement of a workflow, so this is
    the definition-time check (7): a ``WorkflowDefinitionError`` (and, for
    callers that build a ``Unique`` on its own, an ``InvalidValue``, so a
    ``ValueError`` too).
    """


def _check_key(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not _KEY_RE.match(value):
        raise InvalidUnique(f"Unique key must match [a-z0-9]+, got {value!r}")


def _check_scope(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if value not in SCOPES:
        raise InvalidUnique(f"Unique scope must be one of {list(SCOPES)}, got {value!r}")


@final
@attrs.frozen(kw_only=True)
class Unique:
    """How a workflow's runs are identified and kept unique.

    ``key`` prefixes every id (``"orderid::abc123"``); ``scope`` says among which
    live runs the id must be unique: ``workflow`` (all versions of this
    workflow), ``version`` (this version only), ``global`` (every workflow) or
    ``none`` (never; ids get a random 8-hex suffix).
    """

    key: str = attrs.field(validator=_check_key)
    """Id prefix, ``[a-z0-9]+``."""
    scope: Scope = attrs.field(default="workflow", validator=_check_scope)
    """Uniqueness scope."""


def validate_value(value: str) -> str:
    """Check a business value: ``[a-z0-9]+`` or a UUID (normalized to lowercase).

    Raises:
        InvalidValue: naming the value and the accepted shapes (a ``ValueError``).
    """
    if isinstance(value, str):
        if _VALUE_RE.match(value):
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            pass
    raise InvalidValue(
        f"business value {value!r} is invalid: use lowercase letters and digits "
        "([a-z0-9]+) or a UUID"
    )


def build_id(unique: Unique, value: str, suffix: str | None = None) -> str:
    """``"key::value"``, or ``"key::value::suffix"`` for scope ``none``."""
    base = f"{unique.key}::{validate_value(value)}"
    if unique.scope == "none":
        return f"{base}::{suffix or uuid.uuid4().hex[:8]}"
    return base


def constraint_key(unique: Unique, family: str, version: int, instance_id: str) -> str | None:
    """The string the storage keeps unique among live runs, or ``None`` for scope ``none``."""
    if unique.scope == "none":
        return None
    if unique.scope == "global":
        return f"global::{instance_id}"
    if unique.scope == "version":
        return f"version::{family}::{version}::{instance_id}"
    return f"workflow::{family}::{instance_id}"
