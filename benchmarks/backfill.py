"""`mlfs backfill` on each engine against DuckDB SQL computing and writing the same rows, checked equal.

Generates N payment events over K users, 1,000 merchants and D days into the example repository
(`mlfs init`), backfills the continuous 7-day view (`user_payment_stats_7d`) and the tumbling
1-hour view (`merchant_amount_1h`) with each engine (process start excluded: one process runs
all), computes the same rows with hand-written DuckDB SQL and writes them as date-partitioned
Parquet, compares the rows (counts exactly, floats within 1e-9 relative) and prints events per
second and the ratio. `--suite` runs the three sizes of issue 24 in one run (10M events over 100k
users, 10M over 20 users: about 117k events per user-week, 500k over 50k users).

    python benchmarks/backfill.py [--suite] [--events 10000000] [--users 100000] [--days 30]
                                  [--engines embedded,spark] [--master local[2]] [--chunk-days N] [--phases]
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

TUMBLING_SQL = f"""
WITH ev AS (SELECT merchant_id, amount, ts - ts % {HOUR_MS} + {HOUR_MS} AS b FROM events),
ends AS (SELECT merchant_id, b FROM ev UNION SELECT merchant_id, b + {HOUR_MS} FROM ev),
agg AS (SELECT merchant_id, b, avg(amount) AS m, max(amount) AS x, count(*) AS n FROM ev GROUP BY 1, 2)
SELECT ends.merchant_id, ends.b AS ts, agg.m, agg.x, coalesce(agg.n, 0)
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


def duckdb_reference(history: Path, out: Path) -> tuple[dict[str, pa.Table], dict[str, float]]:
    """Both views' rows computed by hand-written DuckDB SQL and written as date-partitioned Parquet
    (what a user would do by hand): the tables, and the seconds each took including the write."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT *, epoch_ms(timestamp) AS ts FROM read_parquet('{history}')")
    tables: dict[str, pa.Table] = {}
    seconds: dict[str, float] = {}
    for view, sql in (("user_payment_stats_7d", CONTINUOUS_SQL), ("merchant_amount_1h", TUMBLING_SQL)):
        started = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE result AS {sql}")
        target = out / view
        target.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            "COPY (SELECT *, CAST(epoch_ms(ts) AS DATE) AS date FROM result) "
            f"TO '{target}' (FORMAT parquet, PARTITION_BY (date), OVERWRITE_OR_IGNORE)"
        )
        seconds[view] = time.perf_counter() - started
        tables[view] = con.sql("SELECT * FROM result").to_arrow_table()
    return tables, seconds


def run_case(
    events: int, users: int, days: int, engines: list[str], master: str, chunk_days: int | None
) -> None:
    """One input size: each engine's `mlfs backfill` of both views against DuckDB SQL, rows compared."""
    work = Path(tempfile.mkdtemp(prefix="mlfs-bench-"))
    repo_path = work / "repo"
    init_repo(repo_path, START + timedelta(days=days + 1), history_events=100)
    history = repo_path / "data" / "history" / "payments.parquet"
    generate(history, events, users, days)
    repo = load_repo(repo_path)
    apply_repo(repo)
    end = START + timedelta(days=days + 8)
    duck, duck_seconds = duckdb_reference(history, work / "duckdb")
    offline = ParquetOfflineStore(repo.settings.offline_path)

    def ours(view: str, columns: list[str]) -> pa.Table:
        table = offline.read(repo.views[view])
        ts = pc.cast(pc.cast(table.column("event_timestamp"), pa.timestamp("ms", tz="UTC")), pa.int64())
        return pa.table(
            [table.column(columns[0]), ts, *[table.column(c) for c in columns[1:]]],
            names=[columns[0], "ts", *columns[1:]],
        )

    columns = {
        "user_payment_stats_7d": ["user_id", "payment_count_7d", "amount_sum_7d", "fail_count_7d"],
        "merchant_amount_1h": ["merchant_id", "amount_mean_1h", "amount_max_1h", "payment_count_1h"],
    }
    print(
        f"{events:,} events, {users:,} users, {days} days "
        f"({events / users / days * 7:,.0f} events per user-week):"
    )
    for engine in engines:
        for view in columns:
            plan = plan_backfill(
                repo, [view], None, end, engine, master if engine == "spark" else None, chunk_days
            )
            started = time.perf_counter()
            (report,) = run_backfill(repo, plan, restart=True)
            ours_s = time.perf_counter() - started
            assert report.counts.input == events and report.counts.balanced, report.counts
            compare(f"{engine} {view}", ours(view, columns[view]), duck[view])
            label = engine if engine != "spark" else f"spark {master}"
            print(
                f"  {view:22} {label:16} {duck[view].num_rows:>11,} rows equal  {ours_s:7.1f} s "
                f"({events / ours_s:>10,.0f} ev/s)  duckdb SQL + write {duck_seconds[view]:6.1f} s  "
                f"ratio {ours_s / duck_seconds[view]:5.1f}x",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)


SUITE = [(10_000_000, 100_000, 30), (10_000_000, 20, 30), (500_000, 50_000, 30)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument(
        "--engines", default="embedded,spark", help="comma-separated (default: embedded,spark)"
    )
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--chunk-days", type=int, help="Spark: calendar chunks (default: by volume)")
    parser.add_argument("--suite", action="store_true", help="10M/100k users, 10M/20 users, 500k/50k users")
    parser.add_argument("--phases", action="store_true", help="log each backfill phase's time")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.phases:
        logging.getLogger("backfill").setLevel(logging.INFO)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    cases = SUITE if args.suite else [(args.events, args.users, args.days)]
    for events, users, days in cases:
        run_case(events, users, days, engines, args.master, args.chunk_days)


if __name__ == "__main__":
    main()
