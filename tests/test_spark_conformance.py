"""The Spark engine gives exactly the reference engine's rows, dead letters and counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance import (
    FLOAT_FEATURES,
    MERGED_PER_HOP,
    WINDOWS,
    assert_same_result,
    assert_same_rows,
    cancelling_events,
    conformance_view,
    generate_events,
    tied_events,
    ties_per_key_and_time,
    write_events,
)
from conftest import make_view

from backfill.history import read_history
from backfill.spark_session import spark_session
from featurestore import Runner

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    session = spark_session("local[2]", "mlfs-tests")
    yield session


CASES = [
    # (seed, event transform, typed time column): with a Python transform, or an untyped time
    # column, every event takes the row path; otherwise clean rows take the vectorised path.
    (1, True, False),
    (2, True, False),
    (3, False, True),
    (4, False, False),
    (5, "declarative", True),  # a Select transform, vectorised
]


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize(("seed", "transform", "typed_time"), CASES)
def test_spark_rows_equal_reference(
    spark: Any, tmp_path: Path, window: str, seed: int, transform: bool | str, typed_time: bool
) -> None:
    view = conformance_view(window, transform)
    path = write_events(generate_events(seed), tmp_path / "events.parquet", typed_time)

    check_spark(view, view.run(read_history(path)), spark.read.parquet(str(path)))


@pytest.mark.parametrize("window", ["hopping", "tumbling"])
def test_hops_merged_before_the_window_equal_reference(spark: Any, tmp_path: Path, window: str) -> None:
    view = conformance_view(window, "declarative", MERGED_PER_HOP)  # duckdb_windows.per_hop
    events = generate_events(5) + tied_events(29)
    path = write_events(events, tmp_path / "events.parquet", True)
    check_spark(view, view.run(read_history(path)), spark.read.parquet(str(path)))


def check_spark(view: Any, expected: Any, frame: Any) -> None:
    """``view`` on Spark over ``frame`` gives the reference's rows, counts and dead letters."""
    result = view.run(frame, Runner.SPARK)
    rows = result.rows.toArrow().to_pylist()
    assert_same_result(view, expected, rows, result.counts, result.dead_letter_records(view.name))
    result.release()


@pytest.mark.parametrize(
    ("window", "transform", "typed_time"),
    [
        ("continuous", "row", False),
        ("continuous_short", "declarative", True),
        ("hopping", "none", False),
        ("tumbling", "row", True),
        ("lifetime", "declarative", False),
        ("lifetime", "none", True),
    ],
)
def test_ties_across_many_history_files_equal_reference(
    spark: Any, tmp_path: Path, window: str, transform: str, typed_time: bool
) -> None:
    # Many events of one key at one time (and at other events' leave times), in 25 files.
    view = conformance_view(window, transform)
    events = tied_events(29)
    assert ties_per_key_and_time(events) >= 10
    history = tmp_path / "history"
    for number, first in enumerate(range(0, len(events), 48)):
        write_events(events[first : first + 48], history / f"part-{number:03d}.parquet", typed_time)
    check_spark(view, view.run(read_history(history)), spark.read.parquet(str(history)))


@pytest.mark.parametrize("window", ["continuous", "hopping", "lifetime"])
def test_float_aggregates_that_cancel_equal_reference(spark: Any, tmp_path: Path, window: str) -> None:
    # The events on which Flink's own SUM and VAR_POP drifted (tests/test_flink_exact.py).
    view = make_view(FLOAT_FEATURES, window=WINDOWS[window](), name=f"cancel_{window}")
    events = cancelling_events(3)
    path = write_events(events, tmp_path / "events.parquet")
    result = view.run(spark.read.parquet(str(path)), Runner.SPARK)
    assert_same_rows(view, view.run(events).rows, result.rows.toArrow().to_pylist())
    result.release()


@pytest.mark.parametrize(
    ("window", "transform"), [("continuous", "none"), ("tumbling", "none"), ("hopping", "declarative")]
)
def test_clean_rows_prepared_in_the_jvm_equal_reference(
    spark: Any, tmp_path: Path, window: str, transform: str
) -> None:
    """Without an event transform or with a ``Select``, clean rows never reach Python
    (``spark_clean``, ``spark_expressions``); NaN values count as null there too, events the
    ``Select`` drops are counted as filtered, and the rows Spark SQL leaves to Python still
    become dead letters."""
    from transforms.engines.spark_clean import clean_rows

    view = conformance_view(window, transform)
    events = generate_events(7)
    for i, event in enumerate(events):
        if i % 9 == 0:
            event["v"] = float("nan")
    path = write_events(events, tmp_path / "events.parquet", typed_time=True)
    frame = spark.read.parquet(str(path))
    fast = clean_rows(view.plan, frame, "_kind", "_first", "_ts")
    assert fast is not None and 0 < fast[0].filter("_kind = 0").count() < len(events)
    if transform == "declarative":
        assert fast[0].filter("_kind = 2").count() > 0

    expected = view.run(read_history(path))
    result = view.run(frame, Runner.SPARK)
    assert_same_rows(view, expected.rows, result.rows.toArrow().to_pylist())
    assert result.counts == expected.counts and result.counts.dead_lettered > 0
    result.release()


@pytest.mark.parametrize("transform", ["none", "declarative"])
def test_a_sources_event_time_range_equals_reference(spark: Any, tmp_path: Path, transform: str) -> None:
    # Events before the source's first accepted time are bad_time on the JVM path too.
    from datetime import timedelta

    from conformance import BASE, FEATURES, TRANSFORMS

    from featurestore import FileStreamSource

    source = FileStreamSource(
        name="events",
        path="stream",
        history="history.parquet",
        event_time_range=(BASE + timedelta(seconds=20), BASE + timedelta(seconds=50)),
    )
    view = make_view(dict(FEATURES), WINDOWS["continuous"](), TRANSFORMS[transform], "ranged", source)
    path = write_events(generate_events(12), tmp_path / "events.parquet", typed_time=True)
    expected = view.run(read_history(path))
    assert sum(d.reason == "bad_time" for d in expected.dead_letters) > 100
    check_spark(view, expected, spark.read.parquet(str(path)))


def test_a_key_hot_enough_for_running_totals_equals_reference(spark: Any, tmp_path: Path) -> None:
    """A key with more rows than ``RANGE_ROWS_PER_KEY`` takes the kernel's running totals inside its
    Spark partition (workers read the module's own threshold: nothing is patched)."""
    from test_running_totals import TOTALS

    from transforms.engines.duckdb_windows import RANGE_ROWS_PER_KEY

    events = hot_running_events(RANGE_ROWS_PER_KEY + 1000)
    view = make_view(TOTALS, window=WINDOWS["continuous_short"](), name="spark_totals")
    path = write_events(events, tmp_path / "events.parquet")
    check_spark(view, view.run(read_history(path)), spark.read.parquet(str(path)))


def hot_running_events(n: int) -> list[dict[str, Any]]:
    """One key with ``n`` events (ties several per millisecond, nulls, values that cancel in
    quarters) beside a cold one."""
    import random
    from datetime import timedelta

    from conformance import BASE

    rng = random.Random(17)
    return [
        {
            "user_id": "hot" if i % 10 else "cold",
            "timestamp": (BASE + timedelta(milliseconds=rng.randrange(0, 40_000, 3))).isoformat(),
            "v": rng.choice([None, 1e17, -3e16, 0.25, -1.5, 1e9 + 0.125]),
            "i": rng.choice([None, 1, 2, -3]),
            "tag": None,
            "kind": "keep",
        }
        for i in range(n)
    ]
