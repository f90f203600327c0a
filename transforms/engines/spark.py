"""The Spark engine: compiles a ``TransformPlan`` to a Spark job.

Stage 1 runs ``transforms.events.EventPreparer`` (the same code as the reference engine) over Arrow
record batches with ``mapInArrow``, producing one table of typed rows, dead letters and "filtered"
markers; for views without an event transform or with a declarative ``Select`` (compiled by
``spark_expressions``), Spark SQL prepares the clean rows (``spark_clean``) and only the others go
to Python. Stage 2 is Spark-native, one shuffle by key:

* continuous windows: one sorted pass over the events; each event's row over
  ``RANGE BETWEEN size - 1 PRECEDING AND CURRENT ROW`` and its leave row at ``e + size`` over
  ``RANGE BETWEEN 1 FOLLOWING AND size FOLLOWING`` (epoch milliseconds);
* lifetime: ``RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW``;
* hopping and tumbling: each row exploded into the ``size / hop`` windows containing it plus the
  window it has just left (with no value), grouped by window end, keeping the ends where some event
  entered or left.

Peers (equal timestamps) share a frame, so one row per key and time is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from transforms.aggregations import (
    Aggregation,
    Count,
    CountDistinct,
    First,
    LastK,
    Latest,
    Max,
    Mean,
    Min,
    Stddev,
    Sum,
    Variance,
)
from transforms.dtypes import DType
from transforms.events import DeadLetter, EventCounts
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.stage1 import (
    DEAD,
    DEAD_COLUMNS,
    FILTERED,
    FIRST,
    KIND,
    ROW,
    TS,
    prepare_batches,
    prepared_schema,
    value_column,
)
from transforms.timeutil import datetime_to_ms, ms_to_datetime
from transforms.usercode import plan_functions, user_module
from transforms.windows import LAST_ROW_MS, Lifetime, Sliding

END = "_end"


def _spark_type(arrow_type: pa.DataType) -> str:
    return {
        pa.string(): "string",
        pa.int32(): "int",
        pa.int64(): "bigint",
        pa.float64(): "double",
        pa.bool_(): "boolean",
        pa.binary(): "binary",
        pa.int8(): "tinyint",
    }[arrow_type]


def prepared_ddl(plan: TransformPlan) -> str:
    return ", ".join(f"`{f.name}` {_spark_type(f.type)}" for f in prepared_schema(plan))


def _aggregate(agg: Aggregation, value: Any) -> Any:
    """The Spark aggregate function of a monoid over value column ``value``; ``_extract`` turns its
    result into the monoid's result. Rows with a null value do not count, so leave markers (which
    carry nulls) only shape the frame."""
    from pyspark.sql import functions as F

    def ordered() -> Any:
        return F.when(value.isNotNull(), F.struct(F.col(TS).alias("t"), value.alias("v")))

    if isinstance(agg, Count):
        return F.count(value)
    if isinstance(agg, Sum):
        return F.sum(value)
    if isinstance(agg, Mean):
        return F.avg(value)
    if isinstance(agg, Min):
        return F.min(value)
    if isinstance(agg, Max):
        return F.max(value)
    if isinstance(agg, Latest):
        return F.max(ordered())
    if isinstance(agg, First):
        return F.min(ordered())
    if isinstance(agg, Stddev):
        return F.stddev_samp(value) if agg.sample else F.stddev_pop(value)
    if isinstance(agg, Variance):
        return F.var_samp(value) if agg.sample else F.var_pop(value)
    if isinstance(agg, CountDistinct):
        return F.collect_set(value)
    if isinstance(agg, LastK):
        return F.collect_list(ordered())
    raise TypeError(f"no Spark compilation for {agg!r}")


def _extract(agg: Aggregation, result: Any) -> Any:
    from pyspark.sql import functions as F

    if isinstance(agg, (Latest, First)):
        return result.getField("v")
    if isinstance(agg, CountDistinct):
        return F.size(result)
    if isinstance(agg, LastK):
        return F.slice(F.sort_array(result, asc=False), 1, agg.k)
    return result


def _finish(agg: Aggregation, dtype: DType, value: Any) -> Any:
    """Aggregate result to the stored feature value, exactly as ``transforms.dtypes.feature_value``."""
    from pyspark.sql import functions as F

    if isinstance(agg, (Count, CountDistinct)):
        value = F.coalesce(value, F.lit(0))
    elif isinstance(agg, Sum):
        value = F.coalesce(value, F.lit(0))
    elif isinstance(agg, LastK):
        value = F.when(F.size(value) > 0, F.transform(value, lambda item: item.getField("v")))
    element = dtype.element if dtype.element is not None else dtype
    if element.name == "UnixTimestamp":

        def to_seconds(ms: Any) -> Any:
            return F.timestamp_seconds(F.floor(ms / F.lit(1000)))

        return F.transform(value, to_seconds) if dtype.element is not None else to_seconds(value)
    if element.name in ("Int32", "Int64", "Float32", "Float64"):
        return value.cast(spark_type(dtype))
    return value


def spark_type(dtype: DType) -> Any:
    """The Spark SQL type a feature of ``dtype`` is stored as."""
    from pyspark.sql import types as T

    if dtype.element is not None:
        return T.ArrayType(spark_type(dtype.element))
    return {
        "String": T.StringType,
        "Int32": T.IntegerType,
        "Int64": T.LongType,
        "Float32": T.FloatType,
        "Float64": T.DoubleType,
        "Bool": T.BooleanType,
        "Bytes": T.BinaryType,
        "UnixTimestamp": T.TimestampType,
    }[dtype.name]()


def aggregate_rows(plan: TransformPlan, rows: Any) -> Any:
    """Stage 2: feature rows (keys, features, ``event_timestamp``) from stage 1's typed rows."""
    from pyspark.sql import functions as F

    keys = list(plan.key_names)
    values = [value_column(i) for i in range(len(plan.features))]
    rows = rows.select(*keys, TS, *values)
    window = plan.window
    if isinstance(window, Sliding) and window.hop is not None:
        out = _hopping(plan, rows, keys, values)
    else:
        out = _framed(plan, rows, keys, values)
    return out.select(
        *keys,
        *[
            _finish(f.aggregation, f.dtype, F.col(v)).alias(f.name)
            for f, v in zip(plan.features, values, strict=True)
        ],
        F.timestamp_millis(F.col(TS)).alias(EVENT_TIMESTAMP),
    )


def _framed(plan: TransformPlan, rows: Any, keys: list[str], values: list[str]) -> Any:
    """Continuous and lifetime windows in one sorted pass over the events (no marker rows).

    Each event gives its arrival row, over ``RANGE BETWEEN size - 1 PRECEDING AND CURRENT ROW``,
    and, for a continuous window, its leave row at ``e + size``, whose window ``(e, e + size]`` is
    the frame ``RANGE BETWEEN 1 FOLLOWING AND size FOLLOWING`` of the same event. Only the last of
    equal-time peers emits (peers share frames), and a leave row is dropped when an event arrives
    at exactly ``e + size`` (its arrival row has the same window)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    ordered = Window.partitionBy(*keys).orderBy(TS)
    last_peer = F.coalesce(F.lead(TS).over(ordered) != F.col(TS), F.lit(True))

    def over(frame: Any, prefix: str = "") -> list[Any]:
        return [
            _extract(f.aggregation, _aggregate(f.aggregation, F.col(v)).over(frame)).alias(prefix + v)
            for f, v in zip(plan.features, values, strict=True)
        ]

    window = plan.window
    if isinstance(window, Lifetime):
        arrive = over(ordered.rangeBetween(Window.unboundedPreceding, 0))
        framed = rows.select(*keys, TS, last_peer.alias("_keep"), *arrive)
        return framed.filter("_keep").drop("_keep")
    assert isinstance(window, Sliding)
    size = window.size_ms
    leave_frame = ordered.rangeBetween(1, size)
    reached = F.max(F.col(TS)).over(leave_frame)  # the last event in the leave row's window
    framed = rows.select(
        *keys,
        TS,
        last_peer.alias("_peer"),
        reached.alias("_reached"),
        *over(ordered.rangeBetween(-(size - 1), 0), "_a"),
        *over(leave_frame, "_l"),
    )
    leave_kept = F.col("_peer") & F.coalesce(F.col("_reached") != F.col(TS) + F.lit(size), F.lit(True))
    both = F.array(
        F.struct(
            F.col(TS).alias(TS), F.col("_peer").alias("_keep"), *[F.col("_a" + v).alias(v) for v in values]
        ),
        F.struct(
            (F.col(TS) + F.lit(size)).alias(TS),
            leave_kept.alias("_keep"),
            *[F.col("_l" + v).alias(v) for v in values],
        ),
    )
    kept = F.col("_keep") & (F.col(TS) <= F.lit(LAST_ROW_MS))
    return framed.select(*keys, F.inline(both)).filter(kept).drop("_keep")


def _hopping(plan: TransformPlan, rows: Any, keys: list[str], values: list[str]) -> Any:
    """Hopping and tumbling windows in one grouping: each event goes to the ``size / hop`` windows
    containing it and, with no value, to the window where it has just left; the windows kept are
    those some event entered (its first window) or left (emptied windows get empty values)."""
    from pyspark.sql import functions as F

    window = plan.window
    assert isinstance(window, Sliding) and window.hop_ms is not None
    size, hop = window.size_ms, window.hop_ms
    first_end = F.col("_first")
    exploded = rows.withColumn("_first", F.col(TS) - F.pmod(F.col(TS), F.lit(hop)) + F.lit(hop)).select(
        *keys,
        TS,
        *values,
        first_end,
        F.explode(F.sequence(first_end, first_end + F.lit(size), F.lit(hop))).alias(END),
    )
    inside = F.col(END) < first_end + F.lit(size)
    changes = (F.col(END) == first_end) | ~inside
    grouped = exploded.groupBy(*keys, END).agg(
        F.max(changes).alias("_keep"),
        *[
            _extract(f.aggregation, _aggregate(f.aggregation, F.when(inside, F.col(v)))).alias(v)
            for f, v in zip(plan.features, values, strict=True)
        ],
    )
    kept = F.col("_keep") & (F.col(END) <= F.lit(LAST_ROW_MS))
    return grouped.filter(kept).drop("_keep").withColumnRenamed(END, TS)


def score_rows(plan: TransformPlan, rows: Any) -> Any:
    """After-aggregation model stages on Spark's Python workers (``FeatureRowScorer`` over Arrow
    batches): the feature rows with the stages' fields, plus one row per row that could not be
    scored, which carries only the dead-letter columns (``_reason`` not null). See ``split_scored``."""
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import to_arrow_schema

    from transforms.inference.feature_rows import FeatureRowScorer

    ship_code_by_value(*plan_functions(plan))
    # Nullable throughout: a dead-letter row leaves every feature column empty.
    schema = T.StructType([T.StructField(f.name, f.dataType, True) for f in rows.schema.fields])
    for name, dtype in plan.row_outputs:
        schema.add(name, spark_type(dtype))
    for name in DEAD_COLUMNS[:3]:
        schema.add(name, T.StringType())
    schema.add(DEAD_COLUMNS[3], T.LongType())
    arrow_schema = to_arrow_schema(schema)

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        scorer = FeatureRowScorer(plan)
        for batch in batches:
            scored, letters = scorer.score(batch.to_pylist())
            dead = [
                {
                    "_reason": d.reason,
                    "_detail": d.detail,
                    "_raw": d.raw,
                    "_event_ms": None if d.event_time is None else datetime_to_ms(d.event_time),
                }
                for d in letters
            ]
            yield pa.RecordBatch.from_pylist(scored + dead, schema=arrow_schema)

    return rows.mapInArrow(score, schema)


def split_scored(scored: Any) -> tuple[Any, Any]:
    """``score_rows``'s output as (feature rows, dead letters)."""
    from pyspark.sql import functions as F

    dead = F.col(DEAD_COLUMNS[0]).isNotNull()
    return scored.filter(~dead).drop(*DEAD_COLUMNS), scored.filter(dead).select(*DEAD_COLUMNS)


def dead_letter_records(view: str, dead_letters: Any) -> list[DeadLetter]:
    """A DataFrame of dead-letter columns, collected."""
    return [
        DeadLetter(
            view=view,
            reason=r["_reason"],
            detail=r["_detail"],
            raw=r["_raw"],
            event_time=None if r["_event_ms"] is None else ms_to_datetime(r["_event_ms"]),
        )
        for r in dead_letters.toArrow().to_pylist()
    ]


@dataclass
class SparkResult:
    """A Spark run: the feature rows and dead letters as DataFrames, and the event counts."""

    rows: Any
    dead_letters: Any
    counts: EventCounts
    prepared: Any
    scored: Any = None  # after-aggregation model stages' output, persisted

    def dead_letter_records(self, view: str) -> list[DeadLetter]:
        return dead_letter_records(view, self.dead_letters)

    def release(self) -> None:
        self.prepared.unpersist()
        if self.scored is not None:
            self.scored.unpersist()


def ship_code_by_value(*functions: Any) -> None:
    """Let Spark workers run ``functions`` although they cannot import their modules (a feature
    repository's files are not installed on them): those modules are pickled by value instead."""
    from pyspark import cloudpickle

    for fn in functions:
        module = user_module(fn)
        if module is not None:
            cloudpickle.register_pickle_by_value(module)


def prepare_parts(plan: TransformPlan, events: Any) -> tuple[Any | None, Any]:
    """Stage 1 over the raw events DataFrame, in two parts: the rows Spark SQL prepares in the JVM
    (``spark_clean``; None where it cannot) and what Python prepares from the other events (all
    events when the first part is None). Only the Python part holds dead letters. Neither is cached:
    the JVM part is cheap to recompute from the events."""
    from pyspark.sql import functions as F

    from transforms.engines.spark_clean import clean_rows

    ship_code_by_value(*plan_functions(plan))

    def stage1(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return prepare_batches(plan, batches)

    fast = clean_rows(plan, events, KIND, FIRST, TS)
    if fast is None:
        return None, events.mapInArrow(stage1, prepared_ddl(plan))
    clean, condition = fast
    typed = clean.select(
        *[
            (F.col(f.name) if f.name in clean.columns else F.lit(None))
            .cast(_spark_type(f.type))
            .alias(f.name)
            for f in prepared_schema(plan)
        ]
    )
    return typed, events.filter(~condition).mapInArrow(stage1, prepared_ddl(plan))


def prepare(plan: TransformPlan, events: Any) -> Any:
    """Stage 1 over the raw events DataFrame (not cached): typed rows, dead letters, filtered."""
    jvm, python = prepare_parts(plan, events)
    return python if jvm is None else jvm.unionByName(python)


def tally(prepared: Any, events: int) -> tuple[EventCounts, int | None]:
    """The event counts of stage 1's output for ``events`` input events, and the first row's time."""
    from pyspark.sql import functions as F

    groups = prepared.groupBy(KIND, FIRST).agg(F.count(F.lit(1)).alias("n"), F.min(TS).alias("t")).collect()
    tallies = {(r[KIND], r[FIRST]): r["n"] for r in groups}
    first = min((r["t"] for r in groups if r[KIND] == ROW and r["t"] is not None), default=None)
    counts = EventCounts(
        input=events,
        aggregated=tallies.get((ROW, True), 0),
        filtered=tallies.get((FILTERED, False), 0),
        dead_lettered=tallies.get((DEAD, False), 0),
        rows=tallies.get((ROW, True), 0) + tallies.get((ROW, False), 0),
    )
    return counts, first


def run_spark(plan: TransformPlan, events: Any) -> SparkResult:
    """Compile ``plan`` over the raw events DataFrame ``events``; stage 1 is computed once."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    prepared = prepare(plan, events).persist(StorageLevel.MEMORY_AND_DISK)
    # The input is counted apart from stage 1's output, so a lost event unbalances the counts.
    counts, _ = tally(prepared, events.count())
    rows = aggregate_rows(plan, prepared.filter(F.col(KIND) == ROW))
    dead = prepared.filter(F.col(KIND) == DEAD).select(*DEAD_COLUMNS)
    scored = None
    if plan.row_stages:
        scored = score_rows(plan, rows).persist(StorageLevel.MEMORY_AND_DISK)
        rows, dead_rows = split_scored(scored)
        counts.rows_dead_lettered = dead_rows.count()
        dead = dead.unionByName(dead_rows)
    return SparkResult(rows=rows, dead_letters=dead, counts=counts, prepared=prepared, scored=scored)


def spark_engine(plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> SparkResult:
    """Engine entry point used by ``UnifiedTransformer.run``: ``inputs`` is a DataFrame of raw events."""
    return run_spark(plan, inputs)
