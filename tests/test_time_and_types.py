"""Event-time parsing and value coercion: the rules every engine shares."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from transforms.dtypes import (
    Array,
    CoercionError,
    Float64,
    Int32,
    Int64,
    String,
    UnixTimestamp,
    coerce,
)
from transforms.timeutil import MAX_TIME_MS, MIN_TIME_MS, duration_ms, ms_to_datetime, parse_event_time

MS_2026 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1_767_225_600, MS_2026),  # epoch seconds
        (MS_2026, MS_2026),  # epoch milliseconds
        (1_767_225_600.0015, MS_2026 + 1),  # fractional seconds, floored to the millisecond
        (float(MS_2026) + 0.9, MS_2026),  # fractional milliseconds, floored
        ("2026-01-01T00:00:00Z", MS_2026),
        ("2026-01-01T00:00:00", MS_2026),  # no offset means UTC
        ("2026-01-01T02:00:00+02:00", MS_2026),
        ("2026-01-01 00:00:00.0019", MS_2026 + 1),
        (datetime(2026, 1, 1), MS_2026),  # naive means UTC
        (datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=1))), MS_2026),
        (-1.5, -1500),
    ],
)
def test_parse_event_time(value: object, expected: int) -> None:
    assert parse_event_time(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        "yesterday",
        "1767225600",
        float("nan"),
        float("inf"),
        [1],
        10**20,
        -(10**17),
        -6.3e16,
        "0001-01-01T00:00:00+01:00",
    ],
)
def test_parse_event_time_rejects(value: object) -> None:
    """Times a datetime cannot hold are rejected too (they become ``bad_time`` dead letters)."""
    with pytest.raises(ValueError):
        parse_event_time(value)


def test_the_extreme_times_round_trip() -> None:
    for ms in (MIN_TIME_MS, MAX_TIME_MS):
        assert parse_event_time(ms) == ms and parse_event_time(ms_to_datetime(ms)) == ms


def test_ms_round_trip_and_durations() -> None:
    assert ms_to_datetime(MS_2026) == datetime(2026, 1, 1, tzinfo=UTC)
    assert duration_ms(timedelta(days=7)) == 604_800_000
    with pytest.raises(ValueError):
        duration_ms(timedelta(microseconds=1500))


def test_coerce_rules() -> None:
    assert coerce(3, Float64) == 3.0 and isinstance(coerce(3, Float64), float)
    assert coerce(float("nan"), Float64) is None
    assert coerce(None, Int64) is None
    assert coerce("2026-01-01T00:00:00Z", UnixTimestamp) == datetime(2026, 1, 1, tzinfo=UTC)
    assert coerce([1, 2], Array(Float64)) == [1.0, 2.0]
    for value, dtype in [
        (1.5, Int64),
        (True, Int64),
        (True, Float64),
        (1, String),
        ("1", Int64),
        (2**31, Int32),
        ("soon", UnixTimestamp),
        (float("inf"), Float64),  # an infinity would poison every sum it enters
        (float("-inf"), Float64),
        ([1.0, float("inf")], Array(Float64)),
    ]:
        with pytest.raises(CoercionError):
            coerce(value, dtype)
