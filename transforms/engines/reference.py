"""The reference engine: plain Python, in process, the oracle every other engine is compared with.

It applies ``transforms.events`` to each event, groups rows by key and, for every key, emits one
row at each time ``transforms.windows`` says the value can change, folding the monoids of
``transforms.aggregations`` over exactly the events the window covers. It is written to be
obviously correct, not fast.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

import pyarrow as pa

from transforms.dtypes import CoercionError, feature_value
from transforms.engines.base import Engine, EngineResult
from transforms.events import (
    DeadLetter,
    EventPreparer,
    Key,
    Lateness,
    PartitionedLateness,
    PreparedEvent,
    Values,
    partitioned,
)
from transforms.joining import EventJoiner, JoinInputs, joined_outcome
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.stage1 import raw_events
from transforms.timeutil import ms_to_datetime
from transforms.windows import NEG_INF


def run_reference(
    plan: TransformPlan,
    events: Iterable[Any],
    *,
    lateness: Lateness | None = None,
    progress: Callable[[int], None] | None = None,
    joins: JoinInputs | None = None,
) -> EngineResult:
    """Run ``plan`` over ``events``; with ``lateness``, ``events`` (and each joined source's) is
    taken as arrival order, per source partition where an event is a ``PartitionedEvent`` (else
    all in partition 0). A view with joins reads ``joins`` (``transforms.joining``)."""
    preparer = EventPreparer(plan)
    result = EngineResult()
    counts = result.counts
    by_key: dict[Key, list[tuple[int, Values]]] = {}
    classifier = None if lateness is None else PartitionedLateness(lateness)
    joiner = None
    if plan.joins:
        joiner = EventJoiner(plan, joins or JoinInputs(), streaming=lateness is not None)
        result.source_counts = joiner.source_counts
        result.dead_letters.extend(joiner.dead_letters)
    for item in events:
        arrival = partitioned(item)
        partition, raw = arrival.partition, arrival.raw
        counts.input += 1
        if progress is not None:
            progress(1)
        first = preparer.decode_and_time(raw)
        if isinstance(first, DeadLetter):
            counts.count(first)
            result.dead_letters.append(first)
            continue
        event, time_ms = first
        if classifier is not None:
            watermark = classifier.late_watermark(partition, time_ms)
            if watermark is not None:
                counts.late += 1
                result.dead_letters.append(preparer.late(raw, time_ms, watermark))
                continue
        if joiner is None:
            prepared: PreparedEvent | list[PreparedEvent] | DeadLetter | None = preparer.transform(
                raw, event, time_ms
            )
        else:
            joined = joiner.join(raw, event, time_ms)
            prepared = (
                joined
                if isinstance(joined, DeadLetter)
                else joined_outcome(preparer.transform_batch([(raw, e, t) for e, t in joined]))
            )
        counts.count(prepared)
        if isinstance(prepared, DeadLetter):
            result.dead_letters.append(prepared)
        elif prepared is not None:
            for one in prepared if isinstance(prepared, list) else [prepared]:
                _collect(by_key, one)
    for key in sorted(by_key, key=repr):
        result.rows.extend(key_rows(plan, key, by_key[key]))
    if plan.row_stages:
        from transforms.inference.feature_rows import FeatureRowScorer

        result.rows, letters = FeatureRowScorer(plan).score(result.rows)
        result.dead_letters.extend(letters)
        counts.rows_dead_lettered += len(letters)
    return result


def _collect(by_key: dict[Key, list[tuple[int, Values]]], prepared: PreparedEvent) -> None:
    for key, values in prepared.rows:
        by_key.setdefault(key, []).append((prepared.time_ms, values))


def key_rows(plan: TransformPlan, key: Key, events: list[tuple[int, Values]]) -> list[dict[str, Any]]:
    """The feature rows of one key from its (time, values) rows, in any order (sorted here)."""
    events.sort(key=lambda e: e[0])
    times = [e[0] for e in events]
    emit_at = sorted({t for e in times for t in plan.window.emission_times(e)})
    aggs = [f.aggregation for f in plan.features]
    rows = []
    accs: list[Any] = []
    folded_to = 0  # lifetime windows grow monotonically, so fold incrementally
    for t in emit_at:
        lo, hi = plan.window.bounds(t)
        start, end = bisect_left(times, lo), bisect_left(times, hi)
        if lo == NEG_INF:
            if not accs:
                accs = [agg.create() for agg in aggs]
            span = events[folded_to:end]
            folded_to = end
        else:
            accs = [agg.create() for agg in aggs]
            span = events[start:end]
        for ts, values in span:
            for i, agg in enumerate(aggs):
                value = values[i]
                if value is not None:
                    accs[i] = agg.add(accs[i], value, ts)
        row: dict[str, Any] = dict(zip(plan.key_names, key, strict=True))
        for i, feature in enumerate(plan.features):
            try:
                row[feature.name] = feature_value(aggs[i].result(accs[i]), feature.dtype)
            except CoercionError as err:
                raise plan.out_of_range([feature], f"{err} at key {key!r}, {ms_to_datetime(t)}") from None
        row[EVENT_TIMESTAMP] = ms_to_datetime(t)
        rows.append(row)
    return rows


class ReferenceEngine(Engine):
    """Plain Python over an iterable of raw events (options: ``lateness``, ``progress``,
    ``joins``)."""

    name = "reference"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> EngineResult:
        return run_reference(
            plan,
            inputs,
            lateness=ctx.options.get("lateness"),
            progress=ctx.options.get("progress"),
            joins=ctx.options.get("joins"),
        )

    def run_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> EngineResult:
        return run_reference(plan, raw_events(events), joins=joins)


ENGINE = ReferenceEngine()
