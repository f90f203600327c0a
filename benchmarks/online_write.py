"""Benchmark the online writes a streaming sink makes: what one feature row costs to write.

    python benchmarks/online_write.py [--keys 10000] [--batch 880] [--batches 60] [--online sqlite|redis|both]

Rows of the example's continuous view (a user key, three features) arrive in batches of random
users with rising event times, as the streaming sink gets them (about 880 rows a call in
`benchmarks/stream.py`). For each online store it times:

1. the MLFS writer (`open_online_writer`: newer-wins bulk upserts in Feast's layout);
2. the stock Feast writer on the same rows (Feast's `online_write_batch`, with its protos), the
   reference;
3. for SQLite, the engine alone: the same upserts with their parameters built beforehand, as
   ``executemany`` and as multi-row statements, the floor any writer of Feast's table pays. With
   ``--contended`` a second Python thread computes all the while (as a job's other Python
   functions do), which is what made ``executemany`` wait for the interpreter lock on every row.

It prints rows per second of wall time and CPU microseconds per row: this process's CPU, and for
Redis the server's too. The CPU figures bound what a streaming job can write per core.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis_server import redis_online_store, start_redis

VIEW = "user_payment_stats_7d"
NEWER_US = 4 * 10**15  # newer than any row the writers put there (2096), so every upsert updates
REDIS_ENV = "MLFS_BENCH_REDIS"


def batches(keys: int, batch: int, count: int, seed: int = 7) -> list[list[dict[str, Any]]]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 1, tzinfo=UTC)
    out = []
    for b in range(count):
        when = start + timedelta(seconds=b)
        users = rng.sample(range(keys), batch)  # distinct keys, as the sink's latest-per-key leaves them
        out.append(
            [
                {
                    "user_id": f"u{u:06d}",
                    "payment_count_7d": rng.randrange(1, 50),
                    "amount_sum_7d": round(rng.uniform(1, 5000), 2),
                    "fail_count_7d": rng.randrange(5),
                    "event_timestamp": when + timedelta(microseconds=i),
                }
                for i, u in enumerate(users)
            ]
        )
    return out


def process_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def timed(
    label: str,
    rows: list[list[dict[str, Any]]],
    write: Callable[[list[dict[str, Any]]], object],
    server: int | None,
) -> None:
    write(rows[0])  # warm up: tables, connections, statements
    n = sum(len(b) for b in rows[1:])
    ticks = process_ticks(server) if server else 0
    wall, cpu = time.perf_counter(), time.thread_time()
    for batch in rows[1:]:
        write(batch)
    wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    line = f"{label:<48} {n / wall:>9,.0f} rows/s   {cpu / n * 1e6:6.1f} us CPU/row (writing thread)"
    if server:
        line += (
            f", {(process_ticks(server) - ticks) / os.sysconf('SC_CLK_TCK') / n * 1e6:6.1f} in redis-server"
        )
    print(line, flush=True)


def make_repo(base: Path, redis: bool) -> Any:
    import yaml

    from featurestore.cli import main
    from featurestore.repo import load_repo

    repo = base / "repo"
    assert main(["init", str(repo), "--events", "200"]) == 0
    if redis:
        config_file = repo / "feature_store.yaml"
        config = yaml.safe_load(config_file.read_text())
        config["online_store"] = redis_online_store(REDIS_ENV)
        config_file.write_text(yaml.safe_dump(config))
    assert main(["apply", "--repo", str(repo)]) == 0
    return load_repo(repo)


def engine_floor(repo: Any, rows: list[list[dict[str, Any]]], contended: bool) -> None:
    """The SQLite upserts alone, parameters built beforehand, both ways of sending them."""
    from featurestore.config import feast_store
    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget

    view = repo.views[VIEW]
    writer = SqliteOnlineWriter(SqliteTarget.of_feast(feast_store(repo.settings).config))
    writer.write(view, rows[0])  # adds the writer's own column
    table = writer.table(view)
    keys = [writer.keys.serialize(view, batch) for batch in rows]
    epochs = iter(range(1, 100))

    def upserts() -> dict[int, list[tuple[Any, ...]]]:
        """Each batch's upserts, newer than every row written before (so each one updates)."""
        base = NEWER_US + next(epochs) * 10**13
        by_batch = {}
        for b, (batch, batch_keys) in enumerate(zip(rows, keys, strict=True)):
            by_batch[id(batch)] = [
                (key, name, b"\x20\x05", str(row[name]), 0, 0, base + b * 10**6 + i)
                for name, _ in view.plan.output_features
                for i, (row, key) in enumerate(zip(batch, batch_keys, strict=True))
            ]
        return by_batch

    single = writer._upsert_sql(table, 1)
    conn = writer.conn
    stop = threading.Event()

    def busy() -> None:  # pure Python, as a job's other functions run between their I/O
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    if contended:
        threading.Thread(target=busy, daemon=True).start()
    for_many, for_multi = upserts(), upserts()

    def many(batch: list[dict[str, Any]]) -> None:
        with conn:
            conn.executemany(single, for_many[id(batch)])

    def multi(batch: list[dict[str, Any]]) -> None:
        with conn:
            writer.upsert(table, for_multi[id(batch)])

    suffix = ", contended" if contended else ""
    # executemany waits up to the switch interval for the lock after every row when contended
    few = rows[: 4 if contended else len(rows)]
    timed(f"SQLite engine alone, executemany{suffix}", few, many, None)
    timed(f"SQLite engine alone, multi-row statements{suffix}", rows, multi, None)
    stop.set()
    writer.close()


def run_store(kind: str, rows: list[list[dict[str, Any]]], base: Path, contended: bool) -> None:
    from featurestore.config import feast_store
    from featurestore.online import open_online_writer
    from featurestore.online.feast_writer import FeastOnlineWriter

    server = start_redis(base, REDIS_ENV) if kind == "redis" else None
    try:
        repo = make_repo(base / kind, redis=server is not None)
        view = repo.views[VIEW]
        pid = server.pid if server else None
        mlfs = open_online_writer(repo.settings)
        timed(f"{kind}: MLFS writer", rows, lambda b: mlfs.write(view, b), pid)
        mlfs.close()
        feast = FeastOnlineWriter(feast_store(repo.settings))
        timed(
            f"{kind}: stock Feast online_write_batch",
            rows[: max(2, len(rows) // 4)],
            lambda b: feast.write(view, b),
            pid,
        )
        if kind == "sqlite":
            engine_floor(repo, rows, contended=False)
            if contended:
                engine_floor(repo, rows, contended=True)
    finally:
        if server is not None:
            server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=880)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--online", choices=["sqlite", "redis", "both"], default="both")
    parser.add_argument("--contended", action="store_true", help="also time SQLite with a busy Python thread")
    args = parser.parse_args()
    if args.batch > args.keys:
        parser.error("--batch must be at most --keys (a batch holds each key once)")
    rows = batches(args.keys, args.batch, args.batches)
    print(
        f"{args.batches} batches of {args.batch} rows ({VIEW}: 1 key, 3 features), {args.keys:,} keys, "
        f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}"
    )
    kinds = ["sqlite", "redis"] if args.online == "both" else [args.online]
    with tempfile.TemporaryDirectory(prefix="mlfs-bench-online-") as tmp:
        for kind in kinds:
            if kind == "redis" and subprocess.run(["which", "redis-server"], capture_output=True).returncode:
                print("redis: skipped (no redis-server on PATH)")
                continue
            run_store(kind, rows, Path(tmp), args.contended)


if __name__ == "__main__":
    main()
