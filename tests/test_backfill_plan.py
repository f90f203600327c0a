"""The chunk and lookback arithmetic a resumable backfill relies on."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from conftest import make_view

from backfill.work import chunks, lookback_ms
from featurestore import Count, Int64, Sliding, Tumbling


def at(day: int, hour: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


def test_chunks_are_day_aligned_and_cover_the_range_exactly() -> None:
    got = [(c.index, c.start, c.end) for c in chunks(at(1, 5), at(5, 12), None, 2)]
    assert got == [(0, at(1, 5), at(3)), (1, at(3), at(5)), (2, at(5), at(5, 12))]
    # an explicit start wins over the first event's time
    assert [(c.start, c.end) for c in chunks(at(1, 5), at(3), at(2, 6), 7)] == [(at(2, 6), at(3))]
    assert chunks(at(1), at(1), None, 1) == []


def test_lookback_covers_what_a_chunk_depends_on() -> None:
    count = {"n": (Int64, Count())}
    assert lookback_ms(make_view(count, window=Sliding(timedelta(days=7)))) == 7 * 86_400_000
    # hopping: the row where a window empties comes from the event that left, a hop earlier
    hopping = make_view(count, window=Sliding(timedelta(hours=3), timedelta(hours=1)))
    assert lookback_ms(hopping) == 4 * 3_600_000
    assert lookback_ms(make_view(count, window=Tumbling(timedelta(hours=1)))) == 2 * 3_600_000
    assert lookback_ms(make_view(count)) is None  # lifetime: all of history
