"""Joins lowered to DuckDB for the embedded engine: ``Lookup`` as ``ASOF LEFT JOIN``, ``IntervalJoin``
as a range join.

A view whose joins are all lookups keeps the vectorised stage 1 (``LookupJoiner``); a view with
an interval join prepares its joined events together (``JoinedEventStage``).

Each raw event batch gets a probe (its rows' times and lookup keys): vectorised where the time
column is a timestamp and the key columns hold the keys' exact types, else through
``EventPreparer`` row by row (the rows the row path would dead-letter for their time keep null
keys, so stage 1 dead-letters them as the reference does). A key that does not coerce makes the
event a ``wrong_type`` dead letter here, before stage 1, as in ``transforms.joining``. DuckDB finds
each probe row's latest looked-up row at or before (``exclusive``: before) its time; the found
features are added to the batch, which stage 1 prepares with the fields marked as joined.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrow_events import ENGINE_TYPES, holds, split_clean, time_ms_column, typed_time_ms
from transforms.dtypes import CoercionError, DType
from transforms.engines.duckdb_windows import quote
from transforms.events import WRONG_TYPE, DeadLetter, EventCounts, EventPreparer
from transforms.joining import (
    JOIN_COLUMN_TYPES,
    JoinedEvent,
    JoinInputs,
    OtherEvent,
    join_key,
    joined_fields,
    joined_outcome,
    lookup_key,
    partner_order,
    read_other,
)
from transforms.joins import IntervalJoin, Lookup
from transforms.plan import EVENT_TIMESTAMP, TransformPlan
from transforms.stage1 import (
    FIRST,
    LINE,
    clean_batch,
    filtered_batch,
    outcomes_batch,
    prepare_batches,
    prepared_schema,
)

KeyField = tuple[str, str, DType]  # the event's field, the probe's column, the key's type


def _register(con: Any, name: str, columns: dict[str, pa.Array]) -> None:
    """A DuckDB table of ``columns`` (held by DuckDB once, not scanned from Arrow per batch)."""
    con.register("_mlfs_rows", pa.table(columns))
    try:
        con.execute(f"CREATE TEMP TABLE {name} AS SELECT * FROM _mlfs_rows")
    finally:
        con.unregister("_mlfs_rows")


def _register_lookup(
    con: Any, plan: TransformPlan, j: int, lookup: Lookup, inputs: JoinInputs
) -> list[KeyField]:
    """The looked-up view's rows as table ``_mlfs_lookup<j>`` (keys ``_k<j>_<m>``, time ``_t<j>``,
    features ``_f<j>_<i>``); returns the key fields."""
    table = inputs.lookups[lookup.view]
    key_types = dict(table.keys)
    rows = table.rows
    columns: dict[str, pa.Array] = {}
    keys = []
    for m, (field, key) in enumerate(lookup.on):
        keys.append((field, f"_k{j}_{m}", key_types[key]))
        columns[f"_k{j}_{m}"] = rows.column(key)
    columns[f"_t{j}"] = time_ms_column(rows.column(EVENT_TIMESTAMP))
    for i, feature in enumerate(lookup.features):
        columns[f"_f{j}_{i}"] = rows.column(feature)
    _register(con, f"_mlfs_lookup{j}", columns)
    return keys


def _asof_join(j: int, lookup: Lookup, keys: list[KeyField]) -> str:
    """The ``ASOF LEFT JOIN`` of probe ``p`` with lookup ``j``: the latest row at or before (or
    before) each probe row's time ``_t``."""
    on = " AND ".join(f"p.{probe} = l{j}.{probe}" for _, probe, _ in keys)
    compare = ">" if lookup.exclusive else ">="
    return f"ASOF LEFT JOIN _mlfs_lookup{j} l{j} ON {on} AND p._t {compare} l{j}._t{j}"


class LookupJoiner:
    """A view's lookups over raw event batches, in ``con``'s database."""

    def __init__(self, con: Any, plan: TransformPlan, inputs: JoinInputs) -> None:
        con = self.con = con.cursor()  # its own connection: stage 1's load holds ``con``'s
        self.plan = plan
        self.preparer = EventPreparer(plan)
        self.keys: list[list[KeyField]] = []  # per lookup
        selects, joins = [], []
        for j, lookup in enumerate(plan.lookups):
            keys = _register_lookup(con, plan, j, lookup, inputs)
            self.keys.append(keys)
            joins.append(_asof_join(j, lookup, keys))
            selects += [f"l{j}._f{j}_{i} AS {quote(name)}" for i, name in enumerate(lookup.added_fields)]
        self.added = [name for lookup in plan.lookups for name in lookup.added_fields]
        self.sql = f"SELECT {', '.join(selects)} FROM _mlfs_probe p {' '.join(joins)} ORDER BY p._pos"

    def join(
        self, batches: Iterable[pa.RecordBatch]
    ) -> Iterator[tuple[pa.RecordBatch, list[DeadLetter], list[pa.RecordBatch]]]:
        """Each raw batch, the dead letters of its events whose key does not coerce, and the batch
        with the lookups' fields added (``self.added``) and those events left out. All batches'
        events are looked up by one ``ASOF`` join (DuckDB sorts the looked-up rows once, not once
        per batch), so the raw batches are held until it has run."""
        held: list[tuple[pa.RecordBatch, pa.Array | None, list[DeadLetter]]] = []
        probes = []
        offset = 0
        for batch in batches:
            letters: list[DeadLetter] = []
            probe, dead = self._probe(batch, letters)
            probes.append(probe.set_column(0, "_pos", pc.add(probe.column("_pos"), offset)))
            held.append((batch, dead, letters))
            offset += batch.num_rows
        if not held:
            return
        self.con.register("_mlfs_probe", pa.concat_tables(probes))
        try:
            found = self.con.sql(self.sql).to_arrow_table()
        finally:
            self.con.unregister("_mlfs_probe")
        offset = 0
        for batch, dead, letters in held:
            part = found.slice(offset, batch.num_rows)
            offset += batch.num_rows
            kept = batch.drop_columns([n for n in self.added if n in batch.schema.names])
            table = pa.Table.from_batches([kept])
            for name in self.added:
                table = table.append_column(name, part.column(name))
            if dead is not None:
                table = table.filter(pc.invert(dead))
            yield batch, letters, table.combine_chunks().to_batches()

    def _probe(self, batch: pa.RecordBatch, letters: list[DeadLetter]) -> tuple[pa.Table, pa.Array | None]:
        """The batch's ``_pos``, ``_t`` and key columns, and which rows are dead letters."""
        n = batch.num_rows
        columns: dict[str, Any] = {"_pos": pa.array(np.arange(n, dtype=np.int64))}
        vectorised = self._vectorised(batch)
        if vectorised is not None:
            columns.update(vectorised)
            return pa.table(columns), None
        times: list[int | None] = []
        keys: dict[str, list[Any]] = {probe: [] for lookup in self.keys for _, probe, _ in lookup}
        dead = np.zeros(n, dtype=bool)
        raws = batch.column(LINE).to_pylist() if batch.schema.names == [LINE] else batch.to_pylist()
        for row, raw in enumerate(raws):
            first = self.preparer.decode_and_time(raw)
            values: dict[str, Any] = {}
            time_ms: int | None = None
            if not isinstance(first, DeadLetter):
                event, time_ms = first
                try:
                    for lookup, key_fields in zip(self.plan.lookups, self.keys, strict=True):
                        key = lookup_key(lookup, [(f, dtype) for f, _, dtype in key_fields], event)
                        values.update(zip([probe for _, probe, _ in key_fields], key, strict=True))
                except CoercionError as err:
                    letters.append(self.preparer.dead_letter(raw, WRONG_TYPE, str(err), time_ms))
                    dead[row] = True
                    values = {}
            times.append(time_ms)
            for probe, column in keys.items():
                column.append(values.get(probe))
        columns["_t"] = pa.array(times, pa.int64())
        for key_fields in self.keys:
            for _, probe, dtype in key_fields:
                columns[probe] = pa.array(keys[probe], ENGINE_TYPES[dtype.name])
        return pa.table(columns), pa.array(dead)

    def _vectorised(self, batch: pa.RecordBatch) -> dict[str, pa.Array] | None:
        """The probe's time and keys straight from typed columns (None: not vectorisable)."""
        times = typed_time_ms(batch, self.plan.timestamp_field, self.plan.event_time_range_ms)
        if times is None:
            return None
        raw_ms, timed = times
        out: dict[str, pa.Array] = {"_t": pc.if_else(timed, raw_ms, None)}
        for lookup in self.keys:
            for field, probe, dtype in lookup:
                if not holds(batch, field, (ENGINE_TYPES[dtype.name],)):
                    return None
                out[probe] = batch.column(field).cast(ENGINE_TYPES[dtype.name])
        return out


def _join_text(value: Any) -> str:
    """An interval join's value as DuckDB compares it: its type and value (1 never equals "1")."""
    return f"i:{value}" if isinstance(value, int) else f"s:{value}"


EVENT = "_event"  # a joined row's raw event (its position in the batch)


def _fields_table(join: IntervalJoin, partners: list[OtherEvent]) -> pa.Table | None:
    """An interval join's partners' carried fields and time (the fields it adds, in partner order)
    as Arrow columns; None when a field holds values of more than one type, which only the
    per-event path carries exactly as they are."""
    columns = []
    for i in range(len(join.fields)):
        values = [fields[i] for _, _, fields in partners]
        kinds = {type(v) for v in values if v is not None}
        if len(kinds) > 1 or not kinds <= {str, int, float, bool}:
            return None
        columns.append(pa.array(values))
    columns.append(pa.array([t for _, t, _ in partners], pa.int64()).cast(pa.timestamp("ms", tz="UTC")))
    return pa.table(columns, names=list(join.added_fields))


class JoinedEventStage:
    """Stage 1 of a view with an interval join, whatever its other joins: each event is decoded and
    timed by ``EventPreparer``, DuckDB finds every join's partners (``ASOF`` for lookups, a range
    join for interval joins, over the other source's events read once by ``joining.read_other``),
    and the joined events go through the event transform and checks together, so that each event
    counts once with the outcome of its joined events (``joining.joined_outcome``)."""

    def __init__(self, con: Any, plan: TransformPlan, inputs: JoinInputs) -> None:
        con = self.con = con.cursor()
        self.plan = plan
        self.preparer = EventPreparer(plan)
        self.schema = prepared_schema(plan)
        self.source_counts: dict[str, EventCounts] = {}
        self.other_letters: list[DeadLetter] = []
        self.keys: dict[int, list[KeyField]] = {}
        self.partners: dict[int, list[OtherEvent]] = {}
        self.fields: dict[int, pa.Table | None] = {}  # per interval join: its partners' fields, in order
        for j, join in enumerate(plan.joins):
            if isinstance(join, Lookup):
                self.keys[j] = _register_lookup(con, plan, j, join, inputs)
                continue
            counts = self.source_counts.setdefault(join.source_name, EventCounts())
            events = inputs.sources[join.source_name]
            taken = read_other(plan, join, events, counts, self.other_letters, typed=True)
            taken.sort(key=partner_order)  # a partner's position is its place in the joined order
            self.partners[j] = taken
            columns: dict[str, pa.Array] = {
                "_b": pa.array(np.arange(len(taken), dtype=np.int64)),
                "_bt": pa.array([t for _, t, _ in taken], pa.int64()),
            }
            for m in range(len(join.on)):
                columns[f"_k{m}"] = pa.array([_join_text(key[m]) for key, _, _ in taken], pa.string())
            _register(con, f"_mlfs_other{j}", columns)
            self.fields[j] = _fields_table(join, taken)

    def prepare(self, batch: pa.RecordBatch) -> list[pa.RecordBatch]:
        """Stage 1's output for one batch of raw events: vectorised where ``_vectorised`` can,
        else event by event."""
        out = self._vectorised(batch)
        return out if out is not None else [self._by_event(batch)]

    def _vectorised(self, batch: pa.RecordBatch) -> list[pa.RecordBatch] | None:
        """A declarative view's batch with a typed time column and join columns of exact types:
        the joins over whole columns, then ``split_clean``. The events it cannot prove clean (a
        joined row left to the row path, or no usable time) go through ``_by_event``, so that
        their joined events are counted and dead-lettered together (None: the whole batch does)."""
        plan = self.plan
        if not plan.declarative_events or None in self.fields.values():
            return None
        times = typed_time_ms(batch, plan.timestamp_field, plan.event_time_range_ms)
        if times is None or not all(self._exact(batch, j, join) for j, join in enumerate(plan.joins)):
            return None
        raw_ms, timed = times
        timed_np = timed.to_numpy(zero_copy_only=False)
        table = pa.Table.from_batches([batch]).filter(timed)
        table = table.append_column(EVENT, pa.array(np.flatnonzero(timed_np)))
        times = raw_ms.filter(timed)
        for j, join in enumerate(plan.joins):
            table, times = self._join_columns(j, join, table, times)
        joined = table.drop_columns([EVENT]).combine_chunks()
        rows = (
            joined.to_batches()[0]
            if joined.num_rows
            else pa.RecordBatch.from_pylist([], schema=joined.schema)
        )
        split = split_clean(plan, rows)
        if split is None:
            return None
        event_of = table.column(EVENT).to_numpy()
        clean = split.clean_mask.to_numpy(zero_copy_only=False)
        left = ~(clean | split.filtered_mask.to_numpy(zero_copy_only=False))
        by_event = np.union1d(event_of[left], np.flatnonzero(~timed_np))
        kept = ~np.isin(event_of[clean], by_event)
        kept_events = event_of[clean][kept]
        out = []
        if kept.any():
            first = np.zeros(len(kept_events), dtype=bool)
            first[np.unique(kept_events, return_index=True)[1]] = True
            rows_batch = clean_batch(
                self.schema, {k: v.filter(pa.array(kept)) for k, v in split.clean.items()}
            )
            out.append(rows_batch.set_column(self.schema.get_field_index(FIRST), FIRST, pa.array(first)))
        aggregated = len(np.unique(kept_events))
        filtered = int(timed_np.sum()) - aggregated - int(np.isin(by_event, np.flatnonzero(timed_np)).sum())
        if filtered:
            out.append(filtered_batch(self.schema, filtered))
        if len(by_event):
            out.append(self._by_event(batch.take(pa.array(by_event))))
        return out

    def _exact(self, batch: pa.RecordBatch, j: int, join: Lookup | IntervalJoin) -> bool:
        """Whether the batch's columns of join ``j``'s values hold exactly the types it compares."""
        if isinstance(join, Lookup):
            return all(holds(batch, f, (ENGINE_TYPES[d.name],)) for f, _, d in self.keys[j])
        return all(holds(batch, f, JOIN_COLUMN_TYPES) for f, _ in join.on)

    def _join_columns(
        self, j: int, join: Lookup | IntervalJoin, table: pa.Table, times: pa.Array
    ) -> tuple[pa.Table, pa.Array]:
        """Join ``j`` over whole columns (``table``'s rows, at ``times``): the joined rows and times."""
        probe: dict[str, pa.Array] = {"_i": pa.array(np.arange(table.num_rows, dtype=np.int64)), "_t": times}
        if isinstance(join, Lookup):
            for field, column, dtype in self.keys[j]:
                probe[column] = table.column(field).cast(ENGINE_TYPES[dtype.name])
            selects = ", ".join(f"l{j}._f{j}_{i}" for i in range(len(join.features)))
            found = self._query(
                probe,
                f"SELECT {selects} FROM _mlfs_probe p {_asof_join(j, join, self.keys[j])} ORDER BY p._i",
            )
            table = table.drop_columns([n for n in join.added_fields if n in table.column_names])
            for name, column in zip(join.added_fields, found.columns, strict=True):
                table = table.append_column(name, column)
            return table, times
        for m, (field, _) in enumerate(join.on):
            column = table.column(field)
            tag = "i:" if pa.types.is_integer(column.type) else "s:"
            probe[f"_k{m}"] = pc.binary_join_element_wise(tag, pc.cast(column, pa.string()), "")
        on = " AND ".join(f"p._k{m} = b._k{m}" for m in range(len(join.on)))
        how = "LEFT JOIN" if join.how == "left" else "JOIN"
        pairs = self._query(
            probe,
            f"SELECT p._i, b._b, b._bt FROM _mlfs_probe p {how} _mlfs_other{j} b ON {on} "
            f"AND b._bt BETWEEN p._t - {join.before_ms} AND p._t + {join.after_ms} ORDER BY p._i, b._b",
        )
        rows, partner, partner_ms = (pairs.column(c).combine_chunks() for c in ("_i", "_b", "_bt"))
        table, times = table.take(rows), times.take(rows)
        unmatched = pc.add(times, join.after_ms)
        times = pc.if_else(pc.is_null(partner), unmatched, pc.max_element_wise(times, partner_ms))
        fields = self.fields[j]
        assert fields is not None
        table = table.drop_columns([n for n in join.added_fields if n in table.column_names])
        for name, column in zip(join.added_fields, fields.take(partner).columns, strict=True):
            table = table.append_column(name, column)
        when = pc.cast(times, pa.int64()).cast(pa.timestamp("ms", tz="UTC"))
        table = table.set_column(
            table.column_names.index(self.plan.timestamp_field), self.plan.timestamp_field, when
        )
        return table, times

    def _by_event(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """Stage 1's output for raw events one by one (the reference's per-event code)."""
        raws = batch.column(LINE).to_pylist() if batch.schema.names == [LINE] else batch.to_pylist()
        outcomes: list[Any] = [None] * len(raws)
        events: list[int] = []  # per joined event: the raw event it came from
        joined: list[JoinedEvent] = []
        times: dict[int, int] = {}
        for i, raw in enumerate(raws):
            first = self.preparer.decode_and_time(raw)
            if isinstance(first, DeadLetter):
                outcomes[i] = first
            else:
                events.append(i)
                joined.append(first)
                times[i] = first[1]
        for j, join in enumerate(self.plan.joins):
            events, joined = self._step(j, join, raws, times, events, joined, outcomes)
        transformed = self.preparer.transform_batch(
            [(raws[i], event, t) for i, (event, t) in zip(events, joined, strict=True)]
        )
        grouped: dict[int, list[Any]] = {}
        for i, outcome in zip(events, transformed, strict=True):
            grouped.setdefault(i, []).append(outcome)
        for i, group in grouped.items():
            outcomes[i] = joined_outcome(group)
        return outcomes_batch(self.plan, self.schema, outcomes)

    def _step(
        self,
        j: int,
        join: Lookup | IntervalJoin,
        raws: list[Any],
        times: dict[int, int],
        events: list[int],
        joined: list[JoinedEvent],
        outcomes: list[Any],
    ) -> tuple[list[int], list[JoinedEvent]]:
        """Join ``j`` over the joined events so far; an event with a value of the wrong type is
        dead-lettered whole."""
        probe_keys: list[tuple[Any, ...] | None] = []
        dead: set[int] = set()
        for i, (event, _) in zip(events, joined, strict=True):
            try:
                if isinstance(join, Lookup):
                    probe_keys.append(lookup_key(join, [(f, d) for f, _, d in self.keys[j]], event))
                else:
                    probe_keys.append(join_key(join, event, 0))
            except CoercionError as err:
                if i not in dead:
                    dead.add(i)
                    outcomes[i] = self.preparer.dead_letter(raws[i], WRONG_TYPE, str(err), times[i])
                probe_keys.append(None)
        columns: dict[str, pa.Array] = {
            "_i": pa.array(np.arange(len(events), dtype=np.int64)),
            "_t": pa.array([t for _, t in joined], pa.int64()),
        }
        if isinstance(join, Lookup):
            for m, (_, probe, dtype) in enumerate(self.keys[j]):
                values = [None if k is None else k[m] for k in probe_keys]
                columns[probe] = pa.array(values, ENGINE_TYPES[dtype.name])
            found = self._query(
                columns,
                f"SELECT {', '.join(f'l{j}._f{j}_{i}' for i in range(len(join.features)))} "
                f"FROM _mlfs_probe p {_asof_join(j, join, self.keys[j])} ORDER BY p._i",
            )
            added = list(zip(*(found.column(c).to_pylist() for c in found.column_names), strict=True))
            next_events, next_joined = [], []
            for n, (i, (event, t)) in enumerate(zip(events, joined, strict=True)):
                if i not in dead:
                    next_events.append(i)
                    next_joined.append(({**event, **dict(zip(join.added_fields, added[n], strict=True))}, t))
            return next_events, next_joined
        for m in range(len(join.on)):
            values = [None if k is None else _join_text(k[m]) for k in probe_keys]
            columns[f"_k{m}"] = pa.array(values, pa.string())
        on = " AND ".join(f"p._k{m} = b._k{m}" for m in range(len(join.on)))
        pairs = self._query(
            columns,
            f"SELECT p._i, b._b FROM _mlfs_probe p JOIN _mlfs_other{j} b ON {on} "
            f"AND b._bt BETWEEN p._t - {join.before_ms} AND p._t + {join.after_ms} ORDER BY p._i, b._b",
        )
        partners: dict[int, list[int]] = {}
        for n, b in zip(pairs.column("_i").to_pylist(), pairs.column("_b").to_pylist(), strict=True):
            partners.setdefault(n, []).append(b)
        other = self.partners[j]
        next_events, next_joined = [], []
        for n, (i, (event, t)) in enumerate(zip(events, joined, strict=True)):
            if i in dead:
                continue
            found_here = partners.get(n)
            if found_here:
                for b in found_here:
                    partner = other[b]
                    next_events.append(i)
                    next_joined.append(
                        ({**event, **joined_fields(join, partner)}, join.joined_ms(t, partner[1]))
                    )
            elif join.how == "left":
                next_events.append(i)
                next_joined.append(({**event, **joined_fields(join, None)}, join.unmatched_ms(t)))
        return next_events, next_joined

    def _query(self, probe: dict[str, pa.Array], sql: str) -> pa.Table:
        self.con.register("_mlfs_probe", pa.table(probe))
        try:
            result: pa.Table = self.con.sql(sql).to_arrow_table()
        finally:
            self.con.unregister("_mlfs_probe")
        return result


class JoinedStage1:
    """Stage 1 of a view with joins over raw event batches, on connection ``con``: its output batches
    (``transforms.stage1``'s rows, dead letters and filtered markers; a lookup key that does not
    coerce is a dead-letter row too). The embedded engine runs it in process, Spark in each task."""

    def __init__(self, con: Any, plan: TransformPlan, inputs: JoinInputs) -> None:
        inputs.check(plan)
        self.plan = plan
        self.schema = prepared_schema(plan)
        self.events: JoinedEventStage | None = None
        self.lookups: LookupJoiner | None = None
        if plan.interval_joins:
            self.events = JoinedEventStage(con, plan, inputs)
        else:
            self.lookups = LookupJoiner(con, plan, inputs)

    @property
    def source_counts(self) -> dict[str, EventCounts]:
        """The interval joins' other sources' counts."""
        return self.events.source_counts if self.events else {}

    @property
    def other_letters(self) -> list[DeadLetter]:
        """The interval joins' other sources' dead letters."""
        return self.events.other_letters if self.events else []

    def run(self, batches: Iterable[pa.RecordBatch]) -> Iterator[tuple[int, list[pa.RecordBatch]]]:
        """For each raw batch: its number of events and stage 1's output batches for them."""
        if self.events is not None:
            for batch in batches:
                yield batch.num_rows, self.events.prepare(batch)
            return
        assert self.lookups is not None
        for batch, letters, joined in self.lookups.join(batches):
            out = [outcomes_batch(self.plan, self.schema, letters)] if letters else []
            out += prepare_batches(self.plan, iter(joined), self.lookups.added)
            yield batch.num_rows, out
