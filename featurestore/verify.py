"""``mlfs verify``: run one view over the same sample of events on every engine and diff the rows.

The sample is a JSON-lines or Parquet file given by the user, or the first events of the view's
source history. Every engine replays it as bounded history (no lateness), so all must give the
reference engine's rows exactly (floats within 1e-9 relative).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.repo import FeatureRepo
from featurestore.view import StreamFeatureView
from transforms.compare import diff_rows
from transforms.engines.base import get_engine
from transforms.errors import EngineUnavailable, MLFSError
from transforms.stage1 import LINE


@dataclass
class EngineRun:
    engine: str
    rows: int = 0
    seconds: float = 0.0
    counts: str = ""
    problems: list[str] = field(default_factory=list)
    not_run: str = ""  # why the engine could not run the view


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
    from backfill.joins import JoinReader

    clock = time.monotonic()
    joins = JoinReader(repo, "reference").inputs(view)
    reference = get_engine("reference").run_table(view.plan, sample, joins)
    runs = [EngineRun("reference", len(reference.rows), time.monotonic() - clock, reference.counts.summary())]
    for engine in engines:
        if engine == "reference":
            continue
        progress(f"running {view.name} on {engine} ...")
        clock = time.monotonic()
        try:  # a view's joins read what that engine computes of the views it looks up
            result = get_engine(engine).run_table(view.plan, sample, JoinReader(repo, engine).inputs(view))
        except EngineUnavailable as err:
            runs.append(EngineRun(engine, not_run=str(err)))
            continue
        run = EngineRun(engine, len(result.rows), time.monotonic() - clock, result.counts.summary())
        run.problems = diff_rows(view.plan, reference.rows, result.rows)
        if result.counts != reference.counts:
            run.problems.append(f"counts differ: reference {reference.counts}, {engine} {result.counts}")
        runs.append(run)
    return runs


def report_lines(view: str, runs: list[EngineRun]) -> list[str]:
    lines = []
    for run in runs:
        verdict = (
            "reference"
            if run.engine == "reference"
            else "not run"
            if run.not_run
            else "identical"
            if not run.problems
            else "DIFFERS"
        )
        what = run.not_run or run.counts
        lines.append(f"{view} on {run.engine:9} {run.rows:>8} rows  {run.seconds:6.1f}s  {verdict}  ({what})")
        lines += [f"    {problem}" for problem in run.problems]
    return lines
