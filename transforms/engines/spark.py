"""The Spark engine: compiles a ``TransformPlan`` to a Spark job.

Stage 1 runs ``transforms.stage1`` (``transforms.events.EventPreparer``, the reference's code) over
Arrow record batches with ``mapInArrow``, producing one table of typed rows, dead letters and
"filtered" markers; for views without an event transform or with a declarative ``Select`` (compiled
by ``spark_expressions``), Spark SQL prepares the clean rows (``spark_clean``) and only the others go
to Python. Stage 2 shuffles the rows by key and runs the embedded engine's window kernel
(``transforms.engines.duckdb_windows``) in each partition, so both backfill engines compute windows
with the same code and the cost per event grows only with the log of a key's events per window.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from transforms.dtypes import DType
from transforms.engines.base import Engine, EngineResult
from transforms.errors import MLFSError
from transforms.events import DeadLetter, EventCounts
from transforms.joining import JoinInputs, other_sources
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.stage1 import (
    DEAD,
    DEAD_COLUMNS,
    FIRST,
    KIND,
    ROW,
    TS,
    add_tallies,
    prepare_batches,
    prepared_schema,
    value_column,
)
from transforms.timeutil import DAY_MS, datetime_to_ms, ms_to_datetime
from transforms.usercode import plan_functions, user_module


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


def aggregate_rows(plan: TransformPlan, rows: Any, partitions: int | None = None) -> Any:
    """Stage 2: feature rows (keys, features, ``event_timestamp``) from stage 1's typed rows, over
    ``partitions`` key partitions (default: ``spark.sql.shuffle.partitions``).

    The rows are shuffled by key and each partition runs the embedded engine's window kernel
    (``duckdb_windows``) over its keys: the cost per event grows with the log of a key's events per
    window, as on one machine. (Spark's own ``RANGE`` frames recompute each frame: 1M events over 20
    keys took 611 s on them and 9 s here; docs/benchmarks.md.)"""
    from pyspark.sql.pandas.types import to_arrow_schema

    schema = feature_schema(plan, rows)
    arrow_schema = to_arrow_schema(schema)

    def cast(table: pa.Table) -> Iterator[pa.RecordBatch]:
        yield from table.cast(arrow_schema).to_batches()

    return kernel_partitions(plan, rows, cast, schema, partitions)


def feature_schema(plan: TransformPlan, rows: Any) -> Any:
    """The Spark schema of ``aggregate_rows``' output over stage 1's ``rows``."""
    from pyspark.sql import types as T

    fields = [rows.schema[k] for k in plan.key_names]
    fields += [T.StructField(f.name, spark_type(f.dtype), True) for f in plan.features]
    fields.append(T.StructField(EVENT_TIMESTAMP, T.TimestampType(), True))
    return T.StructType(fields)


def kernel_partitions(
    plan: TransformPlan,
    rows: Any,
    then: Callable[[pa.Table], Iterator[pa.RecordBatch]],
    schema: Any,
    partitions: int | None = None,
) -> Any:
    """Stage 1's ``rows`` shuffled by key into ``partitions``, the window kernel over each
    partition's rows, and ``then`` over its feature rows, in the same Python worker (so a backfill
    writes them where they are made, not through the JVM): a DataFrame of ``schema``."""
    keys = list(plan.key_names)
    values = [value_column(i) for i in range(len(plan.features))]
    rows = rows.select(*keys, TS, *values)

    def kernel(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import duckdb

        from transforms.engines.duckdb_windows import feature_rows

        held = list(batches)
        if not held or not sum(b.num_rows for b in held):
            return
        con = duckdb.connect()
        con.execute("SET threads = 1")  # Spark runs one task per core already
        try:
            table = feature_rows(con, plan, pa.Table.from_batches(held))
        finally:
            con.close()
        yield from then(table)

    shuffled = rows.repartition(partitions, *keys) if partitions else rows.repartition(*keys)
    return shuffled.mapInArrow(kernel, schema)


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


def prepare_parts(plan: TransformPlan, events: Any, joins: str | None = None) -> tuple[Any | None, Any]:
    """Stage 1 over the raw events DataFrame, in two parts: the rows Spark SQL prepares in the JVM
    (``spark_clean``; None where it cannot) and what Python prepares from the other events (all
    events when the first part is None). Only the Python part holds dead letters. Neither is cached:
    the JVM part is cheap to recompute from the events.

    A view with joins runs the embedded engine's joined stage 1 (``duckdb_joins.JoinedStage1``) in
    each task, over ``JoinInputs`` that the driver wrote to the directory ``joins`` (every task reads
    all of them: the looked-up rows and the other sources' events must fit a task's memory)."""
    from pyspark.sql import functions as F

    from transforms.engines.spark_clean import clean_rows

    ship_code_by_value(*plan_functions(plan))

    def stage1(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return prepare_batches(plan, batches)

    if plan.joins:
        if joins is None:
            raise ValueError(f"view {plan.view!r} has joins: give the directory of their inputs")
        return None, events.mapInArrow(_joined_stage1(plan, joins), prepared_ddl(plan))

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


def _joined_stage1(plan: TransformPlan, joins: str) -> Any:
    """The ``mapInArrow`` function of a view with joins: ``JoinedStage1`` over the task's batches."""
    from pathlib import Path

    schema = prepared_schema(plan)

    def stage1(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import duckdb

        from transforms.engines.duckdb_joins import JoinedStage1
        from transforms.joining import JoinInputs

        con = duckdb.connect()
        con.execute("SET threads = 1")  # Spark runs one task per core already
        try:
            stage = JoinedStage1(con, plan, JoinInputs.read(Path(joins)))
            for _, outs in stage.run(batches):
                for out in outs:
                    yield out.cast(schema)
        finally:
            con.close()

    return stage1


def prepare(plan: TransformPlan, events: Any, joins: str | None = None) -> Any:
    """Stage 1 over the raw events DataFrame (not cached): typed rows, dead letters, filtered."""
    jvm, python = prepare_parts(plan, events, joins)
    return python if jvm is None else jvm.unionByName(python)


def tally(prepared: Any, events: int) -> tuple[EventCounts, int | None, dict[int, int]]:
    """The event counts of stage 1's output for ``events`` input events, the first row's time, and
    the rows per UTC day (days since 1970), in one pass."""
    from pyspark.sql import functions as F

    day = F.when(F.col(KIND) == ROW, F.floor(F.col(TS) / DAY_MS)).alias("_day")
    groups = (
        prepared.groupBy(KIND, FIRST, day).agg(F.count(F.lit(1)).alias("n"), F.min(TS).alias("t")).collect()
    )
    first = min((r["t"] for r in groups if r[KIND] == ROW and r["t"] is not None), default=None)
    counts = EventCounts(input=events)
    tallies: dict[tuple[int, bool], int] = {}
    day_rows: dict[int, int] = {}
    for r in groups:
        tallies[(r[KIND], bool(r[FIRST]))] = tallies.get((r[KIND], bool(r[FIRST])), 0) + r["n"]
        if r[KIND] == ROW:
            day_rows[int(r["_day"])] = day_rows.get(int(r["_day"]), 0) + r["n"]
    add_tallies(counts, tallies)
    return counts, first, day_rows


def run_spark(plan: TransformPlan, events: Any, joins: str | None = None) -> SparkResult:
    """Compile ``plan`` over the raw events DataFrame ``events``; stage 1 is computed once. A view
    with joins reads their inputs from the directory ``joins`` (``JoinInputs.write``)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    prepared = prepare(plan, events, joins).persist(StorageLevel.MEMORY_AND_DISK)
    # The input is counted apart from stage 1's output, so a lost event unbalances the counts.
    counts, _, _ = tally(prepared, events.count())
    rows = aggregate_rows(plan, prepared.filter(F.col(KIND) == ROW))
    dead = prepared.filter(F.col(KIND) == DEAD).select(*DEAD_COLUMNS)
    scored = None
    if plan.row_stages:
        scored = score_rows(plan, rows).persist(StorageLevel.MEMORY_AND_DISK)
        rows, dead_rows = split_scored(scored)
        counts.rows_dead_lettered = dead_rows.count()
        dead = dead.unionByName(dead_rows)
    return SparkResult(rows=rows, dead_letters=dead, counts=counts, prepared=prepared, scored=scored)


class SparkEngine(Engine):
    """Spark over a DataFrame of raw events; its result holds DataFrames (``SparkResult``). A view
    with joins takes the directory of their inputs as option ``joins_dir`` (``JoinInputs.write``)."""

    name = "spark"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> SparkResult:
        return run_spark(plan, inputs, ctx.options.get("joins_dir"))

    def run_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> EngineResult:
        """On a local session (``local[2]``), through a Parquet file as a backfill reads history."""
        with _local_run(plan, events, joins) as (result, inputs):
            letters = result.dead_letter_records(plan.view)
            sources: dict[str, EventCounts] = {}
            if inputs is not None:
                sources, others = other_sources(plan, inputs)
                letters += others
            return EngineResult(
                rows=result.rows.toArrow().to_pylist(),
                dead_letters=letters,
                counts=result.counts,
                source_counts=sources,
            )

    def feature_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> pa.Table | None:
        with _local_run(plan, events, joins) as (result, _):
            table: pa.Table = result.rows.toArrow()
            return table


_DEFINITION_ERROR = re.compile(r"DefinitionError: (.+)")


@contextmanager
def definition_errors() -> Iterator[None]:
    """A view's definition error raised in a Spark task (an integer sum past its type, found by the
    window kernel) raised on the driver as itself: one line, not Spark's task failure."""
    try:
        yield
    except Exception as err:
        if type(err).__name__ not in ("PythonException", "Py4JJavaError"):
            raise
        found = _DEFINITION_ERROR.findall(str(err))
        if not found:
            raise
        raise MLFSError(found[-1].strip()) from None


@contextmanager
def _local_run(
    plan: TransformPlan, events: pa.Table, joins: JoinInputs | None
) -> Iterator[tuple[SparkResult, JoinInputs | None]]:
    """``plan`` over ``events`` on a local session, the events and join inputs in a temporary
    directory for the run's life."""
    import tempfile
    from pathlib import Path

    import pyarrow.parquet as pq

    from backfill.spark_session import spark_session

    with tempfile.TemporaryDirectory(prefix="mlfs-spark-") as tmp:
        path = Path(tmp) / "events.parquet"
        pq.write_table(events, path)
        joins_dir = None
        if plan.joins:
            joins = joins or JoinInputs()
            joins.check(plan)
            joins.write(Path(tmp) / "joins")
            joins_dir = str(Path(tmp) / "joins")
        result = run_spark(plan, spark_session("local[2]", "mlfs-verify").read.parquet(str(path)), joins_dir)
        try:
            yield result, joins if plan.joins else None
        finally:
            result.release()


ENGINE = SparkEngine()
