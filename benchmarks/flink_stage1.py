"""Benchmark stage 1 of the declarative example views on Flink: in the JVM against in Python.

    python benchmarks/flink_stage1.py [--events 1000000] [--users 10000] [--parallelism 2]

The two declarative example views (``user_payment_stats_7d``, a ``Select`` over a continuous
7-day window; ``merchant_amount_1h``, no event transform, a tumbling hour) run in one job from a
file of raw JSON payments (the events of ``benchmarks/stream.py``) through stage 1, their windows
(stage 2) and into a ``blackhole`` sink: once with stage 1 in the JVM (``flink_decode``, as
``serve-stream`` runs these views: no Python per event) and once with stage 1's Python function
(the path before, and the one views with Python code still take), the same SQL after it. The
reference is the same file read into the same sink with no operators. Each figure is events per
second from two runs of N and N/5 events (after a run that warms the JVM up), so the job's start
and end cancel out. No stores: the sinks' cost is measured by ``benchmarks/stream.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flink_ceiling import NoOutcomes, head
from stream import make_repo, payment

DECLARATIVE = ("user_payment_stats_7d", "merchant_amount_1h")


def write_events(events: int, users: int, path: Path) -> None:
    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(milliseconds=500 * events, hours=1)
    with path.open("w") as out:
        for i in range(events):
            when = start + timedelta(milliseconds=i * 500)
            out.write(json.dumps(payment(rng, when, f"u{rng.randrange(users):06d}")) + "\n")


def run_job(plans: list[Any], path: Path, parallelism: int, stage1: str) -> float:
    """Seconds for one job of ``plans`` over the file of raw events ``path``; ``stage1`` is "jvm",
    "python", or "none" (read the file into the blackhole)."""
    from pyflink.common import WatermarkStrategy
    from pyflink.table import TableDescriptor

    from transforms.engines.flink import file_source, flink_environment, stage2_results
    from transforms.engines.flink_decode import jvm_spec
    from transforms.engines.flink_stage1 import build_stage1
    from transforms.events import Lateness

    env, t_env = flink_environment(parallelism)
    folder = path.parent / f"{path.stem}-source"
    folder.mkdir(exist_ok=True)
    if not (folder / path.name).exists():
        (folder / path.name).symlink_to(path)
    raw = env.from_source(file_source(str(folder)), WatermarkStrategy.no_watermarks(), "files")
    raw = raw.set_parallelism(1)
    statements = t_env.create_statement_set()
    blackhole = TableDescriptor.for_connector("blackhole").build()
    if stage1 == "none":
        statements.add_insert(blackhole, t_env.from_data_stream(raw))
    else:
        lateness = Lateness(max_out_of_orderness_ms=0, allowed_lateness_ms=0)
        spec = jvm_spec(plans) if stage1 == "jvm" else None
        outcomes = [NoOutcomes] * len(plans)
        prepared = build_stage1(plans, env, [raw], lateness, outcomes, "bench", spec)
        for position, (plan, stream) in enumerate(zip(plans, prepared, strict=True)):
            results = stage2_results(plan, t_env, stream, None, f"prepared{position}")
            statements.add_insert(blackhole, t_env.from_data_stream(results))
    statements.attach_as_datastream()
    started = time.perf_counter()
    env.execute("mlfs-flink-stage1")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--parallelism", type=int, default=2)
    args = parser.parse_args()

    from featurestore.repo import load_repo
    from transforms.engines.flink_decode import jvm_spec

    base = Path(tempfile.mkdtemp(prefix="mlfs-bench-stage1-"))
    repo = load_repo(make_repo(base, {}, redis=False))
    plans = [repo.view(name).plan for name in DECLARATIVE]
    assert jvm_spec(plans) is not None, "the declarative example views are decided in the JVM"
    full, small = base / "full.jsonl", base / "small.jsonl"
    write_events(args.events, args.users, full)
    fifth = args.events // 5
    head(full, fifth, small)
    print(
        f"{args.events:,} events, {args.users:,} users, {' + '.join(DECLARATIVE)}, parallelism "
        f"{args.parallelism}; events/s from runs of {args.events:,} and {fifth:,} events:"
    )
    run_job(plans, small, args.parallelism, "jvm")  # warms the JVM up (its JIT compiler)
    for name, stage1 in [
        ("stage 1 in the JVM (flink_decode)", "jvm"),
        ("stage 1's Python function", "python"),
        ("reading the file alone (reference)", "none"),
    ]:
        short = run_job(plans, small, args.parallelism, stage1)
        long = run_job(plans, full, args.parallelism, stage1)
        rate = (args.events - fifth) / max(long - short, 1e-9)
        print(f"  {name}: {rate:,.0f} events/s ({long:.1f} s and {short:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
