"""MLFS views inside an Apache Beam pipeline (DirectRunner): each join view against the single-source
view of the same events (issue 25's target: at most 2x), rows checked equal to the reference engine's.

Generates N payment events over K users and 1,000 merchants (``benchmarks/backfill.py``'s generator)
and refunds of 5% of them, loads the benchmark repository (the example, plus a view that looks up
``user_payment_stats_7d`` and one that joins payments with refunds within a day), and runs one
pipeline per view from the raw events: ``user_payment_stats_7d`` alone, ``user_habit_7d`` with the
view it looks up computed in the same pipeline (as every engine does), ``user_refunds_7d`` with the
refunds as its other source. Each pipeline's wall time includes building it and the runner's start.

    python benchmarks/beam.py [--events 20000] [--users 2000] [--days 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

# Run as a script, this folder comes first on sys.path, and `backfill.py` here would hide the
# `backfill` package.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

from featurestore import Runner
from featurestore.repo import load_repo
from featurestore.scaffold import init_repo
from transforms.compare import diff_rows
from transforms.engines.reference import run_reference
from transforms.joining import JoinInputs, LookupTable

_SPEC = importlib.util.spec_from_file_location("bench_backfill", Path(__file__).with_name("backfill.py"))
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench)

STATS, HABIT, REFUNDS = "user_payment_stats_7d", "user_habit_7d", "user_refunds_7d"


def beam_rows(
    repo: Any, name: str, events: list[dict[str, Any]], refunds: list[dict[str, Any]]
) -> tuple[list[Any], float]:
    """The view's rows from one DirectRunner pipeline over the raw events, and its wall time."""
    import apache_beam as beam

    view = repo.views[name]
    out = Path(tempfile.mkdtemp(prefix="mlfs-beam-bench-")) / "rows.pickle"

    def keep(rows: list[Any]) -> None:
        out.write_bytes(pickle.dumps(rows))

    started = time.perf_counter()
    with beam.Pipeline() as pipeline:
        raw = pipeline | "Payments" >> beam.Create(events)
        lookups, sources = {}, {}
        if name == HABIT:
            stats = repo.views[STATS]
            lookups[STATS] = (stats.plan, stats.run(raw, Runner.BEAM).rows)
        if name == REFUNDS:
            sources["refunds"] = pipeline | "Refunds" >> beam.Create(refunds)
        result = view.run(raw, Runner.BEAM, lookups=lookups, sources=sources)
        _ = result.rows | beam.combiners.ToList() | beam.Map(keep)
    seconds = time.perf_counter() - started
    return pickle.loads(out.read_bytes()), seconds


def reference_rows(repo: Any, name: str, events: list[dict[str, Any]], refunds: pa.Table) -> list[Any]:
    stats = repo.views[STATS]
    stats_rows = run_reference(stats.plan, events).rows
    joins = JoinInputs(lookups={STATS: LookupTable.of(stats.plan, stats_rows)}, sources={"refunds": refunds})
    return run_reference(repo.views[name].plan, events, joins=joins).rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--days", type=int, default=30)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mlfs-beam-bench-"))
    repo_path = work / "repo"
    init_repo(repo_path, bench.START + timedelta(days=args.days + 1), history_events=100)
    history = repo_path / "data" / "history" / "payments.parquet"
    bench.generate(history, args.events, args.users, args.days)
    refunds_path = repo_path / "data" / "history" / "refunds.parquet"
    bench.generate_refunds(history, refunds_path)
    (repo_path / "bench_joins.py").write_text(bench.JOIN_VIEWS)
    repo = load_repo(repo_path)
    events = pq.read_table(history).to_pylist()
    refunds_table = pq.read_table(refunds_path)
    refunds = refunds_table.to_pylist()
    print(f"{args.events:,} payments, {len(refunds):,} refunds, {args.users:,} users, Beam DirectRunner:")
    single = 0.0
    for name in (STATS, HABIT, REFUNDS):
        rows, seconds = beam_rows(repo, name, events, refunds)
        problems = diff_rows(repo.views[name].plan, reference_rows(repo, name, events, refunds_table), rows)
        if problems:
            raise SystemExit(f"{name}: Beam's rows differ from the reference's:\n" + "\n".join(problems))
        single = single or seconds
        versus = f"  {seconds / single:4.2f}x the single-source view" if name != STATS else ""
        print(
            f"  {name:22} {len(rows):>9,} rows equal the reference's  {seconds:6.1f} s "
            f"({args.events / seconds:>8,.0f} ev/s){versus}",
            flush=True,
        )


if __name__ == "__main__":
    main()
