"""Option values of the read commands: statuses, ``--since``, cursors, ages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hephaestus_trio import HephaestusError, InvalidArgument, Status
from hephaestus_trio.cli._options import (
    decode_cursor,
    encode_cursor,
    format_age,
    parse_duration,
    parse_since,
    parse_statuses,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def test_statuses_repeat_or_separate_with_commas() -> None:
    assert parse_statuses(None) is None
    assert parse_statuses(["waiting"]) == [Status.WAITING]
    assert parse_statuses(["waiting,running", "FAILED", " pending , waiting"]) == [
        Status.WAITING,
        Status.RUNNING,
        Status.FAILED,
        Status.PENDING,
    ]


@pytest.mark.parametrize("value", ["sleeping", "waiting,", "", "waiting,nope"])
def test_an_unknown_status_names_every_allowed_one(value: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_statuses([value])
    error = info.value
    assert isinstance(error, HephaestusError)
    assert isinstance(error, ValueError)
    assert error.name == "--status"
    message = str(error)
    for status in Status:
        assert status.value in message
    assert "comma" in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("1w", 604800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("2D", 2 * 86400),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert parse_since(text, now=NOW) == NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01", datetime(2026, 12, 1, tzinfo=UTC)),
        ("2026-12-01T08:30", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
        ("2026-12-01T08:30:00Z", datetime(2026, 12, 1, 8, 30, tzinfo=UTC)),
        ("2026-12-01T08:30:00+02:00", datetime(2026, 12, 1, 6, 30, tzinfo=UTC)),
        ("2026-12-01 08:30:00.250000", datetime(2026, 12, 1, 8, 30, 0, 250000, tzinfo=UTC)),
    ],
)
def test_since_takes_iso_dates_and_times_in_utc(text: str, expected: datetime) -> None:
    got = parse_since(text, now=NOW)
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize("text", ["3x", "2 hours", "h", "-2h", "yesterday", "2026-13-01", ""])
def test_a_bad_since_says_what_is_allowed(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_since(text, now=NOW)
    assert info.value.name == "--since"
    assert "ISO date" in str(info.value)
    assert "2h" in str(info.value)


def test_a_duration_reaching_before_year_one_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="--since"):
        parse_since("99999999w", now=NOW)


def test_cursors_round_trip_as_instants() -> None:
    at = datetime(2026, 12, 1, 8, 30, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    cursor = encode_cursor(at, "run/with:odd chars é")
    assert cursor.isascii()
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    created_at, run_id = decode_cursor(cursor)
    assert (created_at, run_id) == (at, "run/with:odd chars é")
    assert created_at.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    "text",
    [
        "garbage!",
        "e30",  # {} : JSON of the wrong shape
        "WyIyMDI2LTEyLTAxIl0",  # ["2026-12-01"]: one element
        "WyIyMDI2LTEyLTAxVDAwOjAwOjAwIiwiciJd",  # a naive time
        "WyJub3QgYSB0aW1lIiwiciJd",  # ["not a time", "r"]
        "WyIyMDI2LTEyLTAxVDAwOjAwOjAwWiIsNV0",  # a run id that is not a string
    ],
)
def test_a_bad_cursor_says_where_cursors_come_from(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        decode_cursor(text)
    assert info.value.name == "--after"
    assert "a previous 'list' printed" in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.25, "0.2s"),
        (45, "45s"),
        (725, "12m 5s"),
        (3 * 3600 + 20 * 60 + 5, "3h 20m"),
        (2 * 86400 + 4 * 3600 + 59, "2d 4h"),
        (-90, "in 1m 30s"),
    ],
)
def test_ages_for_people(seconds: float, text: str) -> None:
    assert format_age(seconds) == text
