"""The kernel's running totals (hot keys of continuous and lifetime count/sum/mean views) against the
reference: generated, tied, hot-key and cancelling events, and values whose exact totals would not fit
(then the frame lowering runs instead)."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from conformance import (
    BASE,
    WINDOWS,
    assert_same_result,
    cancelling_events,
    write_events,
)
from conftest import make_view
from test_embedded_conformance import per_hop_events

from backfill.history import arrow_batches, read_history
from featurestore import Count, Float64, Int64, Mean, Sum
from transforms.engines import duckdb_windows
from transforms.engines.duckdb_windows import running_total_scales
from transforms.engines.embedded import load_prepared
from transforms.plan import Runner

TOTALS = {
    "n": (Int64, Count()),
    "n_v": (Int64, Count("v")),
    "sum_v": (Float64, Sum("v")),
    "sum_i": (Int64, Sum("i")),
    "mean_v": (Float64, Mean("v")),
    "mean_i": (Float64, Mean("i")),
}


@pytest.fixture(autouse=True)
def every_key_is_hot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(duckdb_windows, "RANGE_ROWS_PER_KEY", 0)


def events_of(kind: str) -> list[dict[str, Any]]:
    if kind != "cancelling":
        return per_hop_events(kind)
    # Large values entering and leaving beside small ones; the small ones in quarters, so the exact
    # totals fit (the full set's smallest values would not: see the last test).
    return [
        {**e, "v": e["v"] if e["v"] is None or abs(e["v"]) >= 1 else round(e["v"] * 4) / 4}
        for e in cancelling_events(7)
    ]


def scales_of(view: Any, history: Path) -> dict[str, int] | None:
    con = duckdb.connect()
    load_prepared(con, view.plan, view.name, arrow_batches([history]))
    return running_total_scales(con, view.plan, "prepared")


@pytest.mark.parametrize("window", ["continuous", "continuous_short", "lifetime"])
@pytest.mark.parametrize("kind", ["generated", "tied", "hot", "cancelling"])
def test_running_totals_equal_reference(tmp_path: Path, window: str, kind: str) -> None:
    view = make_view(TOTALS, window=WINDOWS[window](), name=f"totals_{window}")
    path = write_events(events_of(kind), tmp_path / "events.parquet")
    assert scales_of(view, path) is not None  # the running totals run, not the frames
    result = view.run(path, Runner.EMBEDDED)
    assert_same_result(view, view.run(read_history(path)), result.rows, result.counts, result.dead_letters)


@pytest.mark.parametrize("kind", ["wide", "cancelling"])
def test_values_whose_totals_would_not_fit_take_the_frames(tmp_path: Path, kind: str) -> None:
    rng = random.Random(3)
    events = [
        {
            "user_id": f"k{rng.randrange(2)}",
            "timestamp": (BASE + timedelta(milliseconds=rng.randrange(0, 20_000))).isoformat(),
            "v": rng.choice([1e-300, 3e300, -2.5, 1e-20, None]),
            "i": rng.choice([None, 2**40, -(2**40), 5]),
            "tag": None,
            "kind": "keep",
        }
        for _ in range(300)
    ]
    if kind == "cancelling":  # 1e17 beside values near 1e-3: 128 bits
        events = cancelling_events(7)
    view = make_view(TOTALS, window=WINDOWS["continuous"](), name="totals_wide")
    path = write_events(events, tmp_path / "events.parquet")
    assert scales_of(view, path) is None
    result = view.run(path, Runner.EMBEDDED)
    assert_same_result(view, view.run(read_history(path)), result.rows, result.counts, result.dead_letters)
