"""The embedded engine (DuckDB, in process; the backfill default) gives exactly the reference
engine's rows, dead letters and counts, hot keys included."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conformance import (
    BASE,
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
from featurestore import Runner
from transforms.engines import duckdb_windows
from transforms.engines.duckdb_windows import per_hop

CASES = [(1, "row", False), (3, "none", True), (4, "none", False), (5, "declarative", True)]


@pytest.fixture(autouse=True, params=["range", "rows"])
def frames(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every case on both frame lowerings of the kernel: DuckDB's ``RANGE`` frames (what these few
    rows per key get) and ``ROWS`` frames found by the as-of join (what hot keys get; the running
    totals hot keys of count/sum/mean views take are tested in ``test_running_totals``)."""
    if request.param == "rows":
        monkeypatch.setattr(duckdb_windows, "RANGE_ROWS_PER_KEY", 0)
        monkeypatch.setattr(duckdb_windows, "RUNNING_TOTALS", False)
    return str(request.param)


def check_embedded(view: Any, expected: Any, history: Path) -> None:
    result = view.run(history, Runner.EMBEDDED)
    assert_same_result(view, expected, result.rows, result.counts, result.dead_letters)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize(("seed", "transform", "typed_time"), CASES)
def test_embedded_rows_equal_reference(
    tmp_path: Path, window: str, seed: int, transform: str, typed_time: bool
) -> None:
    view = conformance_view(window, transform)
    path = write_events(generate_events(seed), tmp_path / "events.parquet", typed_time)
    check_embedded(view, view.run(read_history(path)), path)


@pytest.mark.parametrize("window", sorted(WINDOWS))
@pytest.mark.parametrize("transform", ["row", "none", "declarative"])
def test_ties_across_many_history_files_equal_reference(tmp_path: Path, window: str, transform: str) -> None:
    view = conformance_view(window, transform)
    events = tied_events(29)
    assert ties_per_key_and_time(events) >= 10
    history = tmp_path / "history"
    for number, first in enumerate(range(0, len(events), 48)):
        write_events(events[first : first + 48], history / f"part-{number:03d}.parquet", transform == "none")
    check_embedded(view, view.run(read_history(history)), history)


@pytest.mark.parametrize("window", ["continuous", "hopping", "lifetime"])
@pytest.mark.parametrize("seed", [3, 7])
def test_float_aggregates_that_cancel_equal_reference(tmp_path: Path, window: str, seed: int) -> None:
    # Seed 7 holds three values near 1e9 that differ in their last bits alone in a window: their
    # variance in doubles (any order) is off in the seventh digit; the exact one is expected.
    view = make_view(FLOAT_FEATURES, window=WINDOWS[window](), name=f"cancel_{window}")
    events = cancelling_events(seed)
    path = write_events(events, tmp_path / "events.parquet")
    assert_same_rows(view, view.run(events).rows, view.run(path, Runner.EMBEDDED).rows)


def hot_key_events(seed: int, n: int = 800) -> list[dict[str, Any]]:
    """Two keys, one with nine events in ten, hundreds per window, several per millisecond (the
    reference refolds every window, so more would only slow it)."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        when = BASE + timedelta(milliseconds=rng.randrange(0, 20_000, 7))
        events.append(
            {
                "user_id": "hot" if rng.random() < 0.9 else "cold",
                "timestamp": when.isoformat(),
                "v": rng.choice([None, 1.5, -2.25, 3.0, 0.5]),
                "i": rng.choice([None, 1, 2, -3]),
                "tag": rng.choice([None, "a", "b", "c", "d"]),
                "kind": "keep",
            }
        )
    return events


@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_hot_keys_equal_reference(tmp_path: Path, window: str) -> None:
    view = conformance_view(window, "none")
    events = hot_key_events(11)
    path = write_events(events, tmp_path / "events.parquet")
    check_embedded(view, view.run(read_history(path)), path)


def per_hop_events(kind: str) -> list[dict[str, Any]]:
    """Generated (every outcome), tied, hot-key and cancelling events for the per-hop merge."""
    if kind == "generated":
        return generate_events(5)
    if kind == "tied":
        return tied_events(29)
    if kind == "hot":
        return hot_key_events(13)
    return cancelling_events(7)


@pytest.mark.parametrize("window", ["hopping", "tumbling"])
@pytest.mark.parametrize("kind", ["generated", "tied", "hot", "cancelling"])
def test_hops_merged_before_the_window_equal_reference(tmp_path: Path, window: str, kind: str) -> None:
    view = conformance_view(window, "declarative" if kind == "generated" else "none", MERGED_PER_HOP)
    assert per_hop(view.plan) and not per_hop(conformance_view(window, "none").plan)
    path = write_events(per_hop_events(kind), tmp_path / "events.parquet")
    check_embedded(view, view.run(read_history(path)), path)


def test_an_error_while_reading_events_reaches_the_caller_as_itself() -> None:
    """Stage 1 streams into DuckDB, which would report a failing input as its own error."""
    import duckdb
    import pyarrow as pa

    from transforms.engines.duckdb_windows import reads_once
    from transforms.engines.embedded import PreparedStream, load_prepared, streamed_features

    def batches() -> Any:
        yield pa.record_batch({"timestamp": pa.array([1], pa.int64())})
        raise OSError("the history file went away")

    with pytest.raises(OSError, match="went away"):
        load_prepared(duckdb.connect(), conformance_view("continuous").plan, "v", batches())
    plan = conformance_view("tumbling", "none", MERGED_PER_HOP).plan
    assert reads_once(plan)  # its rows go from stage 1 into the kernel's one query
    with pytest.raises(OSError, match="went away"):
        streamed_features(duckdb.connect(), plan, PreparedStream(plan, "v", batches()))


@pytest.mark.parametrize("hot", [False, True])
def test_an_integer_sum_past_its_type_is_a_definition_error_naming_the_view_and_feature(
    hot: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Sum declared Int64 whose window total passes 2**63 - 1 is the view's error on the reference
    and the embedded engine alike (frames, or running totals for a hot key), not an engine's own."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from featurestore import Count, Int64, Sum
    from transforms.engines.embedded import ENGINE
    from transforms.errors import DefinitionError

    if hot:
        monkeypatch.setattr(duckdb_windows, "RANGE_ROWS_PER_KEY", 0)
    view = make_view({"total": (Int64, Sum("i")), "n": (Int64, Count())}, name="big_sums")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    events = [{"user_id": "u1", "i": 2**62, "timestamp": start + timedelta(seconds=k)} for k in range(3)]
    wanted = (
        r"view 'big_sums': a value of feature 'total' \(sum\(i\), Int64\) does not fit its type .*Float64$"
    )
    with pytest.raises(DefinitionError, match=wanted):
        view.run(events)
    with pytest.raises(DefinitionError, match=wanted):
        ENGINE.run_table(view.plan, pa.Table.from_pylist(events))
