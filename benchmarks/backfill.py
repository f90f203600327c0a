"""`mlfs backfill` on each engine against DuckDB SQL computing and writing the same rows, checked equal.

Generates N payment events over K users, 1,000 merchants and D days into the example repository
(`mlfs init`), backfills the continuous 7-day view (`user_payment_stats_7d`) and the tumbling
1-hour view (`merchant_amount_1h`) with each engine (process start excluded: one process runs
all), computes the same rows with hand-written DuckDB SQL and writes them as date-partitioned
Parquet, compares the rows (counts exactly, floats within 1e-9 relative) and prints events per
second and the ratio. `--suite` runs the three sizes of issue 24 in one run (10M events over 100k
users, 10M over 20 users: about 117k events per user-week, 500k over 50k users). `--joins` adds a
view that looks up user_payment_stats_7d and one that joins payments with refunds (5% of payments),
each also compared with the single-source view's time (issue 25's target: at most 2x).

    python benchmarks/backfill.py [--suite] [--events 10000000] [--users 100000] [--days 30]
                                  [--engines embedded,spark] [--master local[2]] [--chunk-days N] [--phases]
                                  [--joins] [--cli]

`--cli` times each view's whole `mlfs backfill` process on the embedded engine instead (Python's start
and imports included; the DuckDB reference runs in this process, its imports done).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
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

DAY_MS = 86_400_000

# The views with joins (`--joins`): each against the single-source view of the same events
# (user_payment_stats_7d: a Select and a continuous 7-day window), and against DuckDB SQL doing the
# same work (the looked-up view's rows, then ASOF JOIN; a range join) and writing the same rows.
JOIN_VIEWS = """
from datetime import timedelta

from features import payments, user, user_payment_stats_7d

from featurestore import (
    Aggregations, Count, Field, FileStreamSource, Float64, Int64, IntervalJoin, Lookup, Select,
    Sliding, String, Sum, UnifiedTransformer, col, stream_feature_view,
)

refunds = FileStreamSource(name="refunds", path="data/stream/refunds", history="data/history/refunds.parquet")


@stream_feature_view(
    entities=[user], source=payments,
    schema=[Field(name="user_id", dtype=String), Field(name="n_7d", dtype=Int64),
            Field(name="amount_7d", dtype=Float64), Field(name="habit_7d", dtype=Float64)],
)
def user_habit_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        joins=[Lookup(user_payment_stats_7d, features=["amount_sum_7d"], on=["user_id"], prefix="habit_")],
        event_transform=Select(
            user_id=col("user_id"), amount=col("amount"), habit=col("habit_amount_sum_7d")
        ),
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(n_7d=Count(), amount_7d=Sum("amount"), habit_7d=Sum("habit")),
    ).run(inputs)


@stream_feature_view(
    entities=[user], source=payments,
    schema=[Field(name="user_id", dtype=String), Field(name="refunds_7d", dtype=Int64),
            Field(name="refunded_7d", dtype=Float64)],
)
def user_refunds_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        joins=[IntervalJoin(refunds, on=["payment_id"], within=(timedelta(0), timedelta(days=1)),
                            fields=["amount"], prefix="refund_")],
        event_transform=Select(user_id=col("user_id"), refund_amount=col("refund_amount")),
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(refunds_7d=Count(), refunded_7d=Sum("refund_amount")),
    ).run(inputs)
"""

HABIT_SQL = f"""
WITH stats AS (SELECT user_id, ts, s FROM result_user_payment_stats_7d),
enriched AS (
    SELECT e.user_id, e.ts, e.amount, st.s AS habit
    FROM events e ASOF LEFT JOIN stats st ON e.user_id = st.user_id AND e.ts >= st.ts
),
marks AS (
    SELECT user_id, ts, 1 AS one, amount, habit FROM enriched
    UNION ALL
    SELECT user_id, ts + {WEEK_MS}, NULL, NULL, NULL FROM enriched
),
framed AS (
    SELECT user_id, ts, count(one) OVER w AS n, coalesce(sum(amount) OVER w, 0) AS s,
           coalesce(sum(habit) OVER w, 0) AS h
    FROM marks
    WINDOW w AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {WEEK_MS - 1} PRECEDING AND CURRENT ROW)
)
SELECT DISTINCT ON (user_id, ts) user_id, ts, n, s, h FROM framed
"""

REFUNDS_SQL = f"""
WITH joined AS (
    SELECT e.user_id, greatest(e.ts, r.ts) AS ts, r.amount AS refund
    FROM events e JOIN refunds r ON e.payment_id = r.payment_id AND r.ts BETWEEN e.ts AND e.ts + {DAY_MS}
),
marks AS (
    SELECT user_id, ts, 1 AS one, refund FROM joined
    UNION ALL
    SELECT user_id, ts + {WEEK_MS}, NULL, NULL FROM joined
),
framed AS (
    SELECT user_id, ts, count(one) OVER w AS n, coalesce(sum(refund) OVER w, 0) AS s
    FROM marks
    WINDOW w AS (PARTITION BY user_id ORDER BY ts RANGE BETWEEN {WEEK_MS - 1} PRECEDING AND CURRENT ROW)
)
SELECT DISTINCT ON (user_id, ts) user_id, ts, n, s FROM framed
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


def generate_refunds(history: Path, path: Path) -> None:
    """Refunds of 5% of the payments, a uniform 0-36 hours after them (some beyond the join's day)."""
    rng = np.random.default_rng(5)
    payments = pq.read_table(history, columns=["payment_id", "amount", "timestamp"])
    picked = np.flatnonzero(rng.random(payments.num_rows) < 0.05)
    ts = pc.cast(payments.column("timestamp"), pa.int64()).to_numpy()[picked]
    delay = rng.integers(0, 36 * 3_600_000, len(picked))
    table = pa.table(
        {
            "refund_id": pa.array(np.char.add("r", np.arange(len(picked)).astype(str))),
            "payment_id": payments.column("payment_id").take(pa.array(picked)),
            "amount": payments.column("amount").take(pa.array(picked)),
            "timestamp": pa.array(ts + delay, type=pa.timestamp("ms", tz="UTC")),
        }
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


def duckdb_reference(
    history: Path, out: Path, refunds: Path | None = None
) -> tuple[dict[str, pa.Table], dict[str, float]]:
    """Every view's rows computed by hand-written DuckDB SQL and written as date-partitioned Parquet
    (what a user would do by hand): the tables, and the seconds each took including the write (the
    lookup view's include computing the view it looks up, as MLFS computes it with it)."""
    con = duckdb.connect()
    con.execute(f"CREATE VIEW events AS SELECT *, epoch_ms(timestamp) AS ts FROM read_parquet('{history}')")
    queries = [("user_payment_stats_7d", CONTINUOUS_SQL), ("merchant_amount_1h", TUMBLING_SQL)]
    if refunds is not None:
        con.execute(
            f"CREATE VIEW refunds AS SELECT *, epoch_ms(timestamp) AS ts FROM read_parquet('{refunds}')"
        )
        queries += [("user_habit_7d", HABIT_SQL), ("user_refunds_7d", REFUNDS_SQL)]
    tables: dict[str, pa.Table] = {}
    seconds: dict[str, float] = {}
    for view, sql in queries:
        started = time.perf_counter()
        if view == "user_habit_7d":
            con.execute(f"CREATE OR REPLACE TABLE result_user_payment_stats_7d AS {CONTINUOUS_SQL}")
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
    events: int,
    users: int,
    days: int,
    engines: list[str],
    master: str,
    chunk_days: int | None,
    joins: bool = False,
    cli: bool = False,
) -> None:
    """One input size: each engine's `mlfs backfill` of each view against DuckDB SQL, rows compared
    (``cli``: the embedded engine's whole `mlfs backfill` process instead)."""
    work = Path(tempfile.mkdtemp(prefix="mlfs-bench-"))
    repo_path = work / "repo"
    init_repo(repo_path, START + timedelta(days=days + 1), history_events=100)
    history = repo_path / "data" / "history" / "payments.parquet"
    generate(history, events, users, days)
    refunds = None
    if joins:
        refunds = repo_path / "data" / "history" / "refunds.parquet"
        generate_refunds(history, refunds)
        (repo_path / "bench_joins.py").write_text(JOIN_VIEWS)
    repo = load_repo(repo_path)
    apply_repo(repo)
    end = START + timedelta(days=days + 8)
    duck, duck_seconds = duckdb_reference(history, work / "duckdb", refunds)
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
    if joins:
        columns["user_habit_7d"] = ["user_id", "n_7d", "amount_7d", "habit_7d"]
        columns["user_refunds_7d"] = ["user_id", "refunds_7d", "refunded_7d"]
    single: dict[str, float] = {}
    print(
        f"{events:,} events, {users:,} users, {days} days "
        f"({events / users / days * 7:,.0f} events per user-week):"
    )
    for engine in engines if not cli else []:
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
            if view == "user_payment_stats_7d":
                single[engine] = ours_s
            versus = f"  {ours_s / single[engine]:4.1f}x the single-source view" if view in JOINED else ""
            print(
                f"  {view:22} {label:16} {duck[view].num_rows:>11,} rows equal  {ours_s:7.1f} s "
                f"({events / ours_s:>10,.0f} ev/s)  duckdb SQL + write {duck_seconds[view]:6.1f} s  "
                f"ratio {ours_s / duck_seconds[view]:5.1f}x{versus}",
                flush=True,
            )
    if cli:
        for view in ("user_payment_stats_7d", "merchant_amount_1h"):
            ours_s = cli_backfill(repo_path, view, end)
            compare(f"mlfs backfill {view}", ours(view, columns[view]), duck[view])
            print(
                f"  {view:22} {'`mlfs backfill`':16} {duck[view].num_rows:>11,} rows equal  {ours_s:7.1f} s "
                f"(the whole process)  duckdb SQL + write {duck_seconds[view]:6.1f} s  "
                f"ratio {ours_s / duck_seconds[view]:5.1f}x",
                flush=True,
            )
    shutil.rmtree(work, ignore_errors=True)


def cli_backfill(repo_path: Path, view: str, end: datetime) -> float:
    """Seconds of a whole ``mlfs backfill`` process of one view on the embedded engine, from its
    start (Python's and every import) to its exit."""
    command = [sys.executable, "-m", "featurestore.cli", "backfill", view, "--engine", "embedded"]
    command += ["--end", end.isoformat(), "--restart", "--repo", str(repo_path)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"mlfs backfill {view} failed: {done.stderr[-2000:]}")
    return seconds


JOINED = ("user_habit_7d", "user_refunds_7d")
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
    parser.add_argument(
        "--joins",
        action="store_true",
        help="also a lookup view and an interval-join view (embedded, reference)",
    )
    parser.add_argument(
        "--cli",
        action="store_true",
        help="time whole `mlfs backfill` processes on the embedded engine (process start included)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    if args.phases:
        logging.getLogger("backfill").setLevel(logging.INFO)
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    cases = SUITE if args.suite else [(args.events, args.users, args.days)]
    for events, users, days in cases:
        run_case(events, users, days, engines, args.master, args.chunk_days, args.joins, args.cli)


if __name__ == "__main__":
    main()
