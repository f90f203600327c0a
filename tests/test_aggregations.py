"""The aggregation monoids: hand-computed results and the monoid laws (Hypothesis)."""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from transforms.aggregations import (
    Aggregation,
    Count,
    CountDistinct,
    First,
    LastK,
    Latest,
    Max,
    Mean,
    Min,
    Stddev,
    Sum,
    Variance,
    aggregation_from_spec,
)
from transforms.dtypes import Int64, String

# (time, value) pairs, with a tie at t=3.
EVENTS = [(1, 5.0), (3, 2.0), (3, 7.0), (2, 4.0)]


def fold(agg: Aggregation, events: list[tuple[int, Any]]) -> Any:
    acc = agg.create()
    for ts, value in events:
        acc = agg.add(acc, value, ts)
    return acc


def result(agg: Aggregation, events: list[tuple[int, Any]]) -> Any:
    return agg.result(fold(agg, events))


def test_hand_computed_results() -> None:
    assert result(Count(), EVENTS) == 4
    assert result(Sum("v"), EVENTS) == 18.0
    assert result(Mean("v"), EVENTS) == 4.5
    assert result(Min("v"), EVENTS) == 2.0
    assert result(Max("v"), EVENTS) == 7.0
    assert result(Latest("v"), EVENTS) == 7.0  # tie at t=3 broken by the larger value
    assert result(First("v"), EVENTS) == 5.0
    assert result(LastK("v", k=3), EVENTS) == [7.0, 2.0, 4.0]
    assert result(CountDistinct("v"), [(1, "a"), (2, "b"), (3, "a")]) == 2
    # values 5, 2, 7, 4: mean 4.5, squared deviations 0.25 + 6.25 + 6.25 + 0.25 = 13
    assert math.isclose(result(Variance("v"), EVENTS), 13 / 4)
    assert math.isclose(result(Variance("v", sample=True), EVENTS), 13 / 3)
    assert math.isclose(result(Stddev("v"), EVENTS), math.sqrt(13 / 4))
    assert math.isclose(result(Stddev("v", sample=True), EVENTS), math.sqrt(13 / 3))


def test_empty_values() -> None:
    assert result(Count(), []) == 0
    assert result(CountDistinct("v"), []) == 0
    assert result(Sum("v"), []) == 0
    for agg in (
        Mean("v"),
        Min("v"),
        Max("v"),
        Latest("v"),
        First("v"),
        LastK("v", 2),
        Variance("v"),
        Stddev("v"),
    ):
        assert result(agg, []) is None, agg
    assert result(Variance("v", sample=True), [(1, 3.0)]) is None
    assert result(Variance("v"), [(1, 3.0)]) == 0.0


def test_output_type_checks() -> None:
    assert Count().check_output(Int64) is None
    assert Count().check_output(String) is not None
    assert Mean("v").check_output(Int64) is not None
    assert Sum("v").check_output(String) is not None
    assert LastK("v", 2).check_output(String) is not None


def test_spec_round_trip() -> None:
    for agg in (
        Count(),
        Count("x"),
        Sum("x"),
        Variance("x", sample=True),
        LastK("x", k=4),
        CountDistinct("x", dtype=Int64),
        Latest("x"),
    ):
        assert aggregation_from_spec(agg.spec()) == agg


EXACT = [
    Count(),
    Count("v"),
    Sum("v"),
    Min("v"),
    Max("v"),
    Latest("v"),
    First("v"),
    LastK("v", 3),
    CountDistinct("v", dtype=Int64),
]
FLOATING = [Mean("v"), Variance("v"), Variance("v", sample=True), Stddev("v")]

events_strategy = st.lists(st.tuples(st.integers(0, 50), st.integers(-1000, 1000)), max_size=30)


@given(events=events_strategy, cut=st.integers(0, 30), order=st.randoms(use_true_random=False))
def test_monoid_laws(events: list[tuple[int, int]], cut: int, order: Any) -> None:
    """Merging the folds of any split equals folding the whole, in any arrival order."""
    shuffled = list(events)
    order.shuffle(shuffled)
    left, right = events[:cut], events[cut:]
    for agg in EXACT:
        whole = result(agg, events)
        assert result(agg, shuffled) == whole, agg
        assert agg.result(agg.merge(fold(agg, left), fold(agg, right))) == whole, agg
        assert agg.result(agg.merge(agg.create(), fold(agg, events))) == whole, agg
    floats = [(ts, float(v)) for ts, v in events]
    for agg in FLOATING:
        whole = result(agg, floats)
        parts = [fold(agg, floats[i : i + 3]) for i in range(0, len(floats), 3)]
        merged = agg.result(reduce(agg.merge, parts, agg.create()))
        if whole is None:
            assert merged is None
        else:
            assert math.isclose(merged, whole, rel_tol=1e-9, abs_tol=1e-9), agg
