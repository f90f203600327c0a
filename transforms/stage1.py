"""Stage 1 as Arrow batches, for the backfill engines: raw events to one table of typed rows, dead
letters and "filtered" markers, by ``transforms.events.EventPreparer`` (the reference's code), with
the rows ``transforms.arrow_events.split_clean`` proves clean taken vectorised. Raw events come as
Arrow batches of their columns (Parquet history) or of JSON lines (``LINE``), which are decoded and
typed as the stream's stage 1 does it (``transforms.json_batches``).

Each output row has a kind (``ROW``, ``DEAD``, ``FILTERED``); a row's ``FIRST`` says it is its event's
first row, so the four event counts are tallies of (kind, first).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrow_events import ENGINE_TYPES, missing_fields, split_clean
from transforms.dtypes import DType
from transforms.events import DeadLetter, EventCounts, EventPreparer, PreparedEvent, event_text
from transforms.json_batches import needed_fields, typed_batch
from transforms.plan import TransformPlan
from transforms.timeutil import datetime_to_ms, engine_value

KIND = "_kind"  # 0: a row, 1: a dead letter, 2: a filtered event
FIRST = "_first"  # the first row of an aggregated event (counts events, not rows)
TS = "_ts"
LINE = "_line"  # the one column of a batch of raw JSON lines (bytes)
ROW_ID = "_row_id"  # a pruned batch's row numbers in its history (``backfill.history.ParquetHistory``)
ROW, DEAD, FILTERED = 0, 1, 2
DEAD_COLUMNS = ("_reason", "_detail", "_raw", "_event_ms")
BATCH_ROWS = 131_072  # raw events per batch handed to stage 1


def holds_lines(schema: pa.Schema) -> bool:
    """Whether a batch of raw events is JSON lines (its one column ``LINE``), not event columns."""
    return schema.names == [LINE]


def raw_events(events: pa.Table) -> list[Any]:
    """A table of raw events as the reference's per-event code takes them: JSON lines as bytes,
    else dicts."""
    return events.column(LINE).to_pylist() if holds_lines(events.schema) else events.to_pylist()


def value_column(i: int) -> str:
    return f"_v{i}"


def _input_type(dtype: DType | None) -> pa.DataType:
    return pa.bool_() if dtype is None else ENGINE_TYPES[dtype.name]


def prepared_schema(plan: TransformPlan) -> pa.Schema:
    """The Arrow schema of stage 1's output."""
    fields = [pa.field(KIND, pa.int8()), pa.field(FIRST, pa.bool_())]
    fields += [pa.field(name, ENGINE_TYPES[dtype.name]) for name, dtype in plan.keys]
    fields.append(pa.field(TS, pa.int64()))
    fields += [pa.field(value_column(i), _input_type(f.input_dtype)) for i, f in enumerate(plan.features)]
    fields += [pa.field(c, pa.string()) for c in DEAD_COLUMNS[:3]]
    fields.append(pa.field(DEAD_COLUMNS[3], pa.int64()))
    return pa.schema(fields)


class _BatchBuilder:
    """Stage 1's output columns for one batch, filled one outcome at a time."""

    def __init__(self, plan: TransformPlan, schema: pa.Schema) -> None:
        self.schema = schema
        self.key_names = plan.key_names
        self.columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        self.no_key = (None,) * len(plan.key_names)
        self.no_values = (None,) * len(plan.features)
        self.no_dead = (None,) * len(DEAD_COLUMNS)

    def emit(
        self,
        kind: int,
        first: bool = False,
        key: tuple[Any, ...] | None = None,
        ts: int | None = None,
        values: tuple[Any, ...] | None = None,
        dead: tuple[Any, ...] | None = None,
    ) -> None:
        columns = self.columns
        columns[KIND].append(kind)
        columns[FIRST].append(first)
        for name, value in zip(self.key_names, key or self.no_key, strict=True):
            columns[name].append(value)
        columns[TS].append(ts)
        for i, value in enumerate(values or self.no_values):
            columns[value_column(i)].append(engine_value(value))
        for name, value in zip(DEAD_COLUMNS, dead or self.no_dead, strict=True):
            columns[name].append(value)

    def batch(self) -> pa.RecordBatch:
        return pa.RecordBatch.from_pydict(self.columns, schema=self.schema)


def clean_batch(schema: pa.Schema, clean: dict[str, pa.Array]) -> pa.RecordBatch:
    n = len(clean[TS])
    arrays = []
    for field in schema:
        if field.name == KIND:
            arrays.append(pa.array(np.full(n, ROW, dtype=np.int8)))
        elif field.name == FIRST:
            arrays.append(pa.array(np.ones(n, dtype=bool)))
        elif field.name in clean:
            arrays.append(clean[field.name].cast(field.type))
        else:
            arrays.append(pa.nulls(n, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def filtered_batch(schema: pa.Schema, n: int) -> pa.RecordBatch:
    fixed = {KIND: pa.array(np.full(n, FILTERED, dtype=np.int8)), FIRST: pa.array(np.zeros(n, dtype=bool))}
    arrays = [fixed.get(field.name, pa.nulls(n, field.type)) for field in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


WholeRows = Callable[[list[int]], list[dict[str, Any]]]


def prepare_batches(
    plan: TransformPlan,
    batches: Iterator[pa.RecordBatch],
    joined: Sequence[str] = (),
    whole_rows: WholeRows | None = None,
) -> Iterator[pa.RecordBatch]:
    """Stage 1 for the backfill engines: raw event batches (columns, or JSON lines as ``LINE``) to
    typed rows, dead letters and filtered markers. ``joined`` names the columns a batch holds
    besides the raw event: the fields its lookups added (``duckdb_joins``), which the event sees
    and its dead letter's raw input does not. A batch of only the columns the view reads carries
    ``ROW_ID``, and the events the vectorised path leaves to the row path are read whole by
    ``whole_rows`` (their dead letters carry the whole raw event)."""
    preparer = EventPreparer(plan)
    schema = prepared_schema(plan)
    fields = needed_fields(plan)
    for batch in batches:
        raw_names = [name for name in batch.schema.names if name not in joined and name != ROW_ID]
        if raw_names == [LINE]:
            lines = batch.column(LINE).to_pylist()
            if joined:
                yield _row_path(plan, preparer, schema, lines, batch.select(joined).to_pylist())
            else:
                yield from _prepare_lines(plan, preparer, schema, fields, lines)
            continue
        split = split_clean(plan, batch)
        if split is not None:  # clean rows vectorised; the rest (bad rows) row by row
            yield clean_batch(schema, split.clean)
            if split.filtered:
                yield filtered_batch(schema, split.filtered)
            batch = split.rest
            if not joined:
                missing = missing_fields(plan, batch)
                if missing is not None and missing.positions:
                    raws = _raw_rows(batch.take(pa.array(missing.positions)), raw_names, whole_rows)
                    letters = [
                        preparer.missing_time(raw) if key is None else preparer.missing_key(raw, key, ms or 0)
                        for raw, key, ms in zip(raws, missing.keys, missing.times, strict=True)
                    ]
                    yield outcomes_batch(plan, schema, letters)
                    batch = batch.filter(pa.array(~missing.mask))
        added = batch.select(joined).to_pylist() if joined else None
        yield _row_path(plan, preparer, schema, _raw_rows(batch, raw_names, whole_rows), added)


def _raw_rows(
    batch: pa.RecordBatch, raw_names: list[str], whole_rows: WholeRows | None
) -> list[dict[str, Any]]:
    """The raw events of a batch as dicts, read whole where the batch holds only some columns."""
    if ROW_ID not in batch.schema.names:
        return batch.select(raw_names).to_pylist()
    if whole_rows is None:
        raise ValueError(f"a batch with {ROW_ID} needs whole_rows to read its events whole")
    return whole_rows(batch.column(ROW_ID).to_pylist()) if batch.num_rows else []


def _prepare_lines(
    plan: TransformPlan,
    preparer: EventPreparer,
    schema: pa.Schema,
    fields: list[str] | None,
    lines: list[bytes],
) -> Iterator[pa.RecordBatch]:
    """JSON lines as the stream's stage 1 prepares them: the events ``typed_batch`` can type
    vectorised where the view allows, every other line through the row path as its text."""
    texts = [event_text(line) for line in lines]
    if fields is not None:
        typed = typed_batch(fields, texts)
        split = split_clean(plan, typed.batch) if typed.positions else None
        if split is not None:
            yield clean_batch(schema, split.clean)
            if split.filtered:
                yield filtered_batch(schema, split.filtered)
            taken = pc.or_(split.clean_mask, split.filtered_mask).to_numpy(zero_copy_only=False)
            left = np.asarray(typed.positions, dtype=np.int64)[~taken].tolist()
            texts = [texts[i] for i in sorted(left + typed.rest)]
    yield _row_path(plan, preparer, schema, texts)


def _row_path(
    plan: TransformPlan,
    preparer: EventPreparer,
    schema: pa.Schema,
    raws: list[Any],
    joined: list[dict[str, Any]] | None = None,
) -> pa.RecordBatch:
    """The reference's own preparation of ``raws`` (with the fields ``joined`` adds to each), one
    outcome at a time."""
    return outcomes_batch(plan, schema, preparer.prepare_batch(raws, joined))


def outcomes_batch(
    plan: TransformPlan,
    schema: pa.Schema,
    outcomes: Iterable[PreparedEvent | list[PreparedEvent] | DeadLetter | None],
) -> pa.RecordBatch:
    """Stage 1's output for events with these outcomes (a joined event's: several ``PreparedEvent``s)."""
    out = _BatchBuilder(plan, schema)
    for outcome in outcomes:
        if outcome is None:
            out.emit(FILTERED)
        elif isinstance(outcome, DeadLetter):
            event_ms = None if outcome.event_time is None else datetime_to_ms(outcome.event_time)
            out.emit(DEAD, dead=(outcome.reason, outcome.detail, outcome.raw, event_ms))
        else:
            first = True
            for prepared in outcome if isinstance(outcome, list) else [outcome]:
                for key, values in prepared.rows:
                    out.emit(ROW, first, key, prepared.time_ms, values)
                    first = False
    return out.batch()


def tally_batch(counts: EventCounts, batch: pa.RecordBatch) -> None:
    """Add one stage-1 output batch's outcomes to ``counts`` (``input`` is counted by the caller)."""
    kinds = batch.column(KIND).to_numpy(zero_copy_only=False).astype(np.int64)
    first = batch.column(FIRST).to_numpy(zero_copy_only=False).astype(np.int64)
    tallies = np.bincount(kinds * 2 + first, minlength=6)
    add_tallies(
        counts, {(k, bool(f)): int(tallies[k * 2 + f]) for k in (ROW, DEAD, FILTERED) for f in (0, 1)}
    )


def add_tallies(counts: EventCounts, tallies: Mapping[tuple[int, bool], int]) -> None:
    """Add stage 1's output counted by (``KIND``, ``FIRST``) to ``counts``: ``EventCounts.count``'s
    rule over a table, where an aggregated event is its first row."""
    for (kind, first), n in tallies.items():
        if kind == ROW:
            counts.rows += n
            counts.aggregated += n if first else 0
        elif kind == DEAD:
            counts.dead_lettered += n
        elif kind == FILTERED:
            counts.filtered += n
