"""The engine-conformance harness: generated events, views over every window kind and
aggregation, and an exact comparison of two engines' rows (floats within 1e-9 relative)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import make_view

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
    Select,
    Sliding,
    Stddev,
    String,
    Sum,
    Tumbling,
    UnixTimestamp,
    Variance,
    col,
    when,
)
from featurestore.view import StreamFeatureView
from transforms.compare import diff_rows
from transforms.dtypes import Array

BASE = datetime(2026, 3, 1, tzinfo=UTC)

RAW_SCHEMA = pa.schema(
    [
        ("user_id", pa.string()),
        ("timestamp", pa.string()),
        ("v", pa.float64()),
        ("i", pa.int64()),
        ("tag", pa.string()),
        ("kind", pa.string()),
    ]
)

FEATURES = {
    "n": (Int64, Count()),
    "n_v": (Int64, Count("v")),
    "sum_v": (Float64, Sum("v")),
    "sum_i": (Int64, Sum("i")),
    "mean_v": (Float64, Mean("v")),
    "min_v": (Float64, Min("v")),
    "max_i": (Int64, Max("i")),
    "min_tag": (String, Min("tag")),
    "latest_v": (Float64, Latest("v")),
    "first_tag": (String, First("tag")),
    "latest_ts": (UnixTimestamp, Latest("timestamp")),
    "var_v": (Float64, Variance("v")),
    "svar_v": (Float64, Variance("v", sample=True)),
    "sd_i": (Float64, Stddev("i")),
    "ssd_v": (Float64, Stddev("v", sample=True)),
    "distinct_tag": (Int64, CountDistinct("tag")),
    "last3_v": (Array(Float64), LastK("v", 3)),
    "last2_tag": (Array(String), LastK("tag", 2)),
}

# The aggregations a hopping window merges per hop before windowing (``duckdb_windows.per_hop``): a
# view of only these takes that path.
MERGED_PER_HOP = {
    name: feature
    for name, feature in FEATURES.items()
    if isinstance(feature[1], (Count, Sum, Mean, Min, Max, Latest, First))
}

WINDOWS = {
    "continuous": lambda: Sliding(timedelta(seconds=10)),
    "continuous_short": lambda: Sliding(timedelta(milliseconds=1500)),
    "hopping": lambda: Sliding(timedelta(seconds=6), timedelta(seconds=2)),
    "tumbling": lambda: Tumbling(timedelta(seconds=5)),
    "lifetime": lambda: None,
}


def split_and_drop(event: dict[str, Any]) -> Any:
    """Drops, splits and fails on events the generator marks, to exercise every outcome."""
    kind = event.get("kind")
    if kind == "drop":
        return None
    if kind == "split":
        return [event, {**event, "v": None if event["v"] is None else event["v"] + 0.5, "tag": "split"}]
    if kind == "boom":
        raise ValueError("boom")
    if kind == "wrong":
        return {**event, "i": "not a number"}
    return event


# A declarative transform over the same events: drops, nulls, arithmetic, conditions.
DECLARATIVE = Select(
    where=col("kind") != "drop",
    user_id=col("user_id"),
    v=when(col("kind") == "split", col("v") + 0.5).otherwise(col("v") * 2),
    i=when(col("v") > 0, col("i") - 1).otherwise(col("i")),
    tag=when(col("tag").is_null() | (col("tag") == "a"), "z").otherwise(col("tag")),
)

TRANSFORMS: dict[str, Any] = {"none": None, "row": split_and_drop, "declarative": DECLARATIVE}


def conformance_view(
    window: str, transform: bool | str = True, features: dict[str, Any] = FEATURES
) -> StreamFeatureView:
    """A view over every aggregation (or ``features``); ``transform`` is True/"row" (a Python row
    function), "declarative" (a ``Select``), or False/"none"."""
    key = ("row" if transform else "none") if isinstance(transform, bool) else transform
    return make_view(
        dict(features),
        window=WINDOWS[window](),
        transform=TRANSFORMS[key],
        name=f"conformance_{window}",
    )


# Quarter-multiples within +-100 (they add exactly), and now and then an infinity (a wrong_type).
VALUES_OR_INFINITY = [n / 4 for n in range(-400, 400)] + [float("inf"), float("-inf")] * 3


def generate_events(seed: int, n: int = 1500, keys: int = 12) -> list[dict[str, Any]]:
    """Random events in random order: times clustered on window boundaries (multiples of
    500 ms, +-1 ms), ties, nulls, infinities, bad times, missing keys and every transform
    outcome."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        base_ms = rng.randrange(0, 120) * 500 + rng.choice([0, 0, 0, -1, 1, 250])
        when = BASE + timedelta(milliseconds=base_ms)
        stamp = when.isoformat()
        roll = rng.random()
        if roll < 0.01:
            stamp = "not a time"
        elif roll < 0.02:
            stamp = None
        events.append(
            {
                "user_id": None if rng.random() < 0.01 else f"k{rng.randrange(keys)}",
                "timestamp": stamp,
                "v": None if rng.random() < 0.15 else rng.choice(VALUES_OR_INFINITY),
                "i": None if rng.random() < 0.15 else rng.randrange(-50, 50),
                "tag": None if rng.random() < 0.15 else rng.choice("abcde"),
                "kind": rng.choices(["keep", "drop", "split", "boom", "wrong"], [85, 5, 6, 2, 2])[0],
            }
        )
    return events


def tied_events(seed: int, n: int = 1200, keys: int = 4) -> list[dict[str, Any]]:
    """Events with many ties, as real event data at minute resolution has them: a few keys (the
    first is hot, with about half the events), few distinct times (whole seconds, some on window
    boundaries, so leave markers meet events), values drawn from small sets (equal times with equal
    and unequal values), nulls, bad times and every transform outcome; in random order."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        when = BASE + timedelta(seconds=rng.randrange(0, 40))
        stamp: str | None = when.isoformat()
        roll = rng.random()
        if roll < 0.01:
            stamp = "not a time"
        elif roll < 0.02:
            stamp = None
        key = 0 if rng.random() < 0.5 else rng.randrange(keys)
        events.append(
            {
                "user_id": None if rng.random() < 0.01 else f"k{key}",
                "timestamp": stamp,
                "v": rng.choice([None, 1.0, 2.5, -1.0, 0.25, 2.5]),
                "i": rng.choice([None, 1, 2, 3, -2]),
                "tag": rng.choice([None, "a", "b", "c"]),
                "kind": rng.choices(["keep", "drop", "split", "boom", "wrong"], [85, 5, 6, 2, 2])[0],
            }
        )
    return events


def ties_per_key_and_time(events: list[dict[str, Any]]) -> int:
    """The largest number of events one key has at one time (how tied the events are)."""
    seen: dict[tuple[Any, Any], int] = {}
    for event in events:
        if event["user_id"] is not None and event["timestamp"] is not None:
            ident = (event["user_id"], event["timestamp"])
            seen[ident] = seen.get(ident, 0) + 1
    return max(seen.values(), default=0)


TYPED_TIME_SCHEMA = RAW_SCHEMA.set(1, pa.field("timestamp", pa.timestamp("us", tz="UTC")))


def write_events(events: list[dict[str, Any]], path: Path, typed_time: bool = False) -> Path:
    """Events as Parquet; with ``typed_time`` the time column is a timestamp (unparseable ones null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if typed_time:
        events = [{**e, "timestamp": _as_time(e["timestamp"])} for e in events]
    schema = TYPED_TIME_SCHEMA if typed_time else RAW_SCHEMA
    pq.write_table(pa.Table.from_pylist(events, schema=schema), path)
    return path


def _as_time(text: str | None) -> datetime | None:
    try:
        return None if text is None else datetime.fromisoformat(text)
    except ValueError:
        return None


def assert_same_rows(
    view: StreamFeatureView, expected: list[dict[str, Any]], got: list[dict[str, Any]]
) -> None:
    """Rows equal by key and feature time; integers exact, floats within 1e-9 relative."""
    problems = diff_rows(view.plan, expected, got)
    assert not problems, "\n".join(problems)


def assert_same_result(
    view: StreamFeatureView, expected: Any, rows: list[dict[str, Any]], counts: Any, letters: list[Any]
) -> None:
    """An engine's rows, counts and dead letters are the reference's (``expected``); dead letters
    match by view, reason, detail and raw input."""
    assert_same_rows(view, expected.rows, rows)
    assert counts == expected.counts and counts.balanced
    assert sorted((d.view, d.reason, d.detail, d.raw) for d in letters) == sorted(
        (d.view, d.reason, d.detail, d.raw) for d in expected.dead_letters
    )


def arrival_order(
    events: list[dict[str, Any]], seed: int, jitter_ms: int, late: int = 0
) -> list[dict[str, Any]]:
    """The events as a stream delivers them: in time order up to ``jitter_ms`` of disorder, with
    ``late`` of them held back to the end (late for any bound shorter than the data's span)."""
    rng = random.Random(seed)

    def arrival(event: dict[str, Any]) -> float:
        when = _as_time(event["timestamp"])
        base = rng.uniform(0, 60_000) if when is None else (when - BASE).total_seconds() * 1000
        return base + rng.uniform(0, jitter_ms)

    ordered = sorted(events, key=arrival)
    held = sorted(rng.sample(range(len(ordered) // 2), late))
    stragglers = [ordered[i] for i in held]
    kept = [e for i, e in enumerate(ordered) if i not in set(held)]
    return kept + stragglers


def cancelling_events(seed: int, n: int = 400) -> list[dict[str, Any]]:
    """Doubles that cancel: large values (1e17) entering and leaving windows beside small ones,
    and values near 1e9 that differ in their last bits (for the variances)."""
    rng = random.Random(seed)
    events = []
    for _ in range(n):
        when = BASE + timedelta(milliseconds=rng.randrange(0, 60) * 500 + rng.choice([0, 0, 1, -1]))
        value = rng.choice([1e17, -3e16, 1e9 + rng.randrange(8) / 8, rng.uniform(-1, 1), None])
        event = {"user_id": f"k{rng.randrange(4)}", "timestamp": when.isoformat(), "v": value}
        events.append({**event, "i": None, "tag": None, "kind": "keep"})
    return events


FLOAT_FEATURES = {
    "n": (Int64, Count("v")),
    "sum_v": (Float64, Sum("v")),
    "mean_v": (Float64, Mean("v")),
    "var_v": (Float64, Variance("v")),
    "ssd_v": (Float64, Stddev("v", sample=True)),
}
