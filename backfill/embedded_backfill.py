"""The embedded backfill of one view: in process, on DuckDB, the default on one machine.

1. Stage 1 (``transforms.stage1``: decode, time, transform, types; clean rows vectorised) runs over
   the history's Arrow batches (``backfill.history``: Parquet columns or JSON lines); its typed rows
   go into a DuckDB table (spilled to the run's work directory when memory runs short), the dead
   letters to their file, the counts to the manifest.
2. The range is cut into day-aligned chunks by volume (``CHUNK_ROWS`` rows each; one chunk for
   small inputs). Each chunk's feature rows come from ``transforms.engines.duckdb_windows`` (the
   window kernel Spark runs too) over the rows its values depend on, go through the view's model
   stages, and replace the chunk's offline partitions straight from Arrow, then the chunk is
   recorded in the run's manifest (``backfill.work``). A run started again after a kill skips the
   recorded chunks and reuses the created timestamp, so it writes exactly what one run would.
3. The newest row per key goes to the online store (newer-wins).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import asdict
from datetime import date, datetime
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from backfill.history import history_batches
from backfill.report import ViewReport
from backfill.work import (
    MANIFEST,
    Chunk,
    ViewBackfill,
    has_rows,
    lookback_ms,
    newest_per_key,
    open_run,
    volume_chunks,
)
from featurestore.deadletter import write_dead_letters
from featurestore.offline.parquet import ParquetOfflineStore, arrow_schema, day_slices, partition_order_sql
from featurestore.view import StreamFeatureView
from transforms.engines.duckdb_windows import feature_rows, reads_once
from transforms.engines.embedded import PreparedStream
from transforms.events import DeadLetter, EventCounts
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP
from transforms.stage1 import TS
from transforms.timeutil import DAY_MS, MIN_TIME_MS, datetime_to_ms, ms_to_datetime

log = logging.getLogger(__name__)

PROGRESS_UNIT = "events"  # what ``ViewBackfill.tick`` counts


def backfill_view(job: ViewBackfill) -> ViewReport:
    """Backfill one view in process (see the module docstring); returns what it did."""
    view = job.view
    plan = view.plan
    work, manifest, end = open_run(job)
    created = datetime.fromisoformat(manifest.created)
    end_ms = datetime_to_ms(end)

    clock = time.monotonic()
    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{_sql_text(str(work / 'spill'))}'")
    con.execute("SET preserve_insertion_order = false")
    batches, whole_rows = history_batches(view, job.files)
    stream = PreparedStream(plan, view.name, batches, end_ms, job.tick, job.join_inputs(), whole_rows)
    # A view whose kernel reads its rows once and whose rows fit one chunk never stores them.
    streamed = reads_once(plan) and _at_most_one_row_each(view) and job.events_at_most(job.chunk_rows)
    reach = lookback_ms(view)
    if streamed:
        whole = Chunk(-1, job.start or ms_to_datetime(MIN_TIME_MS), end)
        with stream.registered(con) as source:
            streamed_rows = _chunk_rows(con, view, whole, reach, source)
        day_counts = dict(stream.day_rows)
    else:
        stream.store(con)
        days = f"SELECT {TS} // {DAY_MS}, count(*) FROM {PreparedStream.TABLE} GROUP BY 1"
        day_counts = dict(con.sql(days).fetchall())
    counts, letters, sources = stream.counts, stream.letters, stream.source_counts
    if not manifest.prepared:
        write_dead_letters(job.dead_letter_file(end), letters)
        manifest.prepared = True
        manifest.counts = asdict(counts)
        manifest.save(work / MANIFEST)
    log.info("%s: stage 1 in %.1fs", view.name, time.monotonic() - clock)

    report = ViewReport(view.name, EventCounts(**manifest.counts), end=end, source_counts=sources)
    latest: list[pa.Table] = []
    for chunk in volume_chunks(day_counts, end, job.start, job.chunk_rows):
        done = chunk.index in manifest.chunks_done
        if done:
            report.chunks_skipped += 1
        if not has_rows(chunk, sorted(day_counts), reach):
            if not done:
                if view.offline:  # what an earlier backfill wrote there goes (a rewrite is idempotent)
                    report.partitions += job.offline.write(
                        view, [], created, chunk.start, chunk.end
                    ).partitions
                manifest.chunks_done.append(chunk.index)
                manifest.save(work / MANIFEST)
                report.chunks_empty += 1
            continue
        table = _inside(streamed_rows, chunk) if streamed else _chunk_rows(con, view, chunk, reach)
        if plan.row_stages:
            table, dead = _score(view, table)
            if not done:
                path = job.dead_letter_file(end)
                write_dead_letters(path.with_name(f"{path.stem}-rows-{chunk.index}.jsonl"), dead)
                manifest.rows_dead_lettered[str(chunk.index)] = len(dead)
        if view.online and table.num_rows:
            latest.append(newest_per_key(table, list(plan.key_names)))
        if done:
            continue
        if view.offline:
            stats = _write_offline(job.offline, view, table, created, chunk)
            report.offline_rows += stats[0]
            report.partitions += stats[1]
        manifest.chunks_done.append(chunk.index)
        manifest.save(work / MANIFEST)
        log.info("%s: chunk %d in %.1fs", view.name, chunk.index, time.monotonic() - clock)
        clock = time.monotonic()
    con.close()
    report.counts.rows_dead_lettered = sum(manifest.rows_dead_lettered.values())
    if view.online and latest:
        newest = newest_per_key(pa.concat_tables(latest), list(plan.key_names))
        online = job.writer.write_table(view, newest)
        report.online_written, report.online_skipped = online.written, online.skipped_older
    shutil.rmtree(work, ignore_errors=True)
    return report


def _sql_text(text: str) -> str:
    return text.replace("'", "''")


def _chunk_rows(
    con: Any, view: StreamFeatureView, chunk: Chunk, reach: int | None, rows: str = PreparedStream.TABLE
) -> pa.Table:
    """The chunk's feature rows, computed from the rows of table ``rows`` its values depend on."""
    c0, c1 = datetime_to_ms(chunk.start), datetime_to_ms(chunk.end)
    where = f"{TS} < {c1}" + ("" if reach is None else f" AND {TS} >= {c0 - reach}")
    source = f"(SELECT * FROM {rows} WHERE {where})"
    return _inside(feature_rows(con, view.plan, source, partition_order_sql(view)), chunk)


def _inside(table: pa.Table, chunk: Chunk) -> pa.Table:
    """The feature rows of ``table`` timed inside ``chunk``."""
    ts = table.column(EVENT_TIMESTAMP)
    inside = pc.and_(
        pc.greater_equal(ts, pa.scalar(chunk.start, ts.type)), pc.less(ts, pa.scalar(chunk.end, ts.type))
    )
    return table.filter(inside)


def _at_most_one_row_each(view: StreamFeatureView) -> bool:
    """Whether stage 1 makes at most one row per event (no Python transform, no join), so the
    history's size bounds the rows."""
    return view.plan.declarative_events and not view.plan.joins


def _score(view: StreamFeatureView, table: pa.Table) -> tuple[pa.Table, list[DeadLetter]]:
    """After-aggregation model stages (``FeatureRowScorer``) over the chunk's feature rows."""
    from transforms.inference.feature_rows import FeatureRowScorer

    scored, dead = FeatureRowScorer(view.plan).score(table.to_pylist())
    schema = arrow_schema(view).remove(arrow_schema(view).get_field_index(CREATED_TIMESTAMP))
    return pa.Table.from_pylist(scored, schema=schema), dead


def _write_offline(
    offline: ParquetOfflineStore, view: StreamFeatureView, table: pa.Table, created: datetime, chunk: Chunk
) -> tuple[int, int]:
    """Replace the chunk's partitions with its rows, split by UTC day in memory (no staged copy)."""
    schema = arrow_schema(view)
    created_type = schema.field(CREATED_TIMESTAMP).type
    stamp = pa.scalar(created, created_type).cast(pa.int64()).as_py()
    table = table.append_column(
        CREATED_TIMESTAMP, pa.array(np.full(table.num_rows, stamp, np.int64)).cast(created_type)
    )
    table = table.select(schema.names).cast(schema)
    days = dict(day_slices(table))

    def day_rows(day: date) -> pa.Table:
        return days.get(day, schema.empty_table())

    stats = offline.replace(view, set(days), day_rows, chunk.start, chunk.end, ordered=True)
    return stats.rows, stats.partitions
