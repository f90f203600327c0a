"""Reference-engine throughput against DuckDB computing the same rows, checked equal.

The view is the example's continuous 7-day count and sum per user, with the rows where events
leave the window. DuckDB computes them with one SQL range join; both results are compared row by
row (counts exactly, sums within 1e-9 relative) before any figure is printed.

    python benchmarks/reference_engine.py [--events 200000] [--users 2000] [--days 30]
"""

from __future__ import annotations

import argparse
import math
import random
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa

from featurestore import (
    Aggregations,
    Count,
    Entity,
    Field,
    FileStreamSource,
    Float64,
    Int64,
    Sliding,
    String,
    Sum,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.plan import EVENT_TIMESTAMP
from transforms.timeutil import datetime_to_ms

SIZE = timedelta(days=7)


@stream_feature_view(
    entities=[Entity(name="user", join_keys=["user_id"])],
    schema=[Field("user_id", String), Field("n", Int64), Field("s", Float64)],
    source=FileStreamSource(name="payments", path="unused", history="unused"),
)
def payments_7d(ctx: Any, inputs: Any) -> Any:
    return UnifiedTransformer(
        ctx, window=Sliding(SIZE), aggregator=Aggregations(n=Count(), s=Sum("amount"))
    ).run(inputs)


SQL = """
WITH times AS (
    SELECT DISTINCT user_id, ts AS t FROM events
    UNION
    SELECT DISTINCT user_id, ts + $size FROM events
)
SELECT times.user_id, times.t, count(e.ts) AS n, coalesce(sum(e.amount), 0.0) AS s
FROM times LEFT JOIN events e
  ON e.user_id = times.user_id AND e.ts > times.t - $size AND e.ts <= times.t
GROUP BY times.user_id, times.t
ORDER BY times.user_id, times.t
"""


def generate(n: int, users: int, days: int) -> list[dict[str, Any]]:
    rng = random.Random(1)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    span = days * 86_400_000
    return [
        {
            "user_id": f"u{rng.randrange(users):05d}",
            "timestamp": start + timedelta(milliseconds=rng.randrange(span)),
            "amount": round(rng.uniform(1, 500), 2),
        }
        for _ in range(n)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()

    events = generate(args.events, args.users, args.days)
    started = time.perf_counter()
    rows = payments_7d.run(events).rows
    reference_s = time.perf_counter() - started

    table = pa.table(
        {
            "user_id": [e["user_id"] for e in events],
            "ts": [datetime_to_ms(e["timestamp"]) for e in events],
            "amount": [e["amount"] for e in events],
        }
    )
    con = duckdb.connect()
    con.register("events", table)
    started = time.perf_counter()
    expected = con.execute(SQL, {"size": int(SIZE.total_seconds() * 1000)}).fetchall()
    duckdb_s = time.perf_counter() - started

    got = sorted((r["user_id"], datetime_to_ms(r[EVENT_TIMESTAMP]), r["n"], r["s"]) for r in rows)
    assert len(got) == len(expected), (len(got), len(expected))
    for mine, theirs in zip(got, expected, strict=True):
        assert mine[:3] == tuple(theirs[:3]), (mine, theirs)
        assert math.isclose(mine[3], theirs[3], rel_tol=1e-9, abs_tol=1e-9), (mine, theirs)

    print(f"{args.events} events, {args.users} users, {args.days} days -> {len(rows)} rows (equal)")
    print(f"reference engine: {reference_s:8.2f} s  {args.events / reference_s:12,.0f} events/s")
    print(f"duckdb SQL:       {duckdb_s:8.2f} s  {args.events / duckdb_s:12,.0f} events/s")
    print(f"reference / duckdb time: {reference_s / duckdb_s:.1f}x")


if __name__ == "__main__":
    main()
