"""Benchmark `mlfs serve-stream`: sustained events per second and freshness on the example views.

    python benchmarks/stream.py [--events N] [--users K] [--probes P] [--parallelism 2] [--online redis]
        [--declarative-only]
    python benchmarks/stream.py --joins [--events N] [--users K] [--parallelism 2]
    python benchmarks/stream.py --kafka-partitions 4 [--events N] [--users K]

1. Throughput: N payment events are written to the example repository's stream directory before
   the job starts; the figures are events per second from the first event counted by every view's
   stage 1 (all three example views run in one job) to the last one counted, and to the sinks' last
   write (when they have written every row the watermark allows), and the rows written.
2. Freshness: P probe events, each for a new user and stamped with the wall clock, are appended one
   file at a time; freshness is the time from a file's rename into the directory until Feast's
   `get_online_features` returns that user's value. The source's max out-of-orderness is set to 0
   (so a row is final as soon as a newer event arrives), and each probe file also carries a later
   event that moves the watermark past the probe.
3. CPU per event: the CPU seconds the job's processes used while stage 1 counted the events,
   divided by those events. On a shared 2-core machine the rate varies from run to run far more
   than this does, so compare code by CPU per event.

With ``--declarative-only`` the job streams only the two declarative example views
(``user_payment_stats_7d``, a ``Select``; ``merchant_amount_1h``, no event transform): stage 1 then
runs in the JVM (``flink_decode``) and no event reaches Python before the sinks (issue 26, item 2).

The reference run in the same process is DuckDB computing the continuous view's rows from the same
events (the work the streaming job must at least do), to put the job's rate in proportion.

With ``--joins`` it measures instead what a view with joins costs (issue 25): the same payments (and
refunds of about 5% of them, up to 36 hours later) streamed by three jobs, one after another:
``user_payment_stats_7d`` alone (a single-source view), ``user_refunds_30d`` (payments joined with
refunds within a day) and ``user_amount_vs_habit_7d`` (a lookup of ``user_payment_stats_7d``, which
its job streams too); and, as the lookup's own baseline, a job of the same two views without the
lookup (``user_payment_stats_7d`` and ``user_amount_7d_alone``: the lookup view's Python transform,
window and aggregations over the payment alone), so the ratio of the two jobs is the lookup's
cost. Each figure is events per second from the first event counted until every
event's outcome is counted (a joined event waits for the other sides' watermarks; a last file of
events days later moves them) and the sinks have stopped writing.

With ``--kafka-partitions P`` it measures stage 1 reading a Kafka topic (issue 26): the N payments
on a topic of one partition and on one of P (spread over them in turn; a private tansu broker),
each streamed by the three example views at parallelism 1 and 2; each figure is events per second
through every view's stage 1, as in 1. Needs the Flink Kafka connector jars
(``scripts/kafka_jars.sh``, fetched on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

# beside this file, imported before its folder leaves sys.path
from kafka_broker import Broker
from redis_server import redis_online_store, start_redis

sys.path = [p for p in sys.path if Path(p).resolve() != Path(__file__).resolve().parent]

VIEWS = ("user_last_payment_fail", "user_payment_stats_7d", "merchant_amount_1h")


def payment(rng: random.Random, when: datetime, user: str) -> dict[str, object]:
    failed = rng.random() < 0.1
    return {
        "payment_id": f"p{rng.getrandbits(48)}",
        "user_id": user,
        "merchant_id": f"m{rng.randrange(200):03d}",
        "amount": round(rng.uniform(1, 500), 2),
        "status": "failed" if failed else "ok",
        "failure_reason": rng.choice(["ach_nsf", "card_declined"]) if failed else None,
        "timestamp": when.isoformat(),
    }


def drop(directory: Path, name: str, lines: list[str]) -> float:
    tmp = directory / f".{name}"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.rename(directory / name)
    return time.time()


REDIS_ENV = "MLFS_BENCH_REDIS"
FLUSHED = 20  # payments at each of the last two times of --joins


def session_cpu_seconds(session: int) -> float:
    """CPU seconds (user + system) used so far by the live processes of a session: the job's
    client, its JVM and its Python workers. A steadier figure than the rate on a shared machine."""
    import os

    ticks = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path("/proc", entry, "stat").read_text()
        except OSError:  # the process ended
            continue
        fields = stat.rpartition(")")[2].split()
        if int(fields[3]) == session:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


PYTHON_VIEW = "user_last_payment_fail"
PYTHON_VIEW_CODE = ("def extract_payment_fail_data", "# A declarative event transform")


def make_repo(
    base: Path, flink_config: dict[str, str], redis: bool, name: str = "repo", declarative_only: bool = False
) -> Path:
    import yaml

    from featurestore.cli import main

    repo = base / name
    assert main(["init", str(repo), "--events", "200"]) == 0
    config_file = repo / "feature_store.yaml"
    config = yaml.safe_load(config_file.read_text())
    if flink_config:
        config["mlfs"].setdefault("flink", {})["config"] = flink_config
    if redis:
        config["online_store"] = redis_online_store(REDIS_ENV)
    config_file.write_text(yaml.safe_dump(config))
    features = repo / "features.py"
    code = features.read_text().replace("timedelta(seconds=5)", "timedelta(0)")
    if declarative_only:  # the example without its Python view
        start, end = (code.index(marker) for marker in PYTHON_VIEW_CODE)
        code = code[:start] + code[end:]
    features.write_text(code)
    assert main(["apply", "--repo", str(repo)]) == 0
    for old in (repo / "data" / "stream" / "payments").iterdir():
        old.unlink()
    return repo


def duckdb_seconds(events: list[dict[str, object]]) -> float:
    """DuckDB computing the continuous 7-day count and sum per user with leave rows."""
    import duckdb
    import pyarrow as pa

    table = pa.Table.from_pylist(
        [{"user_id": e["user_id"], "ts": e["timestamp"], "amount": e["amount"]} for e in events]
    )
    con = duckdb.connect()
    con.register("raw", table)
    started = time.perf_counter()
    con.execute(
        """
        CREATE TABLE ev AS SELECT user_id, epoch_ms(CAST(ts AS TIMESTAMPTZ)) AS t, amount FROM raw;
        CREATE TABLE out AS
        WITH points AS (SELECT DISTINCT user_id, t FROM ev
                        UNION SELECT DISTINCT user_id, t + 604800000 FROM ev)
        SELECT p.user_id, p.t, count(e.t) AS n, coalesce(sum(e.amount), 0) AS s
        FROM points p LEFT JOIN ev e
          ON e.user_id = p.user_id AND e.t > p.t - 604800000 AND e.t <= p.t
        GROUP BY p.user_id, p.t
        """
    )
    return time.perf_counter() - started


def refund(rng: random.Random, paid: dict[str, object]) -> dict[str, object]:
    when = datetime.fromisoformat(str(paid["timestamp"])) + timedelta(minutes=rng.randrange(1, 36 * 60))
    return {
        "refund_id": f"r{rng.getrandbits(48)}",
        "payment_id": paid["payment_id"],
        "amount": paid["amount"],
        "reason": rng.choice(["fraud", "returned"]),
        "timestamp": when.isoformat(),
    }


HABIT = "user_amount_vs_habit_7d"
ALONE_VIEW = """
from datetime import timedelta

from features import payments, user

from featurestore import (
    Aggregations, Field, Float64, Int64, Max, Mean, Sliding, String, Sum, UnifiedTransformer,
    stream_feature_view,
)


def amount_alone(event):
    # amount_against_habit's work, without the looked-up habit
    if event["amount"] is None:
        return None
    ratio = event["amount"] / 100.0
    return {"user_id": event["user_id"], "amount_ratio": ratio, "unusual": 1 if ratio > 3 else 0}


@stream_feature_view(
    entities=[user], source=payments, ttl=timedelta(days=30),
    schema=[Field(name="user_id", dtype=String), Field(name="amount_ratio_max_7d", dtype=Float64),
            Field(name="amount_ratio_mean_7d", dtype=Float64),
            Field(name="unusual_payments_7d", dtype=Int64)],
)
def user_amount_7d_alone(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        event_transform=amount_alone,
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(
            amount_ratio_max_7d=Max("amount_ratio"),
            amount_ratio_mean_7d=Mean("amount_ratio"),
            unusual_payments_7d=Sum("unusual"),
        ),
    ).run(inputs)
"""


def joined_job_seconds(
    base: Path, name: str, views: list[str], payments: list[str], refunds: list[str], parallelism: int
) -> tuple[float, int]:
    """Stream ``payments`` and ``refunds`` (already in time order) with ``serve-stream VIEWS`` on a
    fresh example repository; (seconds from the first event counted until every outcome is counted
    and the sinks stopped writing, rows written)."""
    from featurestore.cli import main as mlfs
    from featurestore.repo import load_repo
    from featurestore.stream.metrics import ViewMetrics
    from featurestore.stream.sinks import read_status

    repo_path = base / name
    assert mlfs(["init", str(repo_path), "--events", "200", "--with-joins"]) == 0
    (repo_path / "bench_alone.py").write_text(ALONE_VIEW)
    assert mlfs(["apply", "--repo", str(repo_path)]) == 0
    for source, lines in (("payments", payments), ("refunds", refunds)):
        directory = repo_path / "data" / "stream" / source
        for old in directory.iterdir():
            old.unlink()
        drop(directory, "bulk.jsonl", lines)
    status_dir = load_repo(repo_path).settings.work_path / "stream" / "status"
    command = [sys.executable, "-m", "featurestore.cli", "serve-stream", "--repo", str(repo_path), *views]
    command += ["--parallelism", str(parallelism), "--no-metrics", "--for", "100000"]
    job = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        first = None
        while True:
            metrics = [ViewMetrics(v, read_status(status_dir, v), 0) for v in views]
            if first is None and min(m.status.counts.input for m in metrics) > 0:
                first = time.monotonic()
            # The last payments wait for later ones (their own source's watermark) on a joined view.
            if min(m.status.counts.input - m.waiting for m in metrics) >= len(payments) - FLUSHED:
                break
            if job.poll() is not None:
                raise SystemExit(f"the streaming job exited with {job.returncode}")
            time.sleep(0.2)
        # A joined view's last rows come a few seconds after its counts (through the joins' window,
        # stage 2 and the sinks): the sinks have stopped once they wrote nothing for 10 s.
        rows, last_change = -1, time.monotonic()
        while time.monotonic() - last_change < 10.0:
            time.sleep(0.1)
            if (now := sum(read_status(status_dir, v).sink.rows_out for v in views)) != rows:
                rows, last_change = now, time.monotonic()
        assert first is not None
        return last_change - first, rows
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(job.pid)], check=False)


def joins_main(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    base = Path(tempfile.mkdtemp(prefix="mlfs-bench-stream-joins-"))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    events = [
        payment(rng, start + timedelta(milliseconds=i * 500), f"u{rng.randrange(args.users):06d}")
        for i in range(args.events)
    ]
    refunds = sorted(
        (refund(rng, e) for e in events if rng.random() < 0.05), key=lambda r: str(r["timestamp"])
    )
    end = start + timedelta(milliseconds=500 * args.events)
    # Move every watermark past the rest (several at each time: each parallel join instance's).
    later = [end + timedelta(days=days) for days in (3, 6) for _ in range(FLUSHED)]
    events += [payment(rng, when, "u-flush") for when in later]
    refunds.append(
        {"refund_id": "flush", "payment_id": "-", "timestamp": (end + timedelta(days=8)).isoformat()}
    )
    payments = [json.dumps(e) for e in events]
    refund_lines = [json.dumps(r) for r in refunds]
    print(
        f"{args.events:,} payments, {len(refunds) - 1:,} refunds, {args.users:,} users, "
        f"parallelism {args.parallelism}, SQLite online store",
        flush=True,
    )
    jobs = [
        ("single-source view", ["user_payment_stats_7d"]),
        ("interval join (payments with refunds within a day)", ["user_refunds_30d"]),
        ("the same two views without the lookup", ["user_payment_stats_7d", "user_amount_7d_alone"]),
        ("lookup of user_payment_stats_7d (with that view)", ["user_payment_stats_7d", HABIT]),
    ]
    baseline = None
    timed: list[float] = []
    for n, (what, views) in enumerate(jobs):
        seconds, rows = joined_job_seconds(base, f"repo{n}", views, payments, refund_lines, args.parallelism)
        baseline = baseline or seconds
        timed.append(seconds)
        pair = f"; {seconds / timed[2]:.2f}x the same views without it" if n == 3 else ""
        print(
            f"{views[-1]} ({what}): {args.events / seconds:,.0f} events/s, {seconds:.1f} s, "
            f"{rows:,} rows written; {seconds / baseline:.2f}x the single-source view{pair}",
            flush=True,
        )


class Stage1Run(NamedTuple):
    first: float  # when every view's stage 1 had counted an event (time.monotonic)
    counted: int  # the events counted since
    seconds: float  # the time they took
    cpu: float  # the CPU seconds the job used meanwhile

    @property
    def rate(self) -> float:
        return self.counted / max(self.seconds, 1e-9)


def stage1_run(
    job: subprocess.Popen[bytes], status_dir: Path, events: int, views: tuple[str, ...] = VIEWS
) -> Stage1Run:
    """Wait until every view's stage 1 counted ``events``."""
    from featurestore.stream.sinks import read_status

    first_seen = None
    while True:
        counts = [read_status(status_dir, v).counts.input for v in views]
        if first_seen is None and min(counts) > 0:
            first_seen = (time.monotonic(), min(counts))
            cpu_start = session_cpu_seconds(job.pid)
        if min(counts) >= events:
            done = time.monotonic()
            cpu_used = session_cpu_seconds(job.pid) - cpu_start
            break
        if job.poll() is not None:
            raise SystemExit(f"the streaming job exited with {job.returncode}")
        time.sleep(0.2)
    assert first_seen is not None
    return Stage1Run(first_seen[0], events - first_seen[1], done - first_seen[0], cpu_used)


KAFKA_ENV = "MLFS_BENCH_KAFKA"


def kafka_main(args: argparse.Namespace, flink_config: dict[str, str]) -> None:
    import os

    from featurestore.cli import main as mlfs
    from featurestore.repo import load_repo

    jars = subprocess.run(
        ["bash", str(Path(__file__).resolve().parent.parent / "scripts" / "kafka_jars.sh")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    env = {**os.environ, "MLFS_FLINK_JARS": os.pathsep.join(str(Path(j).resolve()) for j in jars)}
    rng = random.Random(7)
    base = Path(tempfile.mkdtemp(prefix="mlfs-bench-stream-kafka-"))
    start = datetime(2026, 11, 1, tzinfo=UTC)
    lines = [
        json.dumps(payment(rng, start + timedelta(milliseconds=i * 500), f"u{rng.randrange(args.users):06d}"))
        for i in range(args.events)
    ]
    broker = Broker(base)
    os.environ[KAFKA_ENV] = env[KAFKA_ENV] = broker.servers
    print(
        f"{args.events:,} events, {args.users:,} users, 3 views in one job, SQLite online store, "
        f"Flink config {flink_config or 'as configured'}",
        flush=True,
    )
    try:
        for partitions in sorted({1, args.kafka_partitions}):
            topic = f"payments{partitions}"
            broker.create_topic(topic, partitions)
            broker.produce(topic, lines, partitions)
            for parallelism in (1, 2):
                with contextlib.redirect_stdout(io.StringIO()):
                    repo_path = make_repo(
                        base, flink_config, redis=False, name=f"repo-{partitions}-{parallelism}"
                    )
                features = repo_path / "features.py"
                text = features.read_text()
                begin = text.index("payments = FileStreamSource(")
                end = text.index(")\n", begin) + 2
                source = (
                    f'payments = KafkaStreamSource(name="payments", bootstrap_servers="${{{KAFKA_ENV}}}", '
                    f'topic="{topic}", history="data/history/payments.parquet", '
                    'timestamp_field="timestamp", max_out_of_orderness=timedelta(0))\n'
                )
                imports = text[:begin].replace("    FileStreamSource,\n", "    KafkaStreamSource,\n")
                features.write_text(imports + source + text[end:])
                with contextlib.redirect_stdout(io.StringIO()):
                    assert mlfs(["apply", "--repo", str(repo_path)]) == 0
                status_dir = load_repo(repo_path).settings.work_path / "stream" / "status"
                command = [sys.executable, "-m", "featurestore.cli", "serve-stream", "--repo", str(repo_path)]
                command += ["--parallelism", str(parallelism), "--no-metrics", "--for", "100000"]
                job = subprocess.Popen(
                    command,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                    env=env,
                )
                try:
                    run = stage1_run(job, status_dir, args.events)
                finally:
                    subprocess.run(["pkill", "-KILL", "-g", str(job.pid)], check=False)
                print(
                    f"topic of {partitions} partition(s), parallelism {parallelism}: "
                    f"{run.rate:,.0f} events/s through stage 1, "
                    f"{run.cpu / run.counted * 1e6:,.0f} us CPU per event",
                    flush=True,
                )
    finally:
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=30)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument(
        "--flink-config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Flink configuration entry for the job (repeatable), e.g. python.execution-mode=thread",
    )
    parser.add_argument(
        "--online",
        choices=["sqlite", "redis"],
        default="sqlite",
        help="online store: the example's SQLite file, or a private redis-server started here",
    )
    parser.add_argument("--joins", action="store_true", help="measure views with joins (see above)")
    parser.add_argument(
        "--declarative-only", action="store_true", help="stream only the two declarative example views"
    )
    parser.add_argument(
        "--kafka-partitions", type=int, metavar="P", help="measure stage 1 on a Kafka topic (see above)"
    )
    args = parser.parse_args()
    if args.joins:
        joins_main(args)
        return
    flink_config = dict(entry.split("=", 1) for entry in args.flink_config)
    if args.kafka_partitions:
        kafka_main(args, flink_config)
        return

    from featurestore.config import feast_store
    from featurestore.repo import load_repo
    from featurestore.stream.sinks import read_status

    rng = random.Random(7)
    base = Path(tempfile.mkdtemp(prefix="mlfs-bench-stream-"))
    redis_server = start_redis(base, REDIS_ENV) if args.online == "redis" else None
    repo_path = make_repo(
        base, flink_config, redis_server is not None, declarative_only=args.declarative_only
    )
    views = tuple(v for v in VIEWS if not (args.declarative_only and v == PYTHON_VIEW))
    repo = load_repo(repo_path)
    stream_dir = repo_path / "data" / "stream" / "payments"
    status_dir = repo.settings.work_path / "stream" / "status"

    # Two events a second, ending an hour ago: the probes, stamped with the wall clock, come after them.
    start = datetime.now(UTC) - timedelta(milliseconds=500 * args.events, hours=1)
    events = [
        payment(rng, start + timedelta(milliseconds=i * 500), f"u{rng.randrange(args.users):06d}")
        for i in range(args.events)
    ]
    # One file: files that appear together are read in no particular order (DESIGN: arrival order).
    drop(stream_dir, "bulk.jsonl", [json.dumps(e) for e in events])

    command = [sys.executable, "-m", "featurestore.cli", "serve-stream", "--repo", str(repo_path)]
    command += ["--parallelism", str(args.parallelism), "--no-metrics", "--for", "100000"]
    job = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        run = stage1_run(job, status_dir, args.events, views)
        rate, counted, cpu_used = run.rate, run.counted, run.cpu

        def rows_written() -> int:
            return sum(read_status(status_dir, v).sink.rows_out for v in views)

        rows = rows_written()
        print(
            f"stage 1 of {len(views)} views: {rate:,.0f} events/s; rows written by then: {rows:,}", flush=True
        )
        # The sinks may still be behind: the rate through them ends when they stop writing (the rows
        # of the last events wait for the watermark, which the probes move on).
        last_change = time.monotonic()
        while time.monotonic() - last_change < 3.0:
            time.sleep(0.1)
            if (now_rows := rows_written()) != rows:
                rows, last_change = now_rows, time.monotonic()
        written_rate = counted / max(last_change - run.first, 1e-9)

        store = feast_store(repo.settings)
        freshness = []
        for i in range(args.probes):
            now = datetime.now(UTC)
            probe_user = f"probe{i:04d}"
            lines = [
                json.dumps(payment(rng, now, probe_user)),
                json.dumps(payment(rng, now + timedelta(milliseconds=1), "u-watermark")),
            ]
            dropped = drop(stream_dir, f"probe-{i:05d}.jsonl", lines)
            while True:
                got = store.get_online_features(
                    features=["user_payment_stats_7d:payment_count_7d"], entity_rows=[{"user_id": probe_user}]
                ).to_dict()
                if got["payment_count_7d"][0] is not None:
                    freshness.append(time.time() - dropped)
                    break
                if time.time() - dropped > 300:
                    raise SystemExit(f"probe {i} not readable online after 300 s")
                time.sleep(0.02)
            time.sleep(rng.uniform(0.1, 0.5))
    finally:
        subprocess.run(["pkill", "-KILL", "-g", str(job.pid)], check=False)
        if redis_server is not None:
            redis_server.terminate()

    reference = duckdb_seconds(events)
    freshness.sort()
    p99 = freshness[min(len(freshness) - 1, int(len(freshness) * 0.99))]
    print(
        f"{args.events:,} events, {args.users:,} users, {len(views)} views in one job, "
        f"parallelism {args.parallelism}, {args.online} online store"
    )
    print(f"sustained: {rate:,.0f} events/s through stage 1, {written_rate:,.0f} events/s through the sinks")
    print(
        f"CPU: {cpu_used / counted * 1e6:,.0f} us per event through stage 1 "
        f"({cpu_used / max(run.seconds, 1e-9):.2f} cores busy: client, JVM and Python workers)"
    )
    print(f"rows written: {rows:,}")
    print(
        f"freshness over {len(freshness)} probes: p50 {statistics.median(freshness):.2f} s, p99 {p99:.2f} s "
        "(file poll interval 1 s)"
    )
    print(
        f"DuckDB, the continuous view alone on the same events: {reference:.2f} s "
        f"({args.events / reference:,.0f} events/s)"
    )


if __name__ == "__main__":
    main()
