"""Benchmark Flink's own operators on the example views: the fastest the job's SQL can run here.

    python benchmarks/flink_ceiling.py [--events 1000000] [--users 10000] [--parallelism 2] [--no-over]

A continuous view also runs as Flink SQL's bounded ``OVER`` (the reference computing the same
rows) beside MLFS's window operator; ``--users 20`` gives hot keys (thousands of events per key in
a 7-day window).

`mlfs serve-stream` runs stage 1's Python function, then Flink SQL (stage 1's classification,
counts and unnesting, and each view's stage 2 windows), then Python sinks. This script runs the
same SQL, built by the same functions (`stage1_sql`, `stage2_results`), with no Python per event:
stage 1's function runs first, outside Flink, over the same payment events as
`benchmarks/stream.py`, and its results are written as JSON lines; Flink reads them with its own
JSON format and runs the job's SQL into a `blackhole` sink. Events are in order, so none is late
and no dead letter is written (the counts still go to a Python function, about once a second).

It prints events per second for the three views in one job, for each view alone, and for reading
the file alone (the reference: the same rows through the same source, no operators), each from
two runs of N and N/5 events, so the job's start and end cancel out (after a first run that warms
the JVM up). The figure for the three views bounds what any job of this plan can sustain on this
machine, whatever its Python costs.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from stream import VIEWS, make_repo, payment

BATCH = 5000  # stage 1's Arrow batch size in the job


class NoOutcomes:
    """An outcome sink that keeps nothing (the events are clean, so only counts arrive)."""

    def dead(self, letter: Any, late: bool, seq: int) -> None:
        raise RuntimeError(f"the benchmark's events gave a dead letter: {letter}")

    def update(self, counts: Any, max_event_ms: int | None) -> None:
        pass

    def close(self) -> None:
        pass


def write_prepared(plans: list[Any], events: int, users: int, path: Path) -> None:
    """Stage 1's function over ``events`` payments (in batches, as in the job), its results as
    JSON lines with an empty ``_raw``."""
    import pandas as pd

    from transforms.engines.flink_stage1 import prepare_function

    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(milliseconds=500 * events, hours=1)
    prepare = prepare_function(plans)
    with path.open("w") as out:
        for first in range(0, events, BATCH):
            texts = [
                json.dumps(
                    payment(rng, start + timedelta(milliseconds=i * 500), f"u{rng.randrange(users):06d}")
                )
                for i in range(first, min(events, first + BATCH))
            ]
            frame = prepare(pd.Series(texts))
            frame.insert(0, "_raw", "")
            out.write(frame.to_json(orient="records", lines=True))
            if not frame.empty:
                out.write("\n")


def head(path: Path, lines: int, into: Path) -> None:
    with path.open() as src, into.open("w") as out:
        for _, line in zip(range(lines), src, strict=False):
            out.write(line)


def run_job(plans: list[Any], views: list[int], path: Path, parallelism: int, over: str = "mlfs") -> float:
    """Seconds for one Flink job of the views ``views`` (indexes into ``plans``, the views stage 1
    prepared in ``path``) over the file; no views: read the file into a blackhole. ``over``:
    continuous and lifetime windows in MLFS's window operator, or as Flink SQL's ``OVER`` ("sql")."""
    from pyflink.table import Schema, TableDescriptor

    from transforms.engines.flink import flink_environment, stage2_results
    from transforms.engines.flink_stage1 import (
        STAGE1_SETTINGS,
        _view_fields,
        prepare_result_type,
        stage1_sql,
        table_environment,
    )
    from transforms.events import Lateness

    env, t_env = flink_environment(parallelism)
    stage1_env = table_environment(env, STAGE1_SETTINGS)
    schema = Schema.new_builder().column("_raw", "STRING")
    for field in prepare_result_type(plans).fields:
        schema = schema.column(field.name, field.data_type)
    schema = schema.column_by_expression("_pt", "PROCTIME()")
    source = (
        TableDescriptor.for_connector("filesystem")
        .schema(schema.build())
        .format("json")
        .option("path", str(path))
        .build()
    )
    stage1_env.create_temporary_table("file", source)
    statements = t_env.create_statement_set()
    blackhole = TableDescriptor.for_connector("blackhole").build()
    if not views:
        rows = stage1_env.to_data_stream(stage1_env.from_path("file"))
        statements.add_insert(blackhole, t_env.from_data_stream(rows))
    else:
        chosen = [plans[v] for v in views]
        # The chosen views' fields, renamed to their positions in this job.
        renamed = [
            f"`{old}` AS `{new}`"
            for position, v in enumerate(views)
            for old, new in zip(_view_fields(plans[v], v), _view_fields(plans[v], position), strict=True)
        ]
        listed = f"_raw, _t, {', '.join(renamed)}, 0 AS _part, _pt"  # one partition
        stage1_env.create_temporary_view("bench_events", stage1_env.sql_query(f"SELECT {listed} FROM file"))
        lateness = Lateness(max_out_of_orderness_ms=0, allowed_lateness_ms=0)
        outcomes: list[Callable[[], NoOutcomes]] = [NoOutcomes] * len(chosen)
        prepared = stage1_sql(chosen, env, stage1_env, lateness, outcomes, "bench")
        for position, (plan, stream) in enumerate(zip(chosen, prepared, strict=True)):
            results = stage2_results(plan, t_env, stream, None, f"prepared{position}", over)
            statements.add_insert(blackhole, t_env.from_data_stream(results))
    statements.attach_as_datastream()
    started = time.perf_counter()
    env.execute("mlfs-flink-ceiling")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument(
        "--no-over", action="store_true", help="skip the OVER reference (hours at hot keys and many events)"
    )
    args = parser.parse_args()

    from featurestore.repo import load_repo

    base = Path(tempfile.mkdtemp(prefix="mlfs-bench-ceiling-"))
    repo = load_repo(make_repo(base, {}, redis=False))
    plans = [repo.view(name).plan for name in VIEWS]
    full, small = base / "full.jsonl", base / "small.jsonl"
    started = time.perf_counter()
    write_prepared(plans, args.events, args.users, full)
    seconds = time.perf_counter() - started
    print(f"stage 1's function (outside Flink): {args.events:,} events in {seconds:.1f} s")
    fifth = args.events // 5
    head(full, fifth, small)

    from transforms.engines.flink_sql import is_over
    from transforms.windows import Sliding

    runs: list[tuple[str, list[int], str]] = [("all 3 views in one job", [0, 1, 2], "mlfs")]
    for v, name in enumerate(VIEWS):
        runs.append((name, [v], "mlfs"))
        over_reference = isinstance(plans[v].window, Sliding) and is_over(plans[v]) and not args.no_over
        if over_reference:  # the continuous view as Flink SQL alone
            runs.append((f"{name} as Flink SQL's OVER (reference)", [v], "sql"))
    runs.append(("reading the file alone (reference)", [], "mlfs"))
    print(
        f"{args.events:,} events, {args.users:,} users, parallelism {args.parallelism}; "
        f"events/s from runs of {args.events:,} and {fifth:,} events:"
    )
    run_job(plans, [0, 1, 2], small, args.parallelism)  # warms the JVM up (its JIT compiler)
    for name, views, over in runs:
        short = run_job(plans, views, small, args.parallelism, over)
        long = run_job(plans, views, full, args.parallelism, over)
        rate = (args.events - fifth) / max(long - short, 1e-9)
        print(f"  {name}: {rate:,.0f} events/s ({long:.1f} s and {short:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
