"""A resumable Spark backfill of one view.

1. Stage 1 (decode, time, transform, types) runs once over the history and what Python prepared is
   persisted, with the event counts and the dead letters, in a work directory named by the run (view
   definition, start and input files; the end is kept in the run's manifest). The rows Spark SQL
   prepares (``spark_clean``) are not written: each chunk recomputes them from the history, which
   costs less than writing and reading them back.
2. The range is cut into day-aligned chunks, by volume (``mlfs.backfill.chunk_rows`` stage-1 rows,
   as the embedded engine cuts them; one chunk for most inputs) or, with ``--chunk-days``, by
   calendar. Each chunk reads only the rows its values depend on
   (``size`` before it for continuous windows, ``size + hop`` for hopping ones, everything before it
   for lifetime; ``Window.lookback_ms``), computes its feature rows (the window kernel per key
   partition), and each Spark task writes its rows as one Parquet file per day; the driver then
   replaces the chunk's offline partitions from those files and records the chunk in the run's
   manifest. A run started again skips recorded chunks and reuses the run's created timestamp,
   so an interrupted and resumed backfill writes exactly what an uninterrupted one does.
3. The latest row per key in the range goes to the online store (newer-wins).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict
from datetime import date, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from backfill.history import is_json_lines
from backfill.report import ViewReport
from backfill.spark_session import spark_session
from backfill.work import (
    MANIFEST,
    ViewBackfill,
    chunks,
    has_rows,
    lookback_ms,
    newest_per_key,
    open_run,
    volume_chunks,
)
from featurestore.deadletter import write_dead_letters
from featurestore.offline.parquet import arrow_schema
from featurestore.view import StreamFeatureView
from transforms.engines.spark import (
    DEAD,
    DEAD_COLUMNS,
    KIND,
    ROW,
    TS,
    aggregate_rows,
    dead_letter_records,
    definition_errors,
    kernel_partitions,
    prepare_parts,
    prepared_ddl,
    score_rows,
    split_scored,
    tally,
)
from transforms.events import DeadLetter, EventCounts
from transforms.joining import other_sources
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP, TransformPlan
from transforms.stage1 import LINE, prepared_schema
from transforms.timeutil import datetime_to_ms, ms_to_datetime

ROWS_PER_TASK = 2_000_000
LATEST = "latest"  # a chunk's folder of each task's newest row per key
FOLD_ROWS = 1 << 20  # a task's candidate newest rows held before they are folded
log = logging.getLogger(__name__)

PROGRESS_UNIT = "chunks"  # what ``ViewBackfill.tick`` counts


def backfill_view(job: ViewBackfill) -> ViewReport:
    """Backfill one view on Spark (see the module docstring); returns what it did."""
    with definition_errors():
        return _backfill_view(job)


def _backfill_view(job: ViewBackfill) -> ViewReport:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    view = job.view
    spark = spark_session(job.spark_master)
    work, manifest, end = open_run(job)
    created = datetime.fromisoformat(manifest.created)
    prepared_path = work / "prepared"

    clock = time.monotonic()
    events = history_frame(spark, job.files)
    joins_dir: str | None = None
    sources: dict[str, EventCounts] = {}
    other_letters: list[DeadLetter] = []
    joins = job.join_inputs()
    if joins is not None:  # read by every task (``prepare_parts``); counted here, once
        joins.write(work / "joins")
        joins_dir = str(work / "joins")
        sources, other_letters = other_sources(view.plan, joins)
    jvm, python = prepare_parts(view.plan, events, joins_dir)

    def persisted() -> Any:
        """What Python prepared in stage 1 (all of it where Spark SQL prepares nothing)."""
        return spark.read.schema(prepared_ddl(view.plan)).parquet(str(prepared_path))

    def stage1() -> Any:
        """Stage 1's rows: the persisted part, and the JVM's part recomputed."""
        return persisted() if jvm is None else persisted().unionByName(jvm)

    if not manifest.prepared:
        counts, first, day_rows = _tally_stage1(
            view.plan, jvm, python, events.count(), prepared_path, persisted
        )
        dead = persisted().filter(F.col(KIND) == DEAD).select(*DEAD_COLUMNS)
        write_dead_letters(job.dead_letter_file(end), dead_letter_records(view.name, dead) + other_letters)
        manifest.prepared = True
        manifest.counts = asdict(counts)
        manifest.first_ms = first
        manifest.row_days = sorted(day_rows)
        manifest.day_rows = {str(d): n for d, n in day_rows.items()}
        manifest.save(work / MANIFEST)
        log.info("%s: stage 1 and dead letters in %.1fs", view.name, time.monotonic() - clock)
        clock = time.monotonic()

    report = ViewReport(view.name, EventCounts(**manifest.counts), end=end, source_counts=sources)
    if manifest.first_ms is None:  # no valid event at all
        shutil.rmtree(work, ignore_errors=True)
        return report
    rows = stage1().filter((F.col(KIND) == ROW) & (F.col(TS) < datetime_to_ms(end)))
    reach = lookback_ms(view)
    staged_dirs = []
    if job.chunk_days is None and (manifest.day_rows or not manifest.row_days):
        plan = volume_chunks(
            {int(d): n for d, n in manifest.day_rows.items()}, end, job.start, job.chunk_rows
        )
        chunking = f"rows:{job.chunk_rows}"
    else:  # asked for, or resuming a run from before volume chunks
        plan = chunks(ms_to_datetime(manifest.first_ms), end, job.start, job.chunk_days or 7)
        chunking = f"days:{job.chunk_days or 7}"
    if manifest.chunking != chunking:  # chunk numbers name other ranges now: rewrite them all
        manifest.chunks_done, manifest.rows_dead_lettered, manifest.chunking = [], {}, chunking
    for chunk in plan:
        staged = work / "staged" / f"chunk-{chunk.index}"
        staged_dirs.append(staged)
        if chunk.index in manifest.chunks_done:
            report.chunks_skipped += 1
            if job.tick:
                job.tick(1)
            continue
        if not has_rows(chunk, manifest.row_days, reach):
            if view.offline:  # what an earlier backfill wrote there goes (a rewrite is idempotent)
                stats = job.offline.write(view, [], created, chunk.start, chunk.end)
                report.partitions += stats.partitions
            manifest.chunks_done.append(chunk.index)
            manifest.save(work / MANIFEST)
            report.chunks_empty += 1
            if job.tick:
                job.tick(1)
            continue
        c0, c1 = datetime_to_ms(chunk.start), datetime_to_ms(chunk.end)
        needed = rows.filter(F.col(TS) < c1)
        if reach is not None:
            needed = needed.filter(F.col(TS) >= c0 - reach)
        partitions = _partitions(spark, manifest.counts["rows"])
        schema = arrow_schema(view)
        keys = list(view.plan.key_names) if view.online else None
        shutil.rmtree(staged, ignore_errors=True)
        if view.plan.row_stages:  # the model stages score the rows on Spark's workers first
            features = aggregate_rows(view.plan, needed, partitions).filter(
                (F.col(EVENT_TIMESTAMP) >= F.timestamp_millis(F.lit(c0)))
                & (F.col(EVENT_TIMESTAMP) < F.timestamp_millis(F.lit(c1)))
            )
            scored = score_rows(view.plan, features).persist(StorageLevel.MEMORY_AND_DISK)
            features, dead_rows = split_scored(scored)
            letters = dead_letter_records(view.name, dead_rows)
            path = job.dead_letter_file(end)
            write_dead_letters(path.with_name(f"{path.stem}-rows-{chunk.index}.jsonl"), letters)
            manifest.rows_dead_lettered[str(chunk.index)] = len(letters)
            stamped = features.withColumn(CREATED_TIMESTAMP, F.lit(created))
            written = stamped.mapInArrow(
                partial(_write_batches, schema=schema, directory=staged, keys=keys), FILES_DDL
            )
            days = _files_by_day(written)
            scored.unpersist()
        else:  # each task writes the rows its kernel made, none cross back into the JVM
            write = _chunk_writer(schema, staged, keys, created, c0, c1)
            days = _files_by_day(kernel_partitions(view.plan, needed, write, FILES_DDL, partitions))
        log.info("%s: chunk %d computed in %.1fs", view.name, chunk.index, time.monotonic() - clock)
        clock = time.monotonic()
        if view.offline:
            stats = job.offline.write_day_files(view, days, chunk.start, chunk.end)
            report.offline_rows += stats.rows
            report.partitions += stats.partitions
        manifest.chunks_done.append(chunk.index)
        manifest.save(work / MANIFEST)
        log.info("%s: chunk %d written offline in %.1fs", view.name, chunk.index, time.monotonic() - clock)
        clock = time.monotonic()
        if job.tick:
            job.tick(1)

    report.counts.rows_dead_lettered = sum(manifest.rows_dead_lettered.values())
    if view.online:
        latest = _latest_rows(view, staged_dirs)
        log.info("%s: %d latest rows in %.1fs", view.name, latest.num_rows, time.monotonic() - clock)
        clock = time.monotonic()
        stats_online = job.writer.write_table(view, latest)
        log.info("%s: online write in %.1fs", view.name, time.monotonic() - clock)
        report.online_written = stats_online.written
        report.online_skipped = stats_online.skipped_older
    shutil.rmtree(work, ignore_errors=True)
    return report


def _tally_stage1(
    plan: TransformPlan,
    jvm: Any | None,
    python: Any,
    events: int,
    prepared_path: Path,
    persisted: Callable[[], Any],
) -> tuple[EventCounts, int | None, dict[int, int]]:
    """Stage 1's counts, first row time and rows per day (``tally``), writing the Python part to
    ``prepared_path`` (read back by ``persisted``). The JVM part is counted first, so where it holds
    every event the Python part, which reads every column of every event to find none, is an empty
    file instead."""
    if jvm is None:
        python.write.mode("overwrite").parquet(str(prepared_path))
        return tally(persisted(), events)
    counts, first, day_rows = tally(jvm, events)
    if counts.aggregated + counts.filtered == events:  # the JVM part takes rows only, no dead letters
        shutil.rmtree(prepared_path, ignore_errors=True)
        prepared_path.mkdir(parents=True)
        pq.write_table(prepared_schema(plan).empty_table(), prepared_path / "part-0.parquet")
        return counts, first, day_rows
    python.write.mode("overwrite").parquet(str(prepared_path))
    more, more_first, more_days = tally(persisted(), 0)
    counts.add(more)
    for day, n in more_days.items():
        day_rows[day] = day_rows.get(day, 0) + n
    firsts = [t for t in (first, more_first) if t is not None]
    return counts, min(firsts, default=None), day_rows


def _latest_rows(view: StreamFeatureView, staged_dirs: list[Path]) -> pa.Table:
    """The newest row of each key among the run's chunks, from each task's newest rows of its keys
    (``_write_days``; feature rows are unique per key and time, so the newest is one row)."""
    keys = list(view.plan.key_names)
    files = [f for d in staged_dirs if d.is_dir() for f in sorted((d / LATEST).glob("part-*.parquet"))]
    if not files:
        return pa.table({})
    latest = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    return newest_per_key(latest, keys).drop_columns([CREATED_TIMESTAMP])


def history_frame(spark: Any, files: list[Path]) -> Any:
    """The history as a DataFrame: Parquet's columns, or JSON lines as their raw bytes (``LINE``;
    Spark's text reader splits lines where the stream's reader does and keeps bytes that are not
    UTF-8 as they are, for stage 1 to dead-letter)."""
    from pyspark.sql import functions as F

    paths = [str(f) for f in files]
    if is_json_lines(files):
        return spark.read.text(paths).select(F.col("value").cast("binary").alias(LINE))
    return spark.read.parquet(*paths)


def _partitions(spark: Any, rows: int) -> int:
    """Key partitions for the window kernel: at most ``ROWS_PER_TASK`` stage-1 rows each, a whole
    number of tasks per core (each task has a fixed cost and writes a file per day; 5 tasks on 2
    cores would leave one core idle while the fifth runs)."""
    cores = spark.sparkContext.defaultParallelism
    tasks = max(1, -(-rows // ROWS_PER_TASK))
    return cores * -(-tasks // cores)


FILES_DDL = "day string, path string, rows long"  # what ``_write_days`` returns per file


def _chunk_writer(
    schema: pa.Schema, directory: Path, keys: list[str] | None, created: datetime, c0: int, c1: int
) -> Callable[[pa.Table], Iterator[pa.RecordBatch]]:
    """What a Spark task does with the feature rows its kernel made for a chunk ``[c0, c1)`` (ms):
    keeps the chunk's, stamps them ``created`` and writes them (``_write_days``)."""
    created_type = schema.field(CREATED_TIMESTAMP).type
    created_us = pa.scalar(created, created_type).cast(pa.int64()).as_py()

    def write(table: pa.Table) -> Iterator[pa.RecordBatch]:
        ts = table.column(EVENT_TIMESTAMP).cast(pa.int64())
        table = table.filter(pc.and_(pc.greater_equal(ts, c0 * 1000), pc.less(ts, c1 * 1000)))
        stamps = pa.array(np.full(table.num_rows, created_us, np.int64)).cast(created_type)
        return _write_days([table.append_column(CREATED_TIMESTAMP, stamps)], schema, directory, keys)

    return write


def _write_batches(
    batches: Iterator[pa.RecordBatch], schema: pa.Schema, directory: Path, keys: list[str] | None
) -> Iterator[pa.RecordBatch]:
    """``_write_days`` over a Spark task's Arrow batches."""
    return _write_days((pa.Table.from_batches([b]) for b in batches), schema, directory, keys)


def _write_days(
    tables: Iterable[pa.Table], schema: pa.Schema, directory: Path, keys: list[str] | None
) -> Iterator[pa.RecordBatch]:
    """In a Spark task: its feature rows (``tables``) as one Parquet file per UTC day under
    ``directory`` (``<day>/part-<partition>.parquet``, so a retried task replaces its own files),
    which become the offline partitions' files as they are; one row (``FILES_DDL``) per file. With
    ``keys``, also the newest row of each key among the task's rows (``LATEST``), of which
    ``_latest_rows`` takes the newest for the online store."""
    from pyspark import TaskContext

    from featurestore.offline.parquet import day_slices

    context = TaskContext.get()
    task = context.partitionId() if context is not None else 0
    writers: dict[date, tuple[pq.ParquetWriter, Path]] = {}
    rows: dict[date, int] = {}
    candidates: list[pa.Table] = []  # rows that may be their key's newest
    held = 0
    try:
        for table in tables:
            table = table.select(schema.names).cast(schema)
            if keys is not None and table.num_rows:
                candidates.append(table)
                held += table.num_rows
                if held > FOLD_ROWS:  # keep memory near one row per key
                    candidates = [newest_per_key(pa.concat_tables(candidates), keys)]
                    held = candidates[0].num_rows
            for day, part in day_slices(table):
                if day not in writers:
                    folder = directory / day.isoformat()
                    folder.mkdir(parents=True, exist_ok=True)
                    tmp = folder / f".part-{task}.parquet.tmp"
                    writers[day] = (pq.ParquetWriter(tmp, schema), tmp)
                writers[day][0].write_table(part)
                rows[day] = rows.get(day, 0) + part.num_rows
    finally:
        for writer, _ in writers.values():
            writer.close()
    if candidates and keys is not None:
        newest = newest_per_key(pa.concat_tables(candidates), keys)
        folder = directory / LATEST
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(newest, folder / f".part-{task}.parquet.tmp")
        os.replace(folder / f".part-{task}.parquet.tmp", folder / f"part-{task}.parquet")
    for day, (_, tmp) in writers.items():
        final = tmp.with_name(f"part-{task}.parquet")
        os.replace(tmp, final)
        yield pa.RecordBatch.from_pylist([{"day": day.isoformat(), "path": str(final), "rows": rows[day]}])


def _files_by_day(written: Any) -> dict[date, list[Path]]:
    """The files a ``FILES_DDL`` frame of ``_write_days`` rows names, by day (runs its job)."""
    days: dict[date, list[Path]] = {}
    for row in written.collect():
        days.setdefault(date.fromisoformat(row["day"]), []).append(Path(row["path"]))
    return days
