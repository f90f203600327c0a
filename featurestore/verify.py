"""``mlfs verify``: run one view over the same sample of events on every engine and diff the rows.

The sample is a JSON-lines or Parquet file given by the user, or the first events of the view's
source history. Every engine replays it as bounded history (no lateness), so all must give the
reference engine's rows exactly (floats within 1e-9 relative).
"""

from __future__ import annotations

import itertools
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.compare import diff_rows
from transforms.errors import MLFSError
from transforms.stage1 import LINE, holds_lines

ENGINES = ("reference", "embedded", "spark", "flink")


@dataclass
class EngineRun:
    engine: str
    rows: int = 0
    seconds: float = 0.0
    counts: str = ""
    problems: list[str] = field(default_factory=list)


def load_sample(repo: FeatureRepo, view: StreamFeatureView, events: Path | None, sample: int) -> pa.Table:
    """The events to verify on, as one Arrow table: Parquet's columns, or JSON lines as their raw
    bytes (``LINE``), which every engine decodes as the stream does, bad lines included."""
    from backfill.history import file_lines, history_files, history_path, is_json_lines

    if events is not None:
        if not events.is_file():
            raise MLFSError(f"no such events file: {events}")
        files = [events]
    else:
        files = history_files(history_path(repo, view))
        if not files:
            raise MLFSError(f"view {view.name!r}: no history to sample; pass --events FILE")
    if (events is not None and events.suffix != ".parquet") or is_json_lines(files):
        lines = itertools.islice((line for f in files for line in file_lines(f)), sample)
        return pa.table({LINE: pa.array(list(lines), pa.binary())})
    tables = []
    taken = 0
    for f in files:
        table = pq.read_table(f).slice(0, sample - taken)
        tables.append(table)
        taken += table.num_rows
        if taken >= sample:
            break
    return pa.concat_tables(tables, promote_options="default")


def verify_view(
    repo: FeatureRepo,
    view: StreamFeatureView,
    sample: pa.Table,
    engines: list[str],
    progress: Callable[[str], None] = lambda _: None,
) -> list[EngineRun]:
    """Run ``view`` over ``sample`` on the reference engine and ``engines``; diff each with it."""
    from transforms.engines.reference import run_reference

    events = sample.column(LINE).to_pylist() if holds_lines(sample.schema) else sample.to_pylist()
    clock = time.monotonic()
    reference = run_reference(view.plan, events)
    runs = [EngineRun("reference", len(reference.rows), time.monotonic() - clock, reference.counts.summary())]
    for engine in engines:
        if engine == "reference":
            continue
        progress(f"running {view.name} on {engine} ...")
        clock = time.monotonic()
        rows, counts = _run(engine, view, sample, events)
        run = EngineRun(engine, len(rows), time.monotonic() - clock, counts.summary())
        run.problems = diff_rows(view.plan, reference.rows, rows)
        if counts != reference.counts:
            run.problems.append(f"counts differ: reference {reference.counts}, {engine} {counts}")
        runs.append(run)
    return runs


def _run(engine: str, view: StreamFeatureView, sample: pa.Table, events: list[Any]) -> Any:
    if engine == "embedded":
        from transforms.engines.embedded import run_embedded

        embedded = run_embedded(view.plan, sample.to_batches(), view.name)
        return embedded.rows, embedded.counts
    if engine == "spark":
        from backfill.spark_session import spark_session
        from transforms.engines.spark import run_spark

        with tempfile.TemporaryDirectory(prefix="mlfs-verify-") as tmp:
            path = Path(tmp) / "events.parquet"
            pq.write_table(sample, path)
            spark = spark_session("local[2]", "mlfs-verify")
            result = run_spark(view.plan, spark.read.parquet(str(path)))
            rows = result.rows.toArrow().to_pylist()
            result.release()
            return rows, result.counts
    if engine == "flink":
        from transforms.engines.flink import run_flink

        streamed = run_flink(view.plan, events)
        return streamed.rows, streamed.counts
    raise MLFSError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")


def report_lines(view: str, runs: list[EngineRun]) -> list[str]:
    lines = []
    for run in runs:
        verdict = "reference" if run.engine == "reference" else "identical" if not run.problems else "DIFFERS"
        lines.append(
            f"{view} on {run.engine:9} {run.rows:>8} rows  {run.seconds:6.1f}s  {verdict}  ({run.counts})"
        )
        lines += [f"    {problem}" for problem in run.problems]
    return lines
