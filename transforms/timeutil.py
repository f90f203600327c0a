"""Event time: every engine normalises event times to integer UTC epoch milliseconds this way."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

# Numbers below this magnitude are epoch seconds, above it epoch milliseconds.
# 1e11 seconds is the year 5138; 1e11 milliseconds is 1973-03-03.
SECONDS_THRESHOLD = 100_000_000_000

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The event times a datetime can hold: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999
DAY_MS = 86_400_000  # a UTC day: offline partitions and backfill chunks are days
# The event times a view accepts unless its source says otherwise (``event_time_range``):
# 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z. An event outside them (a history row dated
# year 1, say) is a ``bad_time`` dead letter.
EVENT_TIME_RANGE_MS = (0, MAX_TIME_MS)


def parse_event_time(value: Any) -> int:
    """Return ``value`` as UTC epoch milliseconds or raise ``ValueError``.

    Accepts epoch seconds or milliseconds (int or float, told apart by magnitude, fractions of a
    millisecond floored), ISO-8601 strings (a missing offset means UTC) and datetimes (naive means
    UTC). Booleans, NaN, infinities, numeric strings and times outside years 1 to 9999 (UTC) are
    rejected.
    """
    time_ms = _parse_event_time(value)
    if not MIN_TIME_MS <= time_ms <= MAX_TIME_MS:
        raise ValueError(f"time out of range (years 1 to 9999): {value!r:.60}")
    return time_ms


def _parse_event_time(value: Any) -> int:
    if value is None:
        raise ValueError("no event time")
    if isinstance(value, bool):
        raise ValueError(f"a boolean is not a time: {value!r}")
    if isinstance(value, int):
        return value * 1000 if abs(value) < SECONDS_THRESHOLD else value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not a finite time: {value!r}")
        if abs(value) < SECONDS_THRESHOLD:
            return math.floor(value * 1000.0)
        return math.floor(value)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValueError(f"not an ISO-8601 time: {value!r:.60}") from None
        return datetime_to_ms(parsed)
    if isinstance(value, datetime):
        return datetime_to_ms(value)
    if hasattr(value, "to_pydatetime"):  # numpy/pandas timestamps that are not datetimes
        return datetime_to_ms(value.to_pydatetime())
    raise ValueError(f"not a time: {type(value).__name__}")


def vectorised_range(time_range_ms: tuple[int, int]) -> tuple[int, int]:
    """The part of an event-time range that the vectorised paths (Arrow kernels, Spark SQL) take:
    from 1970 on, where truncating a time to the millisecond floors it; the row path has the rest."""
    return max(time_range_ms[0], 0), time_range_ms[1]


def check_event_time(time_ms: int, time_range_ms: tuple[int, int] = EVENT_TIME_RANGE_MS) -> int:
    """``time_ms`` when it lies in ``time_range_ms`` (both ends included), else ``ValueError``."""
    low, high = time_range_ms
    if not low <= time_ms <= high:
        raise ValueError(
            f"event time {ms_to_datetime(time_ms).isoformat()} is outside "
            f"{ms_to_datetime(low).isoformat()} to {ms_to_datetime(high).isoformat()}"
        )
    return time_ms


def datetime_to_ms(value: datetime) -> int:
    """A datetime (naive means UTC) as epoch milliseconds, sub-millisecond part floored."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def ms_to_datetime(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime."""
    return _EPOCH + timedelta(milliseconds=ms)


def duration_ms(value: timedelta) -> int:
    """A timedelta as whole milliseconds; finer durations are rejected."""
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    if micros % 1000:
        raise ValueError(f"{value} is not a whole number of milliseconds")
    return micros // 1000


def engine_value(value: Any) -> Any:
    """A coerced input value as the engines carry it: datetimes as epoch milliseconds."""
    if isinstance(value, datetime):
        return datetime_to_ms(value)
    return value
