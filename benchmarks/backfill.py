"""`mlfs backfill` on Spark against DuckDB SQL computing the same rows, checked equal.

Generates N payment events over K users, 1,000 merchants and D days into the example repository
(`mlfs init`), backfills the continuous 7-day view (`user_payment_stats_7d`) and the tumbling
1-hour view (`merchant_amount_1h`) on Spark, computes the same rows with DuckDB (into an Arrow
table, so Python object creation is not counted), compares them row by row (counts exactly, floats
within 1e-9 relative) and prints events per second for both. For proportion it also times plain
Spark SQL computing the same windows (no stage 1, no writes).

    python benchmarks/backfill.py [--events 10000000] [--users 100000] [--days 30]
                                  [--master local[2]] [--chunk-days 31] [--keep]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# Run as a script, this folder comes first on sys.path, and this file's name would hide the
# `backfill` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from backfill.runner import plan_backfill, run_backfill
from backfill.spark_session import spark_session
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from featurestore.scaffold import HISTORY_SCHEMA, init_repo
from registry.apply import apply_repo

START = datetime(2026, 1, 1, tzinfo=UTC)
WEEK_MS = 7 * 86_400_000
HOUR_MS = 3_600_000

CONTINUOUS_SQL = f"""
WITH marks AS (
    SELECT user_id, ts, 1 AS one, amount, CASE WHEN status = 'failed' THEN 1 ELSE 0 END AS failed
    FROM events
    UNION ALL
    SELECT user_id, ts + {WEEK_MS}, NULL, NULL, NULL FROM events
),
framed AS (
    SELECT user_id, ts,
           count(one) OVER w AS n, coalesce(sum(amount) OVER w, 0) AS s, coalesce(sum(failed) OVER w, 0) AS f
    FROM marks
    WINDOW w AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {WEEK_MS - 1} PRECEDING AND CURRENT ROW)
)
SELECT DISTINCT ON (user_id, ts) user_id, ts, n, s, f FROM framed
"""

# The same rows as plain Spark SQL in the window formulation the engine compiles to (one sorted pass
# with an arrival and a leave frame; one grouping with enter/leave flags), run to Spark's no-op sink:
# what Spark itself costs for the windows, without stage 1 or any store write.
SPARK_CONTINUOUS_SQL = f"""
WITH ev AS (SELECT user_id, ts, amount, CASE WHEN status = 'failed' THEN 1 ELSE 0 END AS failed FROM events),
fr AS (
    SELECT user_id, ts,
           count(1) OVER a AS n, coalesce(sum(amount) OVER a, 0) AS s,
           coalesce(sum(failed) OVER a, 0) AS f, count(1) OVER l AS ln,
           coalesce(sum(amount) OVER l, 0) AS ls, coalesce(sum(failed) OVER l, 0) AS lf,
           max(ts) OVER l AS reached, lead(ts) OVER (PARTITION BY user_id ORDER BY ts) AS nxt
    FROM ev
    WINDOW a AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {WEEK_MS - 1} PRECEDING AND CURRENT ROW),
           l AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN 1 FOLLOWING AND {WEEK_MS} FOLLOWING)
)
SELECT user_id, r.ts, r.n, r.s, r.f FROM fr
LATERAL VIEW inline(array(
    named_struct('ts', ts, 'n', n, 's', s, 'f', f, 'keep', coalesce(nxt <> ts, true)),
    named_struct('ts', ts + {WEEK_MS}, 'n', ln, 's', ls, 'f', lf,
                 'keep', coalesce(nxt <> ts, true) AND coalesce(reached <> ts + {WEEK_MS}, true))
)) r AS ts, n, s, f, keep
WHERE r.keep
"""

SPARK_TUMBLING_SQL = f"""
WITH ev AS (SELECT merchant_id, amount, ts - ts % {HOUR_MS} + {HOUR_MS} AS b FROM events),
x AS (
    SELECT merchant_id, amount, e.b, e.inside FROM ev
    LATERAL VIEW inline(array(
        named_struct('b', b, 'inside', true), named_struct('b', b + {HOUR_MS}, 'inside', false)
    )) e AS b, inside
)
SELECT merchant_id, b, avg(IF(inside, amount, NULL)), max(IF(inside, amount, NULL)),
       count(IF(inside, 1, NULL))
FROM x GROUP BY 1, 2
"""

TUMBLING_SQL = f"""
WITH ev AS (SELECT merchant_id, amount, ts - ts % {HOUR_MS} + {HOUR_MS} AS b FROM events),
ends AS (SELECT merchant_id, b FROM ev UNION SELECT merchant_id, b + {HOUR_MS} FROM ev),
agg AS (SELECT merchant_id, b, avg(amount) AS m, max(amount) AS x, count(*) AS n FROM ev GROUP BY 1, 2)
SELECT ends.merchant_id, ends.b, agg.m, agg.x, coalesce(agg.n, 0)
FROM ends LEFT JOIN agg USING (merchant_id, b)
"""


def generate(path: Path, events: int, users: int, days: int) -> None:
    rng = np.random.default_rng(3)
    span = days * 86_400_000
    ts = np.sort(rng.integers(0, span, events)) + int(START.timestamp() * 1000)
    failed = rng.random(events) < 0.12
    reasons = np.array(["insufficient_funds", "ach_nsf", "card_declined"])
    table = pa.table(
        {
            "payment_id": pa.array(np.char.add("p", np.arange(events).astype(str))),
            "user_id": pa.array(np.char.add("u", rng.integers(0, users, events).astype(str))),
            "merchant_id": pa.array(np.char.add("m", rng.integers(0, 1000, events).astype(str))),
            "amount": pa.array(np.round(rng.lognormal(3.5, 1.0, events), 2)),
            "status": pa.array(np.where(failed, "failed", "succeeded")),
            "failure_reason": pa.array(reasons[rng.integers(0, 3, events)], mask=~failed),
            "timestamp": pa.array(ts, type=pa.timestamp("ms", tz="UTC")),
        },
        schema=HISTORY_SCHEMA,
    )
    pq.write_table(table, path, row_group_size=1_000_000)


def compare(name: str, ours: pa.Table, theirs: pa.Table) -> None:
    """Both tables (key, time, then values) sorted by key and time and compared column by column:
    keys, times and integers exactly, floats within 1e-9 relative, nulls only against nulls."""
    if ours.num_rows != theirs.num_rows:
        raise SystemExit(f"{name}: {ours.num_rows} rows from MLFS, {theirs.num_rows} from DuckDB")
    order = [(ours.column_names[0], "ascending"), (ours.column_names[1], "ascending")]
    ours = ours.take(pc.sort_indices(ours, sort_keys=order))
    theirs = theirs.rename_columns(ours.column_names)
    theirs = theirs.take(pc.sort_indices(theirs, sort_keys=order))
    for column in ours.column_names:
        a, b = ours.column(column), theirs.column(column)
        if not pc.all(pc.equal(pc.is_null(a), pc.is_null(b))).as_py():
            raise SystemExit(f"{name}: {column} is null in different rows")
        if pa.types.is_floating(a.type) or pa.types.is_floating(b.type):
            x = a.cast(pa.float64()).fill_null(0.0).to_numpy()
            y = b.cast(pa.float64()).fill_null(0.0).to_numpy()
            same = np.isclose(x, y, rtol=1e-9, atol=1e-9)
        else:
            same = pc.fill_null(pc.equal(a, b.cast(a.type)), True).to_numpy(zero_copy_only=False)
        if not same.all():
            i = int(np.argmin(same))
            mine, duck = ours.slice(i, 1).to_pylist(), theirs.slice(i, 1).to_pylist()
            raise SystemExit(f"{name}: row {i}: MLFS {mine} != DuckDB {duck}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--chunk-days", type=int, default=31)
    parser.add_argument("--keep", action="store_true", help="keep the generated repository")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("py4j").setLevel(logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="mlfs-bench-"))
    repo_path = work / "repo"
    init_repo(repo_path, START + timedelta(days=args.days + 1), history_events=100)
    history = repo_path / "data" / "history" / "payments.parquet"
    generate(history, args.events, args.users, args.days)
    repo = load_repo(repo_path)
    apply_repo(repo)
    end = START + timedelta(days=args.days + 8)

    timings: dict[str, float] = {}
    for view in ("user_payment_stats_7d", "merchant_amount_1h"):
        plan = plan_backfill(repo, [view], None, end, "spark", args.master, args.chunk_days)
        started = time.perf_counter()
        (report,) = run_backfill(repo, plan, restart=True)
        timings[view] = time.perf_counter() - started
        assert report.counts.input == args.events and report.counts.balanced, report.counts

    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT *, epoch_ms(timestamp) AS ts FROM read_parquet('{history}')")
    started = time.perf_counter()
    continuous = con.sql(CONTINUOUS_SQL).to_arrow_table()
    duck_continuous = time.perf_counter() - started
    started = time.perf_counter()
    tumbling = con.sql(TUMBLING_SQL).to_arrow_table()
    duck_tumbling = time.perf_counter() - started

    spark = spark_session(args.master)
    spark.read.parquet(str(history)).selectExpr("*", "unix_millis(timestamp) AS ts").createOrReplaceTempView(
        "events"
    )
    bare: dict[str, float] = {}
    for view, sql in (
        ("user_payment_stats_7d", SPARK_CONTINUOUS_SQL),
        ("merchant_amount_1h", SPARK_TUMBLING_SQL),
    ):
        started = time.perf_counter()
        spark.sql(sql).write.format("noop").mode("overwrite").save()
        bare[view] = time.perf_counter() - started

    offline = ParquetOfflineStore(repo.settings.offline_path)

    def ours(view: str, columns: list[str]) -> pa.Table:
        table = offline.read(repo.views[view])
        ts = pc.cast(pc.cast(table.column("event_timestamp"), pa.timestamp("ms", tz="UTC")), pa.int64())
        return pa.table(
            [table.column(columns[0]), ts, *[table.column(c) for c in columns[1:]]],
            names=[columns[0], "ts", *columns[1:]],
        )

    compare(
        "user_payment_stats_7d",
        ours("user_payment_stats_7d", ["user_id", "payment_count_7d", "amount_sum_7d", "fail_count_7d"]),
        continuous,
    )
    compare(
        "merchant_amount_1h",
        ours("merchant_amount_1h", ["merchant_id", "amount_mean_1h", "amount_max_1h", "payment_count_1h"]),
        tumbling,
    )

    n = args.events
    print(
        f"{n:,} events, {args.users:,} users, {args.days} days, Spark {args.master}: rows equal to DuckDB's"
    )
    for view, duck, rows in (
        ("user_payment_stats_7d", duck_continuous, continuous.num_rows),
        ("merchant_amount_1h", duck_tumbling, tumbling.num_rows),
    ):
        ours_s = timings[view]
        print(
            f"{view:24} {rows:>11,} rows  mlfs backfill {ours_s:7.1f} s ({n / ours_s:>9,.0f} ev/s)  "
            f"duckdb {duck:6.1f} s ({n / duck:>10,.0f} ev/s)  ratio {ours_s / duck:5.1f}x  "
            f"(bare Spark SQL windows, no stage 1 or writes: {bare[view]:.1f} s, {bare[view] / duck:.1f}x)"
        )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
