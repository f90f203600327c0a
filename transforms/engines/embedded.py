"""The embedded engine: a view in process on DuckDB, the backfill default on one machine.

Stage 1 is ``transforms.stage1`` over Arrow batches (the reference's per-event code, clean rows
vectorised), loaded into a DuckDB table; stage 2 is the window kernel
``transforms.engines.duckdb_windows``; after-aggregation model stages run over the feature rows.
``backfill.embedded_backfill`` runs the same pieces chunk by chunk, writing the stores.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from queue import Full, Queue
from typing import Any, TypeVar

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from transforms.engines.base import Engine, EngineResult
from transforms.engines.duckdb_joins import JoinedStage1
from transforms.engines.duckdb_windows import feature_rows, reads_once
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
from transforms.timeutil import DAY_MS, MAX_TIME_MS, ms_to_datetime

T = TypeVar("T")


def run_embedded(
    plan: TransformPlan, batches: Iterable[pa.RecordBatch], view: str = "", joins: JoinInputs | None = None
) -> EngineResult:
    """``plan`` over raw event batches: feature rows (dicts), dead letters and counts."""
    con = duckdb.connect()
    stream = PreparedStream(plan, view or plan.view, batches, joins=joins)
    try:
        rows = streamed_features(con, plan, stream).to_pylist()
    finally:
        con.close()
    counts, letters, sources = stream.counts, stream.letters, stream.source_counts
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
        stream = PreparedStream(plan, plan.view, events.to_batches(max_chunksize=BATCH_ROWS), joins=joins)
        try:
            table = streamed_features(con, plan, stream)
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
    """Stage 1 over raw event batches into ``con``'s table ``prepared`` (``PreparedStream``);
    returns the counts and the dead letters."""
    stream = PreparedStream(plan, view, batches, end_ms, tick, joins, whole_rows)
    stream.store(con)
    if source_counts is not None:
        source_counts.update(stream.source_counts)
    return stream.counts, stream.letters


def streamed_features(con: Any, plan: TransformPlan, stream: PreparedStream) -> pa.Table:
    """The window kernel over stage 1's rows: read as they are made where the kernel reads them
    once (``reads_once``), else stored first as table ``prepared``."""
    if not reads_once(plan):
        stream.store(con)
        return feature_rows(con, plan, PreparedStream.TABLE)
    with stream.registered(con) as source:
        table: pa.Table = feature_rows(con, plan, source)
    return table


class PreparedStream:
    """Stage 1 over raw event batches as one stream of Arrow batches of typed rows (keys, ``_ts``,
    ``_v<i>``; only rows before ``end_ms``, all a range ending there depends on), read by one DuckDB
    statement as stage 1 makes them (on a thread, ``made_ahead``). Once read, it holds the counts,
    the dead letters and the rows per UTC day (``day_rows``). A view's joins read ``joins``
    (``duckdb_joins``); an interval join's other sources' counts go to ``source_counts``, their dead
    letters with the view's. Batches of only the columns the view reads come with ``whole_rows``
    (``transforms.stage1.prepare_batches``)."""

    NAME = "_mlfs_rows"
    TABLE = "prepared"  # where ``store`` puts the rows

    def __init__(
        self,
        plan: TransformPlan,
        view: str,
        batches: Iterable[pa.RecordBatch],
        end_ms: int = MAX_TIME_MS + 1,
        tick: Callable[[int], None] | None = None,
        joins: JoinInputs | None = None,
        whole_rows: WholeRows | None = None,
    ) -> None:
        self.plan, self.view, self.batches, self.end_ms, self.tick = plan, view, batches, end_ms, tick
        self.whole_rows = whole_rows
        self.counts = EventCounts()
        self.letters: list[DeadLetter] = []
        self.source_counts: dict[str, EventCounts] = {}
        self.day_rows: Counter[int] = Counter()
        self.read = False  # whether the statement read the stream to its end
        self.joins = joins or JoinInputs()
        self.stage: JoinedStage1 | None = None
        self.kept = [
            f.name
            for f in prepared_schema(plan)
            if f.name in (*plan.key_names, TS) or f.name.startswith("_v")
        ]

    @contextmanager
    def registered(self, con: Any) -> Iterator[str]:
        """The stream registered in ``con`` under the name yielded, for one statement to read."""
        failed: list[BaseException] = []

        def rows() -> Iterator[pa.RecordBatch]:
            try:
                yield from made_ahead(self._produced())
            except BaseException as err:  # DuckDB would report it as its own error
                failed.append(err)
                raise

        schema = prepared_schema(self.plan).empty_table().select(self.kept).schema
        if self.plan.joins:
            self.stage = JoinedStage1(con, self.plan, self.joins)
            self.letters.extend(self.stage.other_letters)
            self.source_counts.update(self.stage.source_counts)
        con.register(self.NAME, pa.RecordBatchReader.from_batches(schema, rows()))
        try:
            yield self.NAME
        except duckdb.Error:
            if failed:
                raise failed[0] from None
            raise
        finally:
            con.unregister(self.NAME)
        if not self.read:  # the counts and dead letters would be short
            raise RuntimeError("stage 1's rows were not read to their end")

    def store(self, con: Any) -> None:
        """Read the stream into ``con``'s table ``prepared`` (``TABLE``)."""
        with self.registered(con) as rows:
            con.execute(f"CREATE TABLE {self.TABLE} AS SELECT * FROM {rows}")

    def _prepared(self) -> Iterator[tuple[int, list[pa.RecordBatch]]]:
        if self.stage is not None:
            yield from self.stage.run(self.batches)
            return
        for batch in self.batches:
            yield batch.num_rows, list(prepare_batches(self.plan, iter([batch]), whole_rows=self.whole_rows))

    def _produced(self) -> Iterator[pa.RecordBatch]:
        for events, outs in self._prepared():
            self.counts.input += events
            for out in outs:
                tally_batch(self.counts, out)
                kinds = out.column(KIND).to_numpy(zero_copy_only=False)
                if (kinds == DEAD).any():
                    self.letters.extend(_dead_letters(self.view, out.filter(pa.array(kinds == DEAD))))
                wanted = (kinds == ROW) & _before(out, self.end_ms)
                taken = (out if wanted.all() else out.filter(pa.array(wanted))).select(self.kept)
                if taken.num_rows:
                    self.day_rows.update(_days(taken.column(TS)))
                    yield taken
            if self.tick:
                self.tick(events)
        self.read = True


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


def _days(times: pa.Array) -> dict[int, int]:
    """How many of ``times`` (epoch ms, not null) fall on each UTC day (days since 1970)."""
    days = times.to_numpy(zero_copy_only=False) // DAY_MS
    first = int(days.min())
    if int(days.max()) - first < 1 << 16:
        counted = np.bincount(days - first)
        return {first + int(d): int(counted[d]) for d in np.flatnonzero(counted)}
    found = pc.value_counts(pa.array(days)).to_pylist()
    return {int(v["values"]): int(v["counts"]) for v in found}


def _before(batch: pa.RecordBatch, end_ms: int) -> np.ndarray:
    return pc.fill_null(pc.less(batch.column(TS), end_ms), False).to_numpy(zero_copy_only=False)


def _dead_letters(view: str, batch: pa.RecordBatch) -> list[DeadLetter]:
    reason, detail, raw, event_ms = (batch.column(c).to_pylist() for c in DEAD_COLUMNS)
    return [
        DeadLetter(view=view, reason=r, detail=d, raw=w, event_time=None if t is None else ms_to_datetime(t))
        for r, d, w, t in zip(reason, detail, raw, event_ms, strict=True)
    ]
