"""MLFS's window operator for continuous and lifetime windows on Flink (``flink_window``): the
reference's rows for hot keys with thousands of events in a window and many ties, for typed
inputs the conformance view does not hold, and a job plan without Flink's ``OVER`` aggregate."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from typing import Any

import pytest
from conformance import BASE, FEATURES, arrival_order, conformance_view, tied_events, ties_per_key_and_time
from conftest import make_view
from test_flink_conformance import assert_same_flink, check_same

from transforms.aggregations import Count, CountDistinct, First, LastK, Latest, Max, Min, Sum
from transforms.dtypes import Array, Bool, Int32, Int64, String
from transforms.events import Lateness
from transforms.windows import Sliding

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def hot_key_events(seed: int, n: int) -> list[dict[str, Any]]:
    """``tied_events`` with one key holding most of them: about a thousand events in each 10 s
    window of the hot key, most of them tied with others at their second."""
    return tied_events(seed, n=n, keys=3)


@pytest.mark.parametrize("window", ["continuous", "lifetime"])
def test_hot_keys_through_the_window_operator_equal_reference(window: str) -> None:
    events = hot_key_events(21, 4000)
    assert ties_per_key_and_time(events) >= 50
    check_same(conformance_view(window, "none"), events, None)
    streamed = arrival_order(events, seed=21, jitter_ms=3000, late=25)
    got = check_same(conformance_view(window, "declarative"), streamed, Lateness(1000, 1000))
    assert got.counts.late >= 10


def test_typed_inputs_order_and_sum_as_the_reference() -> None:
    """Int32 sums, booleans' extremes, strings ordered by code point (Java's own order puts U+FFFF
    above U+10000), distinct counts of -0.0 and 0.0, ties of last_k by value."""
    features = {
        "sum32": (Int32, Sum("small")),
        "n": (Int64, Count()),
        "any_flag": (Bool, Max("flag")),
        "all_flag": (Bool, Min("flag")),
        "max_tag": (String, Max("tag")),
        "min_tag": (String, Min("tag")),
        "first_tag": (String, First("tag")),
        "latest_tag": (String, Latest("tag")),
        "last3_tag": (Array(String), LastK("tag", 3)),
        "distinct_x": (Int64, CountDistinct("x")),
    }
    view = make_view(features, window=Sliding(timedelta(seconds=4)), name="typed_window")
    rng = random.Random(5)
    tags = ["\uffff", "\U00010000", "\ue000", "a", "é", None]
    events = []
    for i in range(600):
        events.append(
            {
                "user_id": f"u{rng.randrange(3)}",
                "timestamp": (BASE + timedelta(milliseconds=250 * rng.randrange(60))).isoformat(),
                "small": rng.choice([40_000_000, -7, 7, None]),
                "flag": rng.choice([True, False, None]),
                "tag": rng.choice(tags),
                "x": rng.choice([0.0, -0.0, 1.5, None]),
                "seq": i,
            }
        )
    check_same(view, events, None)
    check_same(view, arrival_order(events, seed=5, jitter_ms=800, late=10), Lateness(500, 200))


def test_a_continuous_views_job_has_no_over_aggregate() -> None:
    """The job's plan: stage 2 of a continuous view is MLFS's window operator, not Flink's OVER
    (whose bounded RANGE frame revisits a key's rows at each new time)."""
    from transforms.engines.flink import run_flink_views

    plan_text: list[str] = []
    view = conformance_view("continuous", "none", {"n": FEATURES["n"]})
    events = hot_key_events(3, 200)
    got = run_flink_views([view.plan], events, None, inspect=plan_text.append)[0]
    assert_same_flink(view, view.run(events), got)
    nodes = json.loads(plan_text[0])["nodes"]
    assert [n for n in nodes if n["type"] == "prepared0-window"]
    # Stage 1's arrival order is an OVER by processing time; the window's would be a RANGE frame.
    overs = [n["contents"] for n in nodes if n["type"].startswith("OverAggregate")]
    assert overs and all("ROWS BETWEEN UNBOUNDED PRECEDING" in c and "RANG" not in c for c in overs)
