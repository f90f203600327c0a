"""The Flink engine gives exactly the reference engine's rows, dead letters and counts: replaying
bounded history, and streaming with watermarks, allowed lateness and late events."""

from __future__ import annotations

import random
from typing import Any

import pytest
from conformance import (
    WINDOWS,
    arrival_order,
    assert_same_result,
    conformance_view,
    generate_events,
    tied_events,
    ties_per_key_and_time,
)

from featurestore import Runner
from featurestore.view import StreamFeatureView
from transforms.events import Lateness

pytestmark = [
    pytest.mark.slow,
    # PyFlink's Python worker thread reports its gRPC channel closing at the end of every job.
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def check_same(view: StreamFeatureView, events: list[Any], lateness: Lateness | None) -> Any:
    got = view.run(events, Runner.FLINK, lateness=lateness)
    assert_same_flink(view, view.run(events, lateness=lateness), got)
    return got


def assert_same_flink(view: StreamFeatureView, expected: Any, got: Any) -> None:
    """Rows (``run_flink`` refuses two rows of one key and time), counts and dead letters."""
    assert_same_result(view, expected, got.rows, got.counts, got.dead_letters)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize(("seed", "transform"), [(1, "row"), (2, "declarative")])
def test_bounded_replay_equals_reference(window: str, seed: int, transform: str) -> None:
    # Events in random order, no lateness: every event counts (as in a backfill).
    check_same(conformance_view(window, transform), generate_events(seed), None)


@pytest.mark.parametrize(
    ("window", "transform"),
    [("continuous", "row"), ("hopping", "row"), ("lifetime", "row"), ("continuous", "declarative")],
)
def test_streaming_with_lateness_equals_reference(window: str, transform: str) -> None:
    # Disorder up to 2 s; bound 1 s plus 1.5 s allowed: some events are late only without the
    # allowance, and 15 stragglers (those with a usable time) are late under any bound. A row
    # function gives stage 1's rows as arrays, a declarative transform as plain columns
    # (``flink_stage1.single_row``).
    events = arrival_order(generate_events(7), seed=7, jitter_ms=2000, late=15)
    got = check_same(conformance_view(window, transform), events, Lateness(1000, 1500))
    assert got.counts.late >= 10  # the stragglers with a usable time
    strict = check_same(conformance_view(window, transform), events, Lateness(1000, 0))
    assert strict.counts.late > got.counts.late  # the allowance kept some events in


def test_views_of_one_source_share_stage_1_and_each_equals_reference() -> None:
    # One job for four views (a row function, Selects, no transform), as serve-stream builds it: the
    # declarative views share a stage 1 in the JVM, the row function has the Python one; each view's
    # rows, counts and dead letters are its own reference's; some events are late.
    from transforms.engines.flink import run_flink_views

    views = [
        conformance_view("continuous", "row"),
        conformance_view("hopping", "declarative"),
        conformance_view("lifetime", "none"),
        conformance_view("tumbling", "declarative"),
    ]
    events = arrival_order(generate_events(11), seed=11, jitter_ms=2000, late=15)
    lateness = Lateness(1000, 1500)
    results = run_flink_views([v.plan for v in views], events, lateness)
    for view, got in zip(views, results, strict=True):
        assert_same_flink(view, view.run(events, lateness=lateness), got)
        assert got.counts.late >= 10


def test_lateness_is_judged_per_source_partition_as_the_reference_does() -> None:
    # DESIGN §2: three partitions, each read by its own stage 1; listed one after another, so over
    # one merged arrival order most events of the second and third would be late, but against
    # their own partition's watermark only the stragglers are. Rows, counts and late letters
    # (with each partition's watermark in their detail) are the reference's given the same
    # partitions.
    from transforms.engines.flink import run_flink_views
    from transforms.events import PartitionedEvent

    views = [conformance_view("continuous", "row"), conformance_view("tumbling", "declarative")]
    rng = random.Random(23)
    events = arrival_order(generate_events(23), seed=23, jitter_ms=2000, late=15)
    parts: list[list[Any]] = [[], [], []]
    for event in events:
        parts[rng.randrange(3)].append(event)
    arrivals = [PartitionedEvent(p, e) for p in (0, 1) for e in parts[p]]
    arrivals += [PartitionedEvent(2, e) for e in parts[2]]
    lateness = Lateness(1000, 1500)
    results = run_flink_views([v.plan for v in views], arrivals, lateness)
    merged = views[0].run([a.raw for a in arrivals], lateness=lateness)
    for view, got in zip(views, results, strict=True):
        assert_same_flink(view, view.run(arrivals, lateness=lateness), got)
        assert 0 < got.counts.late < merged.counts.late // 3


@pytest.mark.parametrize("transform", ["row", "declarative", "none"])
def test_ties_read_from_many_files_give_one_row_per_key_and_time(transform: str) -> None:
    # Many events of one key at one time (and events at another's leave time), read from 25 files
    # by Flink's file source as serve-stream reads them: every window kind gives the reference's
    # rows, one per key and time. Flink's OVER gives a row per tied input, which this caught.
    from transforms.engines.flink import run_flink_views

    views = [conformance_view(window, transform) for window in sorted(WINDOWS)]
    events = tied_events(13)
    assert ties_per_key_and_time(events) >= 10
    results = run_flink_views([v.plan for v in views], events, files=25)
    for view, got in zip(views, results, strict=True):
        assert_same_flink(view, view.run(events), got)


def test_tied_stream_from_files_with_lateness_equals_reference() -> None:
    # The same, streamed: 25 files read in name order decide lateness as the reference does over
    # the events in that order (disorder beyond the bound, and 20 stragglers, are late).
    from transforms.engines.flink import run_flink_views

    views = [conformance_view(window, "row") for window in sorted(WINDOWS)]
    events = arrival_order(tied_events(17), seed=17, jitter_ms=3000, late=20)
    lateness = Lateness(1000, 1000)
    results = run_flink_views([v.plan for v in views], events, lateness, files=25)
    for view, got in zip(views, results, strict=True):
        assert_same_flink(view, view.run(events, lateness=lateness), got)
        assert got.counts.late >= 20


def test_hostile_lines_read_from_files_equal_reference() -> None:
    # Deep nesting, bytes that are not UTF-8 (Flink's reader marks them, as event_text does),
    # infinities, huge values, odd times: the job goes on, and every line has the reference's outcome.
    from test_hostile_events import hostile_lines

    from transforms.engines.flink import run_flink_views

    views = [conformance_view(window, transform) for window, transform in HOSTILE_VIEWS]
    lines = hostile_lines(random.Random(8), 400)
    lateness = Lateness(1000, 0)
    results = run_flink_views([v.plan for v in views], lines, lateness, files=7)
    for view, got in zip(views, results, strict=True):
        expected = view.run(lines, lateness=lateness)
        assert_same_flink(view, expected, got)
        assert {d.detail for d in got.dead_letters} >= {"not valid UTF-8"}


HOSTILE_VIEWS = [("continuous", "row"), ("lifetime", "declarative"), ("tumbling", "none")]
