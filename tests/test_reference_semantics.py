"""DESIGN §2 on the reference engine: windows, emitted rows, ties, nulls, disorder, bad events."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from conftest import at, make_view
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import (
    Count,
    CountDistinct,
    First,
    Float64,
    Int64,
    LastK,
    Latest,
    Max,
    Mean,
    Min,
    Sliding,
    Stddev,
    String,
    Sum,
    Tumbling,
    Variance,
)
from transforms.dtypes import Array
from transforms.engines.reference import Lateness, run_reference
from transforms.events import PartitionedEvent
from transforms.plan import EVENT_TIMESTAMP
from transforms.timeutil import ms_to_datetime


def ev(seconds: float, user: str = "a", **fields: Any) -> dict[str, Any]:
    return {"user_id": user, "timestamp": at(seconds=seconds).isoformat(), **fields}


def rows_by_time(rows: list[dict[str, Any]], user: str = "a") -> dict[float, dict[str, Any]]:
    base = at()
    return {
        (r[EVENT_TIMESTAMP] - base).total_seconds(): {
            k: v for k, v in r.items() if k not in ("user_id", EVENT_TIMESTAMP)
        }
        for r in rows
        if r["user_id"] == user
    }


def test_continuous_window_rows_including_leave_rows_and_empty_window() -> None:
    view = make_view(
        {
            "n": (Int64, Count()),
            "n_v": (Int64, Count("v")),
            "s": (Float64, Sum("v")),
            "last": (Float64, Latest("v")),
            "first": (Float64, First("v")),
        },
        window=Sliding(timedelta(seconds=10)),
    )
    events = [ev(10, v=4), ev(0, v=1), ev(25, v=None), ev(4, v=2), ev(10, v=8)]  # out of order
    result = view.run(events)
    assert rows_by_time(result.rows) == {
        0: {"n": 1, "n_v": 1, "s": 1.0, "last": 1.0, "first": 1.0},
        4: {"n": 2, "n_v": 2, "s": 3.0, "last": 2.0, "first": 1.0},
        # (0, 10]: the event at 0 has left; the tie at 10 resolves to the larger value
        10: {"n": 3, "n_v": 3, "s": 14.0, "last": 8.0, "first": 2.0},
        14: {"n": 2, "n_v": 2, "s": 12.0, "last": 8.0, "first": 4.0},
        20: {"n": 0, "n_v": 0, "s": 0.0, "last": None, "first": None},  # emptied window
        25: {"n": 1, "n_v": 0, "s": 0.0, "last": None, "first": None},  # a null value is skipped
        35: {"n": 0, "n_v": 0, "s": 0.0, "last": None, "first": None},
    }
    assert result.counts.input == 5 and result.counts.aggregated == 5


def test_hopping_window_reports_changed_windows_only() -> None:
    view = make_view(
        {"n": (Int64, Count()), "s": (Int64, Sum("v"))},
        window=Sliding(timedelta(seconds=10), hop=timedelta(seconds=5)),
    )
    result = view.run([ev(3, v=1), ev(7, v=2), ev(10, v=10), ev(12, v=3)])
    assert rows_by_time(result.rows) == {
        5: {"n": 1, "s": 1},  # [-5, 5)
        10: {"n": 2, "s": 3},  # [0, 10): the event at exactly 10 belongs to later windows
        15: {"n": 3, "s": 15},  # [5, 15)
        20: {"n": 2, "s": 13},  # [10, 20): the event at 7 left
        25: {"n": 0, "s": 0},  # [15, 25): emptied
    }


def test_tumbling_window_is_epoch_aligned() -> None:
    view = make_view(
        {"mean": (Float64, Mean("v")), "max": (Float64, Max("v")), "n": (Int64, Count())},
        window=Tumbling(timedelta(hours=1)),
    )
    events = [ev(10 * 60, v=1), ev(50 * 60, v=3), ev(80 * 60, v=5)]
    assert rows_by_time(view.run(events).rows) == {
        3600: {"mean": 2.0, "max": 3.0, "n": 2},
        7200: {"mean": 5.0, "max": 5.0, "n": 1},
        10800: {"mean": None, "max": None, "n": 0},
    }


def test_lifetime_every_aggregation_ties_and_nulls() -> None:
    view = make_view(
        {
            "rows": (Int64, Count()),
            "values": (Int64, Count("v")),
            "total": (Float64, Sum("v")),
            "low": (Float64, Min("v")),
            "high": (Float64, Max("v")),
            "latest": (Float64, Latest("v")),
            "first": (Float64, First("v")),
            "distinct": (Int64, CountDistinct("tag")),
            "recent": (Array(Float64), LastK("v", k=2)),
            "var": (Float64, Variance("v")),
            "svar": (Float64, Variance("v", sample=True)),
            "sd": (Float64, Stddev("v")),
            "mean": (Float64, Mean("v")),
        }
    )
    events = [ev(3, v=2, tag="x"), ev(1, v=5, tag="x"), ev(2, v=None, tag=None), ev(3, v=7, tag="y")]
    got = rows_by_time(view.run(events).rows)
    assert sorted(got) == [1, 2, 3]
    assert got[1]["rows"] == 1 and got[1]["latest"] == 5.0 and got[1]["sd"] == 0.0
    assert got[1]["svar"] is None  # a sample variance needs two values
    assert got[2] == {**got[1], "rows": 2}  # the null-valued event only counts as a row
    final = got[3]
    assert {
        k: final[k]
        for k in ("rows", "values", "total", "low", "high", "latest", "first", "distinct", "recent")
    } == {
        "rows": 4,
        "values": 3,
        "total": 14.0,
        "low": 2.0,
        "high": 7.0,
        "latest": 7.0,
        "first": 5.0,
        "distinct": 2,
        "recent": [7.0, 2.0],
    }
    assert final["mean"] == pytest.approx(14 / 3, rel=1e-12)
    # 5, 2, 7: squared deviations from 14/3 sum to 38/3
    assert final["var"] == pytest.approx(38 / 9, rel=1e-12)
    assert final["svar"] == pytest.approx(38 / 6, rel=1e-12)
    assert final["sd"] == pytest.approx((38 / 9) ** 0.5, rel=1e-12)


def test_arrival_order_never_changes_rows() -> None:
    view = make_view(
        {
            "latest": (Float64, Latest("v")),
            "recent": (Array(Float64), LastK("v", 3)),
            "first": (Float64, First("v")),
        },
        window=Sliding(timedelta(seconds=30)),
    )
    events = [
        ev(s, user=u, v=float(v))
        for s, u, v in [(1, "a", 3), (1, "a", 9), (1, "a", 4), (5, "b", 1), (5, "b", 1), (20, "a", 2)]
    ]
    expected = view.run(events).rows
    rng = random.Random(4)
    for _ in range(10):
        rng.shuffle(events)
        assert view.run(events).rows == expected


def test_bad_events_are_dead_lettered_and_counted() -> None:
    def transform(event: dict[str, Any]) -> Any:
        if event.get("kind") == "split":
            return [{**event, "v": 1}, {**event, "v": 2}]
        if event.get("kind") == "drop":
            return None
        if event.get("kind") == "boom":
            raise RuntimeError("cannot handle this")
        if event.get("kind") == "nonsense":
            return 42
        return event

    view = make_view({"s": (Float64, Sum("v"))}, transform=transform)
    events: list[Any] = [
        ev(1, v=1.5),
        ev(2, kind="split"),
        ev(3, kind="drop"),
        "{not json",
        json.dumps(ev(4, v=2)),  # JSON text is fine
        {"user_id": "a", "v": 1},  # no time
        ev(5, kind="boom"),
        ev(6, kind="nonsense"),
        {"user_id": "a", "timestamp": "soon", "v": 1},
        ev(7, v="abc"),  # wrong type for a Float64 sum
        {"timestamp": at(seconds=8).isoformat(), "v": 1},  # no key
        ev(9, user=17, v=1),  # wrong key type (String expected)
        [1, 2],  # not an object
    ]
    result = view.run(events)
    reasons = [d.reason for d in result.dead_letters]
    assert reasons == [
        "unparseable",
        "missing_time",
        "transform_error",
        "transform_error",
        "bad_time",
        "wrong_type",
        "missing_key",
        "wrong_type",
        "unparseable",
    ]
    c = result.counts
    assert (c.input, c.aggregated, c.filtered, c.dead_lettered, c.late) == (13, 3, 1, 9, 0)
    assert c.balanced and c.rows == 4
    assert rows_by_time(result.rows)[4]["s"] == 6.5  # 1.5 + 1 + 2 + 2
    boom = result.dead_letters[2]
    assert boom.view == "test_view" and "cannot handle this" in boom.detail
    assert json.loads(boom.raw)["kind"] == "boom" and boom.event_time == at(seconds=5)
    assert json.loads(result.dead_letters[0].to_json())["raw"] == "{not json"


def test_lateness_in_arrival_order() -> None:
    view = make_view({"n": (Int64, Count())})
    arrivals = [ev(100), ev(96), ev(94), ev(90), ev(101), ev(95)]
    strict = run_reference(view.plan, arrivals, lateness=Lateness(5000, 0))
    # watermark 95 after t=100: 96 is on time, 94 and 90 are late; after 101 it is 96, so 95 is late
    assert [d.reason for d in strict.dead_letters] == ["late"] * 3
    assert [d.event_time for d in strict.dead_letters] == [at(seconds=s) for s in (94, 90, 95)]
    assert strict.counts.late == 3 and strict.counts.balanced
    lenient = run_reference(view.plan, arrivals, lateness=Lateness(5000, 2000))
    assert [d.event_time for d in lenient.dead_letters] == [at(seconds=90)]
    assert max(r["n"] for r in lenient.rows) == 5


def test_lateness_is_judged_per_source_partition() -> None:
    """DESIGN §2: each partition's watermark follows its own arrival order, so a slow partition's
    events are not late against a fast one's; within a partition the usual rule holds."""
    view = make_view({"n": (Int64, Count())})
    fast = [ev(100), ev(101), ev(102)]
    slow = [ev(50), ev(51), ev(40), ev(52)]  # 40 is late within its own partition
    arrivals = [PartitionedEvent(0, e) for e in fast] + [PartitionedEvent(1, e) for e in slow]
    split = run_reference(view.plan, arrivals, lateness=Lateness(5000, 0))
    assert [d.event_time for d in split.dead_letters] == [at(seconds=40)]
    assert split.counts.late == 1 and split.counts.balanced
    merged = run_reference(view.plan, fast + slow, lateness=Lateness(5000, 0))  # one partition
    assert merged.counts.late == 4
    every = run_reference(view.plan, [e for e in fast + slow if e != ev(40)])
    assert split.rows == every.rows


def _pit_lookup(rows: list[dict[str, Any]], user: str, t_ms: int) -> dict[str, Any] | None:
    best = None
    for row in rows:
        if row["user_id"] == user and row[EVENT_TIMESTAMP] <= ms_to_datetime(t_ms):
            if best is None or row[EVENT_TIMESTAMP] > best[EVENT_TIMESTAMP]:
                best = row
    return best


def _direct_value(
    kind: str, size: int, hop: int, events: list[tuple[str, int, int]], user: str, t: int
) -> tuple[int, int]:
    """(count, sum) at time t, straight from the definitions in DESIGN §2."""
    if kind == "continuous":
        covered = [v for u, e, v in events if u == user and t - size < e <= t]
    elif kind == "hopping":
        b = (t // hop) * hop  # the latest window end at or before t
        covered = [v for u, e, v in events if u == user and b - size <= e < b]
    else:
        covered = [v for u, e, v in events if u == user and e <= t]
    return len(covered), sum(covered)


@settings(max_examples=150, deadline=None)
@given(
    kind=st.sampled_from(["continuous", "hopping", "lifetime"]),
    size_hops=st.integers(1, 4),
    hop=st.integers(1, 7),
    events=st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 60), st.integers(-5, 5)),
        min_size=1,
        max_size=25,
    ),
)
def test_point_in_time_lookup_equals_window_value(
    kind: str, size_hops: int, hop: int, events: list[tuple[str, int, int]]
) -> None:
    """The latest emitted row at or before any t holds exactly the value the window defines at t."""
    hop_ms = hop * 1000
    size_ms = size_hops * hop_ms
    window = {
        "continuous": Sliding(timedelta(milliseconds=size_ms)),
        "hopping": Sliding(timedelta(milliseconds=size_ms), timedelta(milliseconds=hop_ms)),
        "lifetime": None,
    }[kind]
    view = make_view({"n": (Int64, Count()), "s": (Int64, Sum("v"))}, window=window)
    in_ms = [(u, e * 1000, v) for u, e, v in events]
    rows = view.run([{"user_id": u, "timestamp": ms_to_datetime(e), "v": v} for u, e, v in in_ms]).rows
    probes = {p + d for _, e, _ in in_ms for p in (e, e + size_ms, e + hop_ms) for d in (-1, 0, 1)}
    for user in ("a", "b"):
        for probe in sorted(probes):
            row = _pit_lookup(rows, user, probe)
            got = (0, 0) if row is None else (row["n"], row["s"])
            assert got == _direct_value(kind, size_ms, hop_ms, in_ms, user, probe), (user, probe)


def test_keys_are_separate_and_rows_carry_keys() -> None:
    view = make_view({"n": (Int64, Count())}, window=Sliding(timedelta(seconds=5)))
    rows = view.run([ev(1, user="a"), ev(2, user="b"), ev(3, user="a")]).rows
    assert {(r["user_id"], r[EVENT_TIMESTAMP], r["n"]) for r in rows} == {
        ("a", at(seconds=1), 1),
        ("a", at(seconds=3), 2),
        ("a", at(seconds=6), 1),
        ("a", at(seconds=8), 0),
        ("b", at(seconds=2), 1),
        ("b", at(seconds=7), 0),
    }
    assert String.name == "String"
