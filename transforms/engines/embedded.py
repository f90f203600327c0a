"""The embedded engine: a view in process on DuckDB, the backfill default on one machine.

Stage 1 is ``transforms.stage1`` over Arrow batches (the reference's per-event code, clean rows
vectorised), loaded into a DuckDB table; stage 2 is the window kernel
``transforms.engines.duckdb_windows``; after-aggregation model stages run over the feature rows.
``backfill.embedded_backfill`` runs the same pieces chunk by chunk, writing the stores.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from queue import Full, Queue
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from transforms.engines.base import Engine, EngineResult
from transforms.engines.duckdb_joins import JoinedStage1
from transforms.engines.duckdb_windows import feature_rows
from transforms.events import DeadLetter, EventCounts
from transforms.joining import JoinInputs
from transforms.plan import FeatureContext, TransformPlan
from transforms.stage1 import (
    BATCH_ROWS,
    DEAD,
    DEAD_COLUMNS,
    KIND,
    ROW,
    TS,
    WholeRows,
    prepare_batches,
    prepared_schema,
    tally_batch,
)
from transforms.timeutil import MAX_TIME_MS, ms_to_datetime

T = TypeVar("T")


def run_embedded(
    plan: TransformPlan, batches: Iterable[pa.RecordBatch], view: str = "", joins: JoinInputs | None = None
) -> EngineResult:
    """``plan`` over raw event batches: feature rows (dicts), dead letters and counts."""
    con = duckdb.connect()
    sources: dict[str, EventCounts] = {}
    try:
        counts, letters = load_prepared(
            con, plan, view or plan.view, batches, joins=joins, source_counts=sources
        )
        rows = feature_rows(con, plan, "prepared").to_pylist()
    finally:
        con.close()
    result = EngineResult(rows=rows, dead_letters=letters, counts=counts, source_counts=sources)
    if plan.row_stages:
        from transforms.inference.feature_rows import FeatureRowScorer

        result.rows, dead = FeatureRowScorer(plan).score(result.rows)
        result.dead_letters.extend(dead)
        counts.rows_dead_lettered += len(dead)
    return result


class EmbeddedEngine(Engine):
    """DuckDB in process over a Parquet path or list of paths, an Arrow table, or Arrow record
    batches of raw events (option: ``joins``)."""

    name = "embedded"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> EngineResult:
        joins = ctx.options.get("joins")
        if isinstance(inputs, pa.Table):
            return self.run_table(plan, inputs, joins)
        if isinstance(inputs, (str, list)) or hasattr(inputs, "__fspath__"):
            paths = [str(p) for p in inputs] if isinstance(inputs, list) else str(inputs)
            batches = ds.dataset(paths, format="parquet").to_batches(batch_size=BATCH_ROWS)
            return run_embedded(plan, batches, joins=joins)
        return run_embedded(plan, inputs, joins=joins)

    def run_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> EngineResult:
        return run_embedded(plan, events.to_batches(max_chunksize=BATCH_ROWS), joins=joins)

    def feature_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> pa.Table | None:
        if plan.row_stages:  # model stages score rows as dicts
            return None
        con = duckdb.connect()
        try:
            load_prepared(con, plan, plan.view, events.to_batches(max_chunksize=BATCH_ROWS), joins=joins)
            table: pa.Table = feature_rows(con, plan, "prepared")
        finally:
            con.close()
        return table


ENGINE = EmbeddedEngine()


def load_prepared(
    con: Any,
    plan: TransformPlan,
    view: str,
    batches: Iterable[pa.RecordBatch],
    end_ms: int = MAX_TIME_MS + 1,
    tick: Callable[[int], None] | None = None,
    joins: JoinInputs | None = None,
    source_counts: dict[str, EventCounts] | None = None,
    whole_rows: WholeRows | None = None,
) -> tuple[EventCounts, list[DeadLetter]]:
    """Stage 1 over raw event batches into ``con``'s table ``prepared`` (keys, ``_ts``, ``_v<i>``;
    only rows before ``end_ms``, all a range ending there depends on); returns the counts and the
    dead letters. A view's joins read ``joins`` (``duckdb_joins``); an interval join's other
    sources' counts go to ``source_counts``, their dead letters with the view's. Batches of only
    the columns the view reads come with ``whole_rows`` (``transforms.stage1.prepare_batches``)."""
    schema = prepared_schema(plan)
    kept = [f.name for f in schema if f.name in (*plan.key_names, TS) or f.name.startswith("_v")]
    counts = EventCounts()
    letters: list[DeadLetter] = []
    stage = JoinedStage1(con, plan, joins or JoinInputs()) if plan.joins else None
    if stage is not None:
        letters.extend(stage.other_letters)
        if source_counts is not None:
            source_counts.update(stage.source_counts)

    def prepared() -> Iterator[tuple[int, list[pa.RecordBatch]]]:
        if stage is not None:
            yield from stage.run(batches)
            return
        for batch in batches:
            yield batch.num_rows, list(prepare_batches(plan, iter([batch]), whole_rows=whole_rows))

    def produced() -> Iterator[pa.RecordBatch]:
        for events, outs in prepared():
            counts.input += events
            for out in outs:
                tally_batch(counts, out)
                kinds = out.column(KIND).to_numpy(zero_copy_only=False)
                if (kinds == DEAD).any():
                    letters.extend(_dead_letters(view, out.filter(pa.array(kinds == DEAD))))
                wanted = (kinds == ROW) & _before(out, end_ms)
                taken = (out if wanted.all() else out.filter(pa.array(wanted))).select(kept)
                if taken.num_rows:
                    yield taken
            if tick:
                tick(events)

    failed: list[BaseException] = []

    def rows() -> Iterator[pa.RecordBatch]:
        try:
            yield from made_ahead(produced())
        except BaseException as err:  # DuckDB would report it as its own error
            failed.append(err)
            raise

    # One statement over a stream of batches: DuckDB loads them as stage 1 makes them.
    reader = pa.RecordBatchReader.from_batches(schema.empty_table().select(kept).schema, rows())
    con.register("_mlfs_rows", reader)
    try:
        con.execute("CREATE TABLE prepared AS SELECT * FROM _mlfs_rows")
    except duckdb.Error:
        if failed:
            raise failed[0] from None
        raise
    finally:
        con.unregister("_mlfs_rows")
    return counts, letters


def made_ahead(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    """``items`` made on a thread, up to ``depth`` ahead, so stage 1's Python runs while DuckDB
    loads the batches before (its load does not hold the GIL). The thread's error is raised here;
    closing this generator stops the thread."""
    made: Queue[tuple[bool, Any]] = Queue(depth)
    stop = threading.Event()
    end = object()

    def put(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                made.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def make() -> None:
        try:
            for item in items:
                if not put((True, item)):
                    return
            put((True, end))
        except BaseException as err:
            put((False, err))

    thread = threading.Thread(target=make, name="mlfs-stage1", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = made.get()
            if not ok:
                raise item
            if item is end:
                return
            yield item
    finally:
        stop.set()
        thread.join()


def _before(batch: pa.RecordBatch, end_ms: int) -> np.ndarray:
    return pc.fill_null(pc.less(batch.column(TS), end_ms), False).to_numpy(zero_copy_only=False)


def _dead_letters(view: str, batch: pa.RecordBatch) -> list[DeadLetter]:
    reason, detail, raw, event_ms = (batch.column(c).to_pylist() for c in DEAD_COLUMNS)
    return [
        DeadLetter(view=view, reason=r, detail=d, raw=w, event_time=None if t is None else ms_to_datetime(t))
        for r, d, w, t in zip(reason, detail, raw, event_ms, strict=True)
    ]
