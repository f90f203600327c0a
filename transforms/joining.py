"""Joins applied event by event, as the reference engine runs them (the rules are in
``transforms.joins``). The embedded engine finds the same partners with DuckDB and sends the events
it cannot prove clean through this code, as it does with the rest of the per-event stage.

A view with joins runs over ``JoinInputs``: the feature rows of each view it looks up, and the raw
events (in arrival order) of each source it joins with.
"""

from __future__ import annotations

import json
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transforms.arrow_events import STORE_TIMESTAMP, arrow_type, holds, python_values, typed_time_ms
from transforms.dtypes import CoercionError, DType, coerce, dtype_from_string, is_null
from transforms.errors import EngineUnavailable
from transforms.events import (
    LATE,
    WRONG_TYPE,
    DeadLetter,
    EventCounts,
    EventPreparer,
    LateClassifier,
    Lateness,
    PartitionedLateness,
    PreparedEvent,
)
from transforms.joins import IntervalJoin, Lookup
from transforms.plan import EVENT_TIMESTAMP, TransformPlan
from transforms.stage1 import raw_events
from transforms.timeutil import datetime_to_ms, duration_ms, ms_to_datetime

JoinedEvent = tuple[dict[str, Any], int]  # an event with the fields its joins added, and its time


@dataclass(frozen=True)
class LookupTable:
    """A looked-up view's feature rows (its keys, ``event_timestamp`` and features) and key types."""

    keys: tuple[tuple[str, DType], ...]
    rows: pa.Table

    @staticmethod
    def of(plan: TransformPlan, rows: list[dict[str, Any]] | pa.Table) -> LookupTable:
        """The feature rows an engine computed for the view ``plan``, typed as the stores hold them."""
        fields = [*plan.keys, *plan.output_features]
        schema = pa.schema(
            [pa.field(n, arrow_type(t)) for n, t in fields] + [pa.field(EVENT_TIMESTAMP, STORE_TIMESTAMP)]
        )
        if isinstance(rows, pa.Table):
            table = rows.select(schema.names).cast(schema)
        else:
            table = pa.Table.from_pylist(rows, schema=schema)
        return LookupTable(plan.keys, table)


@dataclass
class JoinInputs:
    """What a view's joins read: looked-up views' rows by view name, other sources' raw events (a
    table of columns or of JSON lines, in arrival order) by source name, and for a source read as
    several partitions (streaming: lateness is judged per partition) each of its events' partition."""

    lookups: dict[str, LookupTable] = field(default_factory=dict)
    sources: dict[str, pa.Table] = field(default_factory=dict)
    partitions: dict[str, list[int]] = field(default_factory=dict)

    def check(self, plan: TransformPlan, partners: Iterable[str] = ()) -> None:
        """Refuse, before any work, inputs that lack a looked-up view's rows or a joined source's
        events (``partners``: sources whose partners come read another way)."""
        for join in plan.joins:
            if isinstance(join, Lookup) and join.view not in self.lookups:
                raise EngineUnavailable(
                    f"view {plan.view!r} looks up {join.view!r}, whose rows were not given"
                )
            if isinstance(join, IntervalJoin) and join.source_name not in (*self.sources, *partners):
                raise EngineUnavailable(
                    f"view {plan.view!r} joins source {join.source_name!r}, whose events were not given"
                )

    def write(self, directory: Path) -> None:
        """As Parquet files (and the key types as JSON) in ``directory``, for ``read`` elsewhere
        (Spark's tasks read them from the run's work directory)."""
        directory.mkdir(parents=True, exist_ok=True)
        keys = {}
        for i, (name, table) in enumerate(sorted(self.lookups.items())):
            pq.write_table(table.rows, directory / f"lookup-{i}.parquet")
            keys[name] = {"file": f"lookup-{i}.parquet", "keys": [[k, str(t)] for k, t in table.keys]}
        sources = {}
        for i, (name, events) in enumerate(sorted(self.sources.items())):
            pq.write_table(events, directory / f"source-{i}.parquet")
            sources[name] = f"source-{i}.parquet"
        (directory / "joins.json").write_text(json.dumps({"lookups": keys, "sources": sources}))

    @staticmethod
    def read(directory: Path) -> JoinInputs:
        """What ``write`` wrote to ``directory``."""
        index = json.loads((directory / "joins.json").read_text())
        inputs = JoinInputs()
        for name, held in index["lookups"].items():
            keys = tuple((k, dtype_from_string(t)) for k, t in held["keys"])
            inputs.lookups[name] = LookupTable(keys, pq.read_table(directory / held["file"]))
        for name, file in index["sources"].items():
            inputs.sources[name] = pq.read_table(directory / file)
        return inputs


def other_sources(plan: TransformPlan, inputs: JoinInputs) -> tuple[dict[str, EventCounts], list[DeadLetter]]:
    """The counts and dead letters of a view's interval joins' other sources (``read_other``), for
    an engine that finds the partners elsewhere (Spark's tasks)."""
    counts: dict[str, EventCounts] = {}
    letters: list[DeadLetter] = []
    for join in plan.interval_joins:
        read_other(
            plan,
            join,
            inputs.sources[join.source_name],
            counts.setdefault(join.source_name, EventCounts()),
            letters,
            typed=True,
        )
    return counts, letters


def join_value(value: Any) -> Any:
    """An interval join's key value: a string or an integer (None when null); ``CoercionError``
    for any other type."""
    if is_null(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise CoercionError(f"join values must be strings or integers, got {type(value).__name__}")
    return value


def lookup_key(lookup: Lookup, fields: Sequence[tuple[str, DType]], event: dict[str, Any]) -> tuple[Any, ...]:
    """An event's key into a looked-up view: each ``(field, key type)`` of ``fields`` coerced (None
    where null); ``CoercionError`` naming the lookup and field for a value that does not coerce."""
    key = []
    for name, dtype in fields:
        try:
            key.append(coerce(event.get(name), dtype))
        except CoercionError as err:
            raise CoercionError(f"lookup of {lookup.view!r}, field {name!r}: {err}") from None
    return tuple(key)


def source_lateness(source: Any) -> Lateness:
    """A stream source's lateness bound."""
    return Lateness(duration_ms(source.max_out_of_orderness), duration_ms(source.allowed_lateness))


def other_plan(plan: TransformPlan, join: IntervalJoin) -> TransformPlan:
    """``plan`` reading an interval join's other source: its time field and range, no joins."""
    return replace(
        plan, timestamp_field=join.time_field, event_time_range_ms=join.source.event_time_range_ms, joins=()
    )


def other_preparer(plan: TransformPlan, join: IntervalJoin) -> EventPreparer:
    """Decodes and times the other source's events by its own time field and range."""
    return EventPreparer(other_plan(plan, join))


OtherEvent = tuple[tuple[Any, ...], int, tuple[Any, ...]]  # join values, time, the carried fields


def read_other(
    plan: TransformPlan,
    join: IntervalJoin,
    events: pa.Table,
    counts: EventCounts,
    letters: list[DeadLetter],
    streaming: bool = False,
    typed: bool = False,
    partitions: list[int] | None = None,
) -> list[OtherEvent]:
    """The other source's events an interval join can pair, counting each event's outcome on that
    source: taken (``aggregated``), a null join value (``filtered``: it never matches),
    dead-lettered (bad, or a join value of another type), or late (``streaming``; per source
    partition, each event's in ``partitions``, else one). With ``typed``, the events of typed
    columns are taken whole (``_typed_partners``); the reference reads every event with
    ``other_event``."""
    taken: list[OtherEvent] = []
    whole = _typed_partners(join, events) if typed and not streaming else None
    if whole is not None:
        taken, filtered, events = whole
        counts.add(EventCounts(input=len(taken) + filtered, aggregated=len(taken), filtered=filtered))
    preparer = other_preparer(plan, join)
    lateness = PartitionedLateness(source_lateness(join.source)) if streaming else None
    for position, raw in enumerate(raw_events(events)):
        # Only a stream has partitions; a typed backfill took some events whole above.
        classifier = None if lateness is None else lateness.of(partitions[position] if partitions else 0)
        outcome = other_event(preparer, join, raw, classifier)
        counts.add(other_counts(outcome))
        if isinstance(outcome, DeadLetter):
            letters.append(outcome)
        elif outcome is not None:
            taken.append(outcome)
    return taken


JOIN_COLUMN_TYPES = (pa.string(), pa.int64(), pa.int32())  # columns whose values are join values as they are


def _typed_partners(join: IntervalJoin, events: pa.Table) -> tuple[list[OtherEvent], int, pa.Table] | None:
    """``other_event``'s outcome for the events of a typed time column in the source's range and
    join columns of string or integer types, taken whole: the partners, how many have a null join
    value, and the other events (None: the columns are not typed so)."""
    times = typed_time_ms(events, join.time_field, join.source.event_time_range_ms)
    if times is None or not all(holds(events, other, JOIN_COLUMN_TYPES) for _, other in join.on):
        return None
    raw_ms, timed = times
    keyed = timed
    for _, other in join.on:
        keyed = pc.and_(keyed, pc.is_valid(events.column(other)))
    keys = [python_values(events.column(other).filter(keyed).combine_chunks()) for _, other in join.on]
    fields = [
        python_values(events.column(f).filter(keyed).combine_chunks()) if f in events.schema.names else None
        for f in join.fields
    ]
    n = len(keys[0])
    at = python_values(raw_ms.filter(keyed).combine_chunks())
    values = [f if f is not None else [None] * n for f in fields]
    key_tuples = list(zip(*keys, strict=True))
    field_tuples = list(zip(*values, strict=True)) if values else [()] * n
    taken: list[OtherEvent] = list(zip(key_tuples, at, field_tuples, strict=True))
    filtered = int(pc.sum(timed).as_py() or 0) - n
    return taken, filtered, events.filter(pc.invert(timed))


def other_event(
    preparer: EventPreparer, join: IntervalJoin, raw: Any, classifier: LateClassifier | None = None
) -> OtherEvent | DeadLetter | None:
    """One event of an interval join's other source: a partner, a dead letter (on that source) or
    None (a null join value: it never matches)."""
    first = preparer.decode_and_time(raw)
    if isinstance(first, DeadLetter):
        return replace(first, source=join.source_name)
    event, time_ms = first
    if classifier is not None:
        watermark = classifier.late_watermark(time_ms)
        if watermark is not None:
            return replace(preparer.late(raw, time_ms, watermark), source=join.source_name)
    try:
        key = join_key(join, event, 1)
    except CoercionError as err:
        return replace(preparer.dead_letter(raw, WRONG_TYPE, str(err), time_ms), source=join.source_name)
    if key is None:
        return None
    return key, time_ms, tuple(event.get(f) for f in join.fields)


def other_counts(outcome: OtherEvent | DeadLetter | None) -> EventCounts:
    """The counts of one event of an interval join's other source, by its outcome (``other_event``):
    a partner is ``aggregated`` (joinable), a null join value ``filtered``."""
    if isinstance(outcome, DeadLetter):
        late = outcome.reason == LATE
        return EventCounts(input=1, late=int(late), dead_lettered=int(not late))
    return EventCounts(input=1, aggregated=int(outcome is not None), filtered=int(outcome is None))


def join_key(join: IntervalJoin, event: dict[str, Any], side: int) -> tuple[Any, ...] | None:
    """An event's interval-join values (``side`` 0: the view's own fields, 1: the other source's);
    None when one is null (it matches nothing); ``CoercionError`` naming the field otherwise."""
    key = []
    for pair in join.on:
        name = pair[side]
        try:
            key.append(join_value(event.get(name)))
        except CoercionError as err:
            raise CoercionError(f"join field {name!r}: {err}") from None
    return None if None in key else tuple(key)


def partner_order(event: OtherEvent) -> tuple[int, str]:
    """The order an event's partners are joined in: by time, then by their carried fields."""
    return event[1], repr(event[2])


def joined_fields(join: IntervalJoin, partner: OtherEvent | None) -> dict[str, Any]:
    """The fields an interval join adds for ``partner`` (None: a left join's unmatched event)."""
    if partner is None:
        return dict.fromkeys(join.added_fields)
    return dict(zip(join.added_fields, (*partner[2], ms_to_datetime(partner[1])), strict=True))


LookupRow = tuple[tuple[Any, ...], int, tuple[Any, ...]]  # a looked-up row's key, time and features


def lookup_rows(lookup: Lookup, table: LookupTable) -> list[LookupRow]:
    """The rows of ``table`` a ``Lookup`` reads: key (the ``on`` columns), feature time, features."""
    columns = [key for _, key in lookup.on]
    return [
        lookup_row(lookup, row)
        for row in table.rows.select([*columns, EVENT_TIMESTAMP, *lookup.features]).to_pylist()
    ]


def lookup_row(lookup: Lookup, row: dict[str, Any]) -> LookupRow:
    """A looked-up view's feature row as a ``Lookup`` reads it."""
    return (
        tuple(row[key] for _, key in lookup.on),
        datetime_to_ms(row[EVENT_TIMESTAMP]),
        tuple(row[f] for f in lookup.features),
    )


class _LookupIndex:
    """One ``Lookup``'s rows by key, each key's times sorted (``keys``: the looked-up view's key
    names and types)."""

    def __init__(self, lookup: Lookup, keys: Sequence[tuple[str, DType]], rows: Iterable[LookupRow]) -> None:
        self.lookup = lookup
        key_types = dict(keys)
        self.fields = [(event_field, key_types[key]) for event_field, key in lookup.on]
        by_key: dict[tuple[Any, ...], dict[int, tuple[Any, ...]]] = {}
        for key, time_ms, values in rows:  # one row per key and time (a row given twice is one)
            by_key.setdefault(key, {})[time_ms] = values
        self.times: dict[tuple[Any, ...], list[int]] = {}
        self.values: dict[tuple[Any, ...], list[tuple[Any, ...]]] = {}
        for key, items in by_key.items():
            self.times[key] = sorted(items)
            self.values[key] = [items[t] for t in self.times[key]]

    def apply(self, event: dict[str, Any], time_ms: int) -> list[JoinedEvent]:
        key = lookup_key(self.lookup, self.fields, event)
        found: tuple[Any, ...] | None = None
        if None not in key:
            times = self.times.get(tuple(key), [])
            cut = (bisect_left if self.lookup.exclusive else bisect_right)(times, time_ms)
            if cut:
                found = self.values[tuple(key)][cut - 1]
        added = found or (None,) * len(self.lookup.features)
        return [({**event, **dict(zip(self.lookup.added_fields, added, strict=True))}, time_ms)]


class _IntervalIndex:
    """One ``IntervalJoin``'s other events by join values, each value's events sorted by time."""

    def __init__(self, join: IntervalJoin) -> None:
        self.join = join
        self.times: dict[tuple[Any, ...], list[int]] = {}
        self.partners: dict[tuple[Any, ...], list[OtherEvent]] = {}

    def build(self, items: Iterable[OtherEvent]) -> None:
        grouped: dict[tuple[Any, ...], list[OtherEvent]] = {}
        for item in items:
            grouped.setdefault(item[0], []).append(item)
        for key, events in grouped.items():
            events.sort(key=partner_order)
            self.times[key] = [e[1] for e in events]
            self.partners[key] = events

    def apply(self, event: dict[str, Any], time_ms: int) -> list[JoinedEvent]:
        join = self.join
        key = join_key(join, event, 0)
        out: list[JoinedEvent] = []
        if key is not None:
            times = self.times.get(key, [])
            lo = bisect_left(times, time_ms - join.before_ms)
            hi = bisect_right(times, time_ms + join.after_ms)
            for i in range(lo, hi):
                partner = self.partners[key][i]
                out.append(({**event, **joined_fields(join, partner)}, join.joined_ms(time_ms, times[i])))
        if not out and join.how == "left":
            out.append(({**event, **joined_fields(join, None)}, join.unmatched_ms(time_ms)))
        return out


class EventJoiner:
    """A view's joins over its ``JoinInputs``: ``join`` gives an event's joined events; the other
    sources' events are read once, at construction, with their counts and dead letters (or come
    read, as ``partners`` by source; or the ``indexes`` come built, see ``of_candidates``)."""

    def __init__(
        self,
        plan: TransformPlan,
        inputs: JoinInputs,
        streaming: bool = False,
        partners: dict[str, list[OtherEvent]] | None = None,
        indexes: list[_LookupIndex | _IntervalIndex] | None = None,
    ) -> None:
        self.plan = plan
        self.preparer = EventPreparer(plan)
        self.indexes: list[_LookupIndex | _IntervalIndex] = []
        self.source_counts: dict[str, EventCounts] = {}
        self.dead_letters: list[DeadLetter] = []
        if indexes is not None:
            self.indexes = indexes
            return
        inputs.check(plan, partners or ())
        for join in plan.joins:
            if isinstance(join, Lookup):
                table = inputs.lookups[join.view]
                self.indexes.append(_LookupIndex(join, table.keys, lookup_rows(join, table)))
            elif partners is not None and join.source_name in partners:  # read elsewhere (Beam)
                index = _IntervalIndex(join)
                index.build(partners[join.source_name])
                self.indexes.append(index)
            else:
                index = _IntervalIndex(join)
                index.build(self._read_other(join, inputs, streaming))
                self.indexes.append(index)

    @staticmethod
    def of_candidates(
        plan: TransformPlan,
        lookup_keys: dict[str, tuple[tuple[str, DType], ...]],
        rows: dict[int, list[LookupRow]],
        partners: dict[int, list[OtherEvent]],
    ) -> EventJoiner:
        """A joiner over the rows and partners another engine found for some events (by the
        position of their join in ``plan.joins``; ``lookup_keys``: each looked-up view's keys). It
        joins those events exactly as over the whole inputs when their candidates hold, per key,
        every partner in their range and, for a lookup, the latest row at or before every time it
        is asked for (the Flink engine's joins find them so)."""
        indexes: list[_LookupIndex | _IntervalIndex] = []
        for position, join in enumerate(plan.joins):
            if isinstance(join, Lookup):
                indexes.append(_LookupIndex(join, lookup_keys[join.view], rows.get(position, [])))
            else:
                index = _IntervalIndex(join)
                index.build(partners.get(position, []))
                indexes.append(index)
        return EventJoiner(plan, JoinInputs(), indexes=indexes)

    def _read_other(self, join: IntervalJoin, inputs: JoinInputs, streaming: bool) -> list[OtherEvent]:
        name = join.source_name
        counts = self.source_counts.setdefault(name, EventCounts())
        events, partitions = inputs.sources[name], inputs.partitions.get(name)
        return read_other(
            self.plan, join, events, counts, self.dead_letters, streaming, partitions=partitions
        )

    def join(self, raw: Any, event: dict[str, Any], time_ms: int) -> list[JoinedEvent] | DeadLetter:
        """The joined events of one event (none: an inner join found no partner)."""
        items: list[JoinedEvent] = [(event, time_ms)]
        for index in self.indexes:
            try:
                items = [joined for e, t in items for joined in index.apply(e, t)]
            except CoercionError as err:
                return self.preparer.dead_letter(raw, WRONG_TYPE, str(err), time_ms)
        return items


def joined_outcome(
    outcomes: list[PreparedEvent | DeadLetter | None],
) -> list[PreparedEvent] | DeadLetter | None:
    """One event's outcome from those of its joined events: dead-lettered whole when any is (the
    first), filtered when none has rows, else the joined events that have rows."""
    for outcome in outcomes:
        if isinstance(outcome, DeadLetter):
            return outcome
    kept = [o for o in outcomes if isinstance(o, PreparedEvent)]
    return kept or None
