"""The engine-conformance harness: generated events, views over every window kind and
aggregation, and an exact comparison of two engines' rows (floats within 1e-9 relative)."""

from __future__ import annotations

import math
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
    Sliding,
    Stddev,
    String,
    Sum,
    Tumbling,
    UnixTimestamp,
    Variance,
)
from featurestore.view import StreamFeatureView
from transforms.dtypes import Array
from transforms.plan import EVENT_TIMESTAMP

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


def conformance_view(window: str, transform: bool = True) -> StreamFeatureView:
    return make_view(
        dict(FEATURES),
        window=WINDOWS[window](),
        transform=split_and_drop if transform else None,
        name=f"conformance_{window}",
    )


def generate_events(seed: int, n: int = 1500, keys: int = 12) -> list[dict[str, Any]]:
    """Random events in random order: times clustered on window boundaries (multiples of
    500 ms, +-1 ms), ties, nulls, bad times, missing keys and every transform outcome."""
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
                "v": None if rng.random() < 0.15 else rng.randrange(-400, 400) / 4,
                "i": None if rng.random() < 0.15 else rng.randrange(-50, 50),
                "tag": None if rng.random() < 0.15 else rng.choice("abcde"),
                "kind": rng.choices(["keep", "drop", "split", "boom", "wrong"], [85, 5, 6, 2, 2])[0],
            }
        )
    return events


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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and type(a) is type(b)


def assert_same_rows(
    view: StreamFeatureView, expected: list[dict[str, Any]], got: list[dict[str, Any]]
) -> None:
    """Rows equal by key and feature time; integers exact, floats within 1e-9 relative."""
    keys = [*view.plan.key_names, EVENT_TIMESTAMP]

    def index(rows: list[dict[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
        out = {tuple(r[k] for k in keys): r for r in rows}
        assert len(out) == len(rows), "one row per key and feature time"
        return out

    want, have = index(expected), index(got)
    missing = sorted(set(want) - set(have))[:5]
    extra = sorted(set(have) - set(want))[:5]
    assert not missing and not extra, f"missing rows {missing}, unexpected rows {extra}"
    for ident, row in want.items():
        for feature in view.plan.features:
            a, b = row[feature.name], have[ident][feature.name]
            assert _same(a, b), f"{ident} {feature.name}: expected {a!r}, got {b!r}"
