"""Option values of the read commands: statuses, ``--since``, page cursors, durations.

Each parser turns one option's text into a value the storage understands, or
raises ``InvalidArgument`` naming the option, the bad text and what is
allowed, which the command line prints as one line (exit status 2). They are
checked before the storage is opened, so a typo never waits on a database.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from .._errors import InvalidArgument
from ..core._instance import Status

__all__ = [
    "SINCE_ALLOWED",
    "STATUS_ALLOWED",
    "decode_cursor",
    "encode_cursor",
    "format_age",
    "parse_duration",
    "parse_since",
    "parse_statuses",
]

STATUS_ALLOWED = (
    f"one of {', '.join(s.value for s in Status)} (repeat --status or separate with commas)"
)
SINCE_ALLOWED = (
    "an ISO date or date-time (2026-12-01, 2026-12-01T08:30, 2026-12-01T08:30:00+02:00; "
    "UTC when no offset is given) or a duration before now (90s, 15m, 2h, 7d, 1w, 1h30m)"
)
_CURSOR_ALLOWED = "the cursor a previous 'list' printed after a full page (next page: --after ...)"

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?[smhdw])+")
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_statuses(values: Iterable[str] | None) -> list[Status] | None:
    """``--status`` values (repeatable, each possibly comma-separated) as statuses.

    ``None`` (the option was not given) means any status. Duplicates are
    dropped; the order is the order given.

    Raises:
        InvalidArgument: an unknown or empty status.
    """
    if values is None:
        return None
    statuses: list[Status] = []
    for value in values:
        for part in value.split(","):
            name = part.strip().lower()
            try:
                status = Status(name)
            except ValueError:
                raise InvalidArgument("--status", part.strip(), STATUS_ALLOWED) from None
            if status not in statuses:
                statuses.append(status)
    return statuses


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``2h``, ``7d``, ``1w`` or a sum like ``1h30m``.

    Raises:
        InvalidArgument: anything else (the option is named ``--since``).
    """
    compact = text.strip().lower()
    if not _DURATION.fullmatch(compact):
        raise InvalidArgument("--since", text, SINCE_ALLOWED)
    seconds = sum(float(n) * _UNITS[unit] for n, unit in _PART.findall(compact))
    try:
        return timedelta(seconds=seconds)
    except OverflowError:
        raise InvalidArgument("--since", text, SINCE_ALLOWED) from None


def parse_since(text: str, *, now: datetime) -> datetime:
    """``--since``: an ISO date or date-time (UTC without an offset), or a duration before ``now``.

    Raises:
        InvalidArgument: neither form, or a duration reaching before year 1.
    """
    stripped = text.strip()
    if stripped and stripped[0].isdigit() and _DURATION.fullmatch(stripped.lower()):
        try:
            return now - parse_duration(stripped)
        except OverflowError:
            raise InvalidArgument("--since", text, SINCE_ALLOWED) from None
    try:
        value = datetime.fromisoformat(stripped)
    except ValueError:
        raise InvalidArgument("--since", text, SINCE_ALLOWED) from None
    if value.tzinfo is None or value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def encode_cursor(created_at: datetime, run_id: str) -> str:
    """An opaque ``--after`` cursor naming the last run of a page (URL-safe, no padding)."""
    naive = created_at.astimezone(UTC).replace(tzinfo=None)
    stamp = naive.isoformat(timespec="microseconds") + "Z"
    raw = json.dumps([stamp, run_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[datetime, str]:
    """The ``(created_at, run_id)`` keyset position an ``--after`` cursor names.

    Raises:
        InvalidArgument: not a cursor ``encode_cursor`` made.
    """
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        stamp, run_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, ValueError, TypeError):
        raise InvalidArgument("--after", text, _CURSOR_ALLOWED) from None
    if not isinstance(run_id, str) or created_at.tzinfo is None:
        raise InvalidArgument("--after", text, _CURSOR_ALLOWED)
    return created_at.astimezone(UTC), run_id


def format_age(seconds: float) -> str:
    """A duration for people: ``45s``, ``12m 5s``, ``3h 20m``, ``2d 4h``; negative as ``in ...``."""
    if seconds < 0:
        return "in " + format_age(-seconds)
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    if whole:
        return f"{secs}s"
    return f"{seconds:.1f}s"
