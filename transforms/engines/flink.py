"""The Flink engine: compiles ``TransformPlan``s to a PyFlink job.

* Stage 1 (``flink_stage1``), one for all the views of a source: a vectorised Python function runs
  ``transforms.events`` (the reference's code) over batches of raw events, and Flink SQL decides
  lateness in arrival order, counts the outcomes and unnests each view's typed rows (plus leave
  markers, see ``flink_sql``, and a heartbeat for an event that gives no row, so every event moves
  the watermark as in the reference). Dead letters and counts go to each view's ``OutcomeSink``.
* A view's rows become its table ``prepared`` with event-time attribute ``rt`` and a watermark that trails
  the latest event by the source's out-of-orderness plus allowed lateness, so no event stage 1
  accepted is ever late for Flink's operators.
* Stage 2 is Flink SQL (``flink_sql.stage2_sql``): keyed state and aggregation in Java operators.
* Feature rows go to a row sink: a spool directory here (``run_flink``), the stores in
  ``mlfs serve-stream``.

Rows are emitted once Flink's watermark passes their time; with allowed lateness the watermark waits
for it, so emitted rows are final and no correction is ever needed.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrow_events import arrow_type, row_dicts
from transforms.enginelogs import flink_logs
from transforms.engines.base import Engine, EngineResult
from transforms.engines.flink_decode import stage1_groups
from transforms.engines.flink_jar import mlfs_jar
from transforms.engines.flink_joins import (
    JoinedSource,
    JoinSides,
    LookedUp,
    build_joined_stage1,
    lookup_row_text,
    lookup_row_type,
    lookup_row_values,
)
from transforms.engines.flink_sql import (
    BOUNDED_REPLAY_LAG_MS,
    PREPARED,
    empty_feature,
    feature_rows,
    interval,
    is_over,
    plain_result,
    quote,
    stage2_sql,
    watermark_lag_ms,
)
from transforms.engines.flink_stage1 import (
    HEARTBEAT,
    OutcomeSink,
    build_stage1,
    prepared_columns,
    table_environment,
)
from transforms.engines.flink_window import window_results
from transforms.events import DeadLetter, EventCounts, Lateness, PartitionedEvent, event_text, partitioned
from transforms.joining import JoinInputs, lookup_row, lookup_rows, source_lateness
from transforms.joins import Lookup
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.py4j_errors import share_py4j_errors
from transforms.timeutil import datetime_to_ms
from transforms.usercode import import_root, plan_functions, user_module


class SpoolOutcomes:
    """Keeps dead letters and counts, and spools them to a directory when the job ends."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        _opened(spool)
        self.counts = EventCounts()
        self.dead_letters: list[DeadLetter] = []

    def dead(self, letter: DeadLetter, late: bool, seq: int) -> None:
        self.dead_letters.append(letter)

    def update(self, counts: EventCounts, max_event_ms: int | None) -> None:
        self.counts = counts

    def close(self) -> None:
        _spool(self.spool, "stage1", (self.counts, self.dead_letters))


def _opened(directory: str) -> None:
    """Mark that one more spooling instance runs: the job's result waits for its spool file."""
    (Path(directory) / f"opened-{uuid.uuid4().hex}").touch()


def _spool(directory: str, prefix: str, data: Any) -> None:
    path = Path(directory) / f"{prefix}-{uuid.uuid4().hex}.pkl"
    tmp = path.with_name("." + path.name)
    with tmp.open("wb") as f:
        pickle.dump(data, f)
    tmp.replace(path)


class RowWriter(Protocol):
    """Where a sink instance writes feature rows, and the dead letters of rows an after-aggregation
    model stage could not score (opened on the Flink worker)."""

    def write(self, rows: list[dict[str, Any]]) -> None: ...

    def write_table(self, table: pa.Table) -> None:
        """``write`` of a table of feature rows (``sink_table``)."""
        ...

    def dead(self, letters: list[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class SpoolRows:
    """Keeps the feature rows and spools them when the job ends (tests, ``mlfs verify``)."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        _opened(spool)
        self.rows: list[dict[str, Any]] = []
        self.letters: list[DeadLetter] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def write_table(self, table: pa.Table) -> None:
        self.rows.extend(row_dicts(table))

    def dead(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        _spool(self.spool, "rows", (self.rows, self.letters))


def row_sink_function(
    plan: TransformPlan, writer: Callable[[], RowWriter], kinds: list[str], lookups: Sequence[Lookup] = ()
) -> Any:
    """The row sink: a vectorised (pandas) function over batches of stage 2's results (columns as
    ``sink_columns`` passes them, of ``kinds``) that turns them into feature rows, runs the plan's
    after-aggregation model stages over them and hands them to ``writer``; it returns one ``1`` per
    row, or, where later views of the job look the view up (``lookups``), each row as each lookup
    reads it (``lookup_feed_type``), so the rows become Python values once. It keeps no state:
    Flink finishes a batch before each checkpoint completes, so every row before a checkpoint is
    written, and rows after it are written again on replay, which the stores absorb (newer-wins
    online, newest created row offline)."""
    from pyflink.table.udf import ScalarFunction

    class RowSink(ScalarFunction):
        def open(self, function_context: Any) -> None:
            self.writer = writer()
            self.scorer = None
            if plan.row_stages:
                from transforms.inference.feature_rows import FeatureRowScorer

                self.scorer = FeatureRowScorer(plan)

        def eval(self, *columns: Any) -> Any:
            import numpy as np
            import pandas as pd

            ones = pd.Series(np.ones(len(columns[0]), dtype=np.int32))  # a dtype object, as _OBJECT
            if self.scorer is None and not lookups:
                table = sink_table(plan, columns, kinds)
                if table is not None:
                    if table.num_rows:
                        self.writer.write_table(table)
                    return ones
            each: list[Any] = feature_rows(plan, decode_columns(columns, kinds))
            rows = each
            if self.scorer is not None:
                each = self.scorer.score_each(each)
                rows = [r for r in each if not isinstance(r, DeadLetter)]
                if len(rows) < len(each):
                    self.writer.dead([r for r in each if isinstance(r, DeadLetter)])
            if rows:
                self.writer.write(rows)
            if lookups:
                return lookup_feed(lookups, each)
            return ones

        def close(self) -> None:
            self.writer.close()

        def is_deterministic(self) -> bool:
            return False  # it writes: never folded, reordered or dropped

    return RowSink()


def lookup_feed_type(lookups: Sequence[Lookup]) -> Any:
    """What a looked-up view's row sink returns per row: its time (``_ts``, epoch ms) and, for the
    ``p``-th lookup of it, the key and features as that lookup reads them (``_j<p>``, ``_f<p>``:
    ``lookup_row_text``; null where there is no row or the key holds a null)."""
    from pyflink.table import DataTypes

    fields = [DataTypes.FIELD("_ts", DataTypes.BIGINT())]
    for p in range(len(lookups)):
        fields += [
            DataTypes.FIELD(f"_j{p}", DataTypes.STRING()),
            DataTypes.FIELD(f"_f{p}", DataTypes.STRING()),
        ]
    return DataTypes.ROW(fields)


def lookup_feed(lookups: Sequence[Lookup], each: Sequence[dict[str, Any] | DeadLetter]) -> Any:
    """The ``lookup_feed_type`` columns (a pandas DataFrame) of feature rows (a dead letter: no row)."""
    import pandas as pd

    columns: dict[str, list[Any]] = {
        "_ts": [0 if isinstance(r, DeadLetter) else datetime_to_ms(r[EVENT_TIMESTAMP]) for r in each]
    }
    for p, lookup in enumerate(lookups):
        texts = [None if isinstance(r, DeadLetter) else lookup_row_text(lookup_row(lookup, r)) for r in each]
        columns[f"_j{p}"] = [None if t is None else t[0] for t in texts]
        columns[f"_f{p}"] = [None if t is None else t[2] for t in texts]
    return pd.DataFrame(columns)


# How each stage-2 result column reaches the row sink. pandas turns integers with nulls into floats
# and timestamps into nanoseconds, so integers travel with nulls as zero plus an ``IS NULL`` flag,
# and times as text; a float column comes with a flag too, because pandas cannot tell a null from NaN.
def sink_columns(table: Any) -> tuple[list[str], list[str]]:
    """(SQL expressions passing ``table``'s columns to ``row_sink_function``, the Python kind of
    each: ``int`` or ``float`` (then a null flag follows), ``time`` or ``value``)."""
    from pyflink.table.types import (
        BigIntType,
        DoubleType,
        FloatType,
        IntType,
        SmallIntType,
        TimestampType,
        TinyIntType,
    )

    schema = table.get_resolved_schema()
    expressions: list[str] = []
    kinds: list[str] = []
    for name, data_type in zip(schema.get_column_names(), schema.get_column_data_types(), strict=True):
        column = quote(name)
        if isinstance(data_type, (TinyIntType, SmallIntType, IntType, BigIntType)):
            expressions += [f"COALESCE(CAST({column} AS BIGINT), 0)", f"{column} IS NULL"]
            kinds.append("int")
        elif isinstance(data_type, TimestampType):
            expressions.append(f"CAST({column} AS STRING)")
            kinds.append("time")
        elif isinstance(data_type, (FloatType, DoubleType)):
            expressions += [f"CAST({column} AS DOUBLE)", f"{column} IS NULL"]
            kinds.append("float")
        else:
            expressions.append(column)
            kinds.append("value")
    return expressions, kinds


def decode_columns(columns: Sequence[Any], kinds: list[str]) -> list[list[Any]]:
    """The pandas columns ``sink_columns`` passes, as lists of Python values (None for null)."""
    import pandas as pd

    decoded: list[list[Any]] = []
    given = iter(columns)
    for kind in kinds:
        values = next(given).tolist()
        if kind in ("int", "float"):
            nulls = next(given)
            if not isinstance(nulls, pd.Series):  # the flag of a NOT NULL column: a constant
                nulls = pd.Series([nulls] * len(values), dtype=bool)
            if nulls.any():
                values = [None if null else v for v, null in zip(values, nulls.tolist(), strict=True)]
        elif kind == "time":
            values = [None if v is None else datetime.fromisoformat(v) for v in values]
        decoded.append(values)
    return decoded


def sink_table(plan: TransformPlan, columns: Sequence[Any], kinds: list[str]) -> pa.Table | None:
    """``feature_rows`` of the columns ``sink_columns`` passes, built by columns, where every
    column allows it: times as epoch ms, keys of their own type and features whose results need
    no conversion (``plain_result``); None where the row path decides."""
    import numpy as np
    import pandas as pd

    n_keys = len(plan.keys)
    passed_as: dict[type | None, str] = {int: "int", float: "float"}
    plain = [passed_as.get(plain_result(f.aggregation, f.dtype)) for f in plan.features]
    if kinds[n_keys] != "int" or plain != kinds[n_keys + 1 :]:
        return None  # a hopping window's end comes as text; a feature needs converting
    arrays: list[pa.Array] = []
    given = iter(columns)
    for kind in kinds:
        values = next(given)
        if kind in ("int", "float"):
            nulls = next(given)
            if isinstance(nulls, pd.Series):
                mask = nulls.to_numpy(dtype=bool)
            else:  # the flag of a NOT NULL column: a constant
                mask = np.full(len(values), bool(nulls))
            arrays.append(pa.array(values.to_numpy(), mask=mask))
        else:
            arrays.append(values)
    try:
        keys = [
            column.cast(arrow_type(dtype))
            if isinstance(column, pa.Array)
            else pa.array(column.tolist(), arrow_type(dtype))
            for column, (_, dtype) in zip(arrays[:n_keys], plan.keys, strict=True)
        ]
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        return None  # a key of another type: the row path converts or refuses it
    times = arrays[n_keys]
    if times.null_count:
        return None
    features = []
    for feature, array in zip(plan.features, arrays[n_keys + 1 :], strict=True):
        zero = empty_feature(feature.aggregation, feature.dtype)
        if array.null_count and zero is not None:
            array = array.fill_null(zero)
        if pa.types.is_floating(array.type):  # NaN is null
            array = pc.if_else(pc.is_nan(array), pa.scalar(None, array.type), array)
        features.append(array.cast(arrow_type(feature.dtype)))
    names = [*plan.key_names, *(f.name for f in plan.features), EVENT_TIMESTAMP]
    return pa.table([*keys, *features, times.cast(pa.timestamp("ms", "UTC"))], names=names)


def flink_environment(
    parallelism: int = 2, master: str | None = None, settings: dict[str, str] | None = None
) -> tuple[Any, Any]:
    """A streaming environment (a local mini-cluster, or ``host:port`` of a remote JobManager) and
    its table environment, in UTC; ``settings`` are extra Flink configuration entries."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment

    _no_empty_java_home()
    flink_logs()  # before the JVM starts
    config = Configuration()
    share_py4j_errors()  # after: Spark's error converter must not see Flink's errors, nor Flink's Spark's
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("table.local-time-zone", "UTC")
    # Without it, each chained operator gets a deep copy of every row (measured: most of stage 1's
    # time). The job is safe with it: every operator that keeps rows (OVER, window, mini-batch and
    # Python operators) reads them from a network exchange, which never reuses objects, or copies.
    config.set_string("pipeline.object-reuse", "true")
    for name, value in (settings or {}).items():
        config.set_string(name, value)
    if master:
        env = _remote_environment(master, config)
    else:
        env = StreamExecutionEnvironment.get_execution_environment(config)
        env.add_jars(mlfs_jar().as_uri())
    env.set_parallelism(parallelism)
    # Table operators otherwise take the parallelism of the stream they start from (stage 1's is 1).
    return env, table_environment(env, {"table.exec.resource.default-parallelism": str(parallelism)})


def _no_empty_java_home() -> None:
    """An empty ``JAVA_HOME`` (exported but unset) names no JDK, yet PyFlink would start the JVM as
    ``bin/java`` and fail; without it, Java is found on ``PATH``, as Spark's launcher does."""
    if os.environ.get("JAVA_HOME") == "":
        del os.environ["JAVA_HOME"]


def _remote_environment(master: str, config: Any) -> Any:
    """An environment submitting to the JobManager at ``host:port`` (its REST port), shipping the
    flink-python jar the cluster needs to run Python functions and MLFS's functions' jar."""
    import pyflink
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway
    from pyflink.util.java_utils import add_jars_to_context_class_loader

    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Flink master is HOST:PORT (the REST port), got {master!r}")
    gateway = get_gateway()
    jars = sorted(str(p) for p in (Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar"))
    functions = mlfs_jar()
    jars.append(str(functions))
    add_jars_to_context_class_loader([functions.as_uri()])  # the planner loads its classes here
    j_jars = gateway.new_array(gateway.jvm.String, len(jars))
    for i, jar in enumerate(jars):
        j_jars[i] = jar
    java_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
    j_env = java_env.createRemoteEnvironment(host, int(port), config._j_configuration, j_jars)
    return StreamExecutionEnvironment(j_env)


@dataclass(frozen=True)
class ViewJob:
    """One view in a Flink job: its plan, where its dead letters and counts go, where its feature
    rows go, and the name of its prepared table (unique in the job)."""

    plan: TransformPlan
    outcomes: Callable[[], OutcomeSink]
    rows: Callable[[], RowWriter]
    table: str = PREPARED
    sides: JoinSides | None = None  # what the view's joins read (``flink_joins``)
    looked_up_by: tuple[Lookup, ...] = ()  # lookups of it by other views of the job (``LookupFeed``)


def build_job(
    views: Sequence[ViewJob],
    env: Any,
    t_env: Any,
    raws: Sequence[Any],
    lateness: Lateness | None,
    source: str = "source",
) -> dict[str, LookupFeed]:
    """Add one stage 1 for ``views`` (the views of one source, read from ``raws``: a DataStream of
    text per source partition, each at parallelism 1), then each view's stage 2 and sinks, to
    ``env``; returns the ``LookupFeed`` of each view other views look up, by view name."""
    # The workers import the user code's modules (event transform, model stages) from shipped copies.
    plans = [view.plan for view in views]
    roots = {
        import_root(m) for plan in plans for m in map(user_module, plan_functions(plan)) if m is not None
    }
    for folder in sorted(roots):
        env.add_python_file(str(folder))
    feeds: dict[str, LookupFeed] = {}
    plain = [view for view in views if not view.plan.joins]
    for members, spec, suffix in stage1_groups([view.plan for view in plain]):
        group = [plain[i] for i in members]
        outcomes = [view.outcomes for view in group]
        plans = [view.plan for view in group]
        prepared = build_stage1(plans, env, raws, lateness, outcomes, f"{source}{suffix}", spec)
        for view, stream in zip(group, prepared, strict=True):
            if (feed := _build_stage2(view, env, t_env, stream, None)) is not None:
                feeds[view.plan.view] = feed
    for view in views:
        if view.plan.joins:
            if view.sides is None:
                raise ValueError(f"view {view.plan.view!r} has joins: its job needs what they read")
            stream, stage2_lateness = build_joined_stage1(
                view.plan,
                env,
                raws,
                lateness,
                view.outcomes,
                view.sides,
                view.table,
            )
            lag = watermark_lag_ms(view.plan, stage2_lateness)
            if (feed := _build_stage2(view, env, t_env, stream, lag)) is not None:
                feeds[view.plan.view] = feed
    return feeds


def _build_stage2(
    view: ViewJob, env: Any, t_env: Any, prepared: Any, lag_ms: int | None
) -> LookupFeed | None:
    """A view's stage 2 over its ``prepared`` rows, and its row sink; returns the sink's
    ``LookupFeed`` where other views look the view up."""
    plan = view.plan
    results = stage2_results(plan, t_env, prepared, lag_ms, view.table)
    # Rows wait at most this long in the sink: the row stages' max wait, or 100 ms.
    flush_ms = plan.row_stages[0].batching.max_wait_ms if plan.row_stages else 100
    feed = add_row_sink(plan, env, results, view.rows, view.table, flush_ms, view.looked_up_by)
    return None if feed is None else LookupFeed(feed, len(view.looked_up_by), tuple(plan.keys))


@dataclass(frozen=True)
class LookupFeed:
    """A looked-up view's rows as its row sink returns them (a DataStream of ``lookup_feed_type``
    for ``lookups`` lookups), and the view's keys."""

    stream: Any
    lookups: int
    keys: tuple[tuple[str, Any], ...]


def looked_up_rows(feed: LookupFeed, position: int, env: Any, name: str) -> LookedUp:
    """The rows the ``position``-th lookup of a view reads (``lookup_row_type``), from that view's
    row sink's ``feed``, carrying its watermarks."""
    from pyflink.table import Schema

    row_env = table_environment(env, {"table.exec.resource.default-parallelism": str(env.get_parallelism())})
    builder = Schema.new_builder().column("_ts", "BIGINT")
    for p in range(feed.lookups):
        builder = builder.column(f"_j{p}", "STRING").column(f"_f{p}", "STRING")
    schema = (
        builder.column_by_expression("_rt", "TO_TIMESTAMP_LTZ(_ts, 3)")
        .watermark("_rt", "SOURCE_WATERMARK()")
        .build()
    )
    table = f"{name}_looked_up"
    row_env.create_temporary_view(table, row_env.from_data_stream(feed.stream, schema))
    j, f = f"_j{position}", f"_f{position}"
    rows = row_env.sql_query(f"SELECT {j} AS _j, _ts, {f} AS _f FROM {quote(table)} WHERE {j} IS NOT NULL")
    return LookedUp(row_env.to_data_stream(rows), feed.keys, None)


def stage2_results(
    plan: TransformPlan,
    t_env: Any,
    prepared: Any,
    lag_ms: int | None,
    table: str = PREPARED,
    over: str = "mlfs",
) -> Any:
    """Stage 2's results (a DataStream, one row per key and time) over a view's ``prepared`` rows
    (``stage2_table``).
    Continuous and lifetime windows run MLFS's window operator (``flink_window``); with
    ``over="sql"`` they run the ``OVER`` query instead, whose rows of one key and time (an ``OVER``
    gives a row per tied input) pass ``FirstOfTime`` (Java, chained) to keep the first."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    sql = stage2_table(plan, t_env, prepared, lag_ms, table)
    if not is_over(plan):
        return t_env.to_data_stream(sql)
    if over == "mlfs":
        return window_results(plan, t_env, table, sql)
    results = t_env.to_data_stream(sql)
    first = get_gateway().jvm.mlfs.flink.FirstOfTime(len(plan.keys))
    j_results = results._j_data_stream
    return DataStream(j_results.flatMap(first, j_results.getType()).name(f"{table}-first-of-time"))


def stage2_table(
    plan: TransformPlan, t_env: Any, prepared: Any, lag_ms: int | None, table: str = PREPARED
) -> Any:
    """Stage 2's SQL results (a Table) over a view's ``prepared`` rows (a DataStream of
    ``prepared_columns``), registered as ``table`` with its event time and a watermark ``lag_ms``
    behind the latest row (None: stage 1's own watermarks, which the stream carries)."""
    from pyflink.table import Schema

    builder = Schema.new_builder()
    for name, _, data_type in prepared_columns(plan):
        builder = builder.column(name, data_type)
    watermark = "SOURCE_WATERMARK()" if lag_ms is None else f"rt - {interval(lag_ms)}"
    schema = builder.column_by_expression("rt", "TO_TIMESTAMP_LTZ(_ts, 3)").watermark("rt", watermark).build()
    # Heartbeats only carry the watermark; a filter keeps the time attribute and its watermarks.
    t_env.create_temporary_view(f"{table}_all", t_env.from_data_stream(prepared, schema))
    t_env.create_temporary_view(
        table, t_env.sql_query(f"SELECT * FROM `{table}_all` WHERE _kind <> {HEARTBEAT}")
    )
    return t_env.sql_query(stage2_sql(plan, table))


def add_row_sink(
    plan: TransformPlan,
    env: Any,
    results: Any,
    row_writer: Callable[[], RowWriter],
    name: str,
    flush_ms: int,
    lookups: Sequence[Lookup] = (),
) -> Any | None:
    """Send stage 2's ``results`` (a DataStream) through the row sink, in a table environment of its
    own whose Python batches close at least every ``flush_ms``. With ``lookups`` (of this view by
    others), returns what the sink returns (a DataStream of ``lookup_feed_type``, carrying the
    results' watermarks)."""
    from pyflink.table import DataTypes, TableDescriptor
    from pyflink.table.udf import udf

    batching = {
        "table.exec.resource.default-parallelism": str(env.get_parallelism()),
        "python.fn-execution.bundle.time": str(flush_ms),
        "python.fn-execution.arrow.batch.size": "5000",
    }
    sink_env = table_environment(env, batching)
    results_table = sink_env.from_data_stream(results)
    expressions, kinds = sink_columns(results_table)
    if lookups:
        schema = results_table.get_resolved_schema()
        results_table = _with_watermarks(sink_env, results, schema, len(plan.keys))
    function = f"{name}_sink"
    sink_env.create_temporary_function(
        function,
        udf(
            row_sink_function(plan, row_writer, kinds, lookups),
            result_type=lookup_feed_type(lookups) if lookups else DataTypes.INT(),
            func_type="pandas",
        ),
    )
    sink_env.create_temporary_view(f"{name}_results", results_table)
    arguments = ", ".join(expressions)
    call = f"{function}({arguments})"
    if lookups:
        fields = ["_ts", *(f"_{c}{p}" for p in range(len(lookups)) for c in "jf")]
        feed = sink_env.sql_query(
            f"SELECT {', '.join(f'r.{c} AS {c}' for c in fields)} FROM "
            f"(SELECT {call} AS r FROM {quote(name + '_results')})"
        )
        return sink_env.to_data_stream(feed)
    written = sink_env.sql_query(f"SELECT {call} AS n FROM {quote(name + '_results')}")
    statements = sink_env.create_statement_set()
    statements.add_insert(TableDescriptor.for_connector("blackhole").build(), written)
    statements.attach_as_datastream()
    return None


def _with_watermarks(t_env: Any, results: Any, plain: Any, time_column: int) -> Any:
    """Stage 2's ``results`` (of resolved schema ``plain``) as a table that keeps their watermarks
    (Flink drops a stream's watermarks where it becomes a table, unless the table declares them),
    with event time ``_rt`` from column ``time_column`` (``_ts``, epoch ms, or a hopping window's
    ``_end``)."""
    from pyflink.table import Schema
    from pyflink.table.types import BigIntType

    name = plain.get_column_names()[time_column]
    if isinstance(plain.get_column_data_types()[time_column], BigIntType):
        rowtime = f"TO_TIMESTAMP_LTZ({quote(name)}, 3)"
    else:
        rowtime = f"CAST({quote(name)} AS TIMESTAMP_LTZ(3))"
    schema = (
        Schema.new_builder()
        .from_resolved_schema(plain)
        .column_by_expression("_rt", rowtime)
        .watermark("_rt", "SOURCE_WATERMARK()")
        .build()
    )
    return t_env.from_data_stream(results, schema)


def file_source(directory: str, poll_ms: int | None = None) -> Any:
    """A Flink ``FileSource`` of the JSON-lines files in ``directory``: one partition, its files
    read one at a time, each whole, in name order, whatever order a listing gives (DESIGN §2;
    ``NameOrderAssigner``), lines that are not UTF-8 marked as ``transforms.events.event_text``
    marks them (``Utf8Lines``); with ``poll_ms``, new files are read as they appear."""
    from pyflink.common import Duration
    from pyflink.datastream.connectors.file_system import FileSource, StreamFormat
    from pyflink.java_gateway import get_gateway

    mlfs = get_gateway().jvm.mlfs.flink
    builder = FileSource.for_record_stream_format(StreamFormat(mlfs.Utf8Lines()), directory)
    if poll_ms is None:
        builder.process_static_file_set()
    else:
        builder.monitor_continuously(Duration.of_millis(poll_ms))
    builder._j_file_source_builder.setSplitAssigner(mlfs.NameOrderAssigner.provider())
    return builder.build()


def run_flink(
    plan: TransformPlan,
    events: Iterable[Any],
    lateness: Lateness | None = None,
    parallelism: int = 2,
    master: str | None = None,
    files: int | None = None,
    joins: JoinInputs | None = None,
) -> EngineResult:
    """Run ``plan`` over finite ``events`` (in arrival order) as a Flink job; the same result type
    as the reference engine. Dicts are sent as JSON text, which is how Flink sources read events;
    with ``files``, the events are split into that many JSON-lines files, read by Flink's file
    source as ``mlfs serve-stream`` reads a stream directory. A view with joins reads ``joins``: the
    other sources' events (in arrival order, with their own lateness when ``lateness`` is given)
    and the looked-up views' rows."""
    return run_flink_views([plan], events, lateness, parallelism, master, files, joins)[0]


def run_flink_views(
    plans: Sequence[TransformPlan],
    events: Iterable[Any],
    lateness: Lateness | None = None,
    parallelism: int = 2,
    master: str | None = None,
    files: int | None = None,
    joins: JoinInputs | None = None,
    inspect: Callable[[str], None] | None = None,
) -> list[EngineResult]:
    """``run_flink`` for several views of one source in one job, sharing one stage 1 as
    ``mlfs serve-stream`` does; one result per view. ``inspect`` is given the job's execution
    plan (Flink's JSON) before it runs."""
    events = list(events)
    spool = tempfile.mkdtemp(prefix="mlfs-flink-")
    try:
        env, t_env = flink_environment(parallelism, master)
        raws = _bounded_sources(env, events, files, os.path.join(spool, "events"))
        directories = [os.path.join(spool, f"view{v}") for v in range(len(plans))]
        views = []
        for v, (plan, directory) in enumerate(zip(plans, directories, strict=True)):
            os.mkdir(directory)
            outcomes = functools.partial(SpoolOutcomes, directory)
            rows = functools.partial(SpoolRows, directory)
            sides = None
            if plan.joins:
                inputs = joins or JoinInputs()
                inputs.check(plan)
                sides = _bounded_sides(plan, env, inputs, lateness, directory)
            views.append(ViewJob(plan, outcomes, rows, f"{PREPARED}{v}", sides))
        build_job(views, env, t_env, raws, lateness)
        if inspect is not None:
            inspect(env.get_execution_plan())
        env.execute(f"mlfs-{'-'.join(plan.view for plan in plans)}")
        for directory in directories:
            # Python workers may close their functions just after the job reports FINISHED.
            _wait_for_spools(directory)
            for source in Path(directory).glob("source-*"):
                _wait_for_spools(str(source))
        return [_read_spool(plan, d) for plan, d in zip(plans, directories, strict=True)]
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _bounded_sides(
    plan: TransformPlan, env: Any, inputs: JoinInputs, lateness: Lateness | None, directory: str
) -> JoinSides:
    """What ``plan``'s joins read in a bounded job: the other sources' events from collections
    (their outcomes spooled under ``directory``/``source-<name>``) and the looked-up rows."""

    from transforms.engines.reference import raw_events

    sources: dict[str, JoinedSource] = {}
    lookups: dict[int, LookedUp] = {}
    for position, join in enumerate(plan.joins):
        if isinstance(join, Lookup):
            table = inputs.lookups[join.view]
            values = lookup_row_values(lookup_rows(join, table))
            rows = env.from_collection(values, lookup_row_type())
            lookups[position] = LookedUp(rows, table.keys, BOUNDED_REPLAY_LAG_MS)
        elif join.source_name not in sources:
            spool = os.path.join(directory, f"source-{join.source_name}")
            os.mkdir(spool)
            events = raw_events(inputs.sources[join.source_name])
            partitions = inputs.partitions.get(join.source_name) or [0] * len(events)
            arrivals = [PartitionedEvent(p, e) for p, e in zip(partitions, events, strict=True)]
            raws = _bounded_sources(env, arrivals, None, "")
            other = None if lateness is None else source_lateness(join.source)
            sources[join.source_name] = JoinedSource(raws, other, functools.partial(SpoolOutcomes, spool))
    return JoinSides(sources, lookups)


def _bounded_sources(env: Any, events: list[Any], files: int | None, directory: str) -> list[Any]:
    """``events`` as DataStreams of text, one per source partition (``PartitionedEvent``'s, 0 to
    the highest; else one): from collections, or from ``files`` JSON-lines files in ``directory``
    (bytes events as they are; one partition), read in name order, so in the same order."""
    from pyflink.common import Types, WatermarkStrategy

    if any(isinstance(e, PartitionedEvent) for e in events):
        if files is not None:
            raise ValueError("events read from files are one partition: no PartitionedEvent")
        arrivals = [partitioned(e) for e in events]
        parts: list[list[str]] = [[] for _ in range(1 + max(e.partition for e in arrivals))]
        for event in arrivals:
            parts[event.partition].append(_as_text(event.raw))
        return [env.from_collection(part, Types.STRING()).set_parallelism(1) for part in parts]
    if files is None:
        return [env.from_collection([_as_text(e) for e in events], Types.STRING())]
    lines = [bytes(e) if isinstance(e, (bytes, bytearray)) else _as_text(e).encode() for e in events]
    if any(b"\n" in line or b"\r" in line for line in lines):
        raise ValueError("an event sent as a line of a file cannot hold a line break")
    os.mkdir(directory)
    size = max(1, -(-len(lines) // files))  # ceiling: ``files`` files, the last may be shorter
    for number, first in enumerate(range(0, len(lines), size)):
        part = lines[first : first + size]
        Path(directory, f"part-{number:05d}.jsonl").write_bytes(b"".join(line + b"\n" for line in part))
    return [
        env.from_source(file_source(directory), WatermarkStrategy.no_watermarks(), "files").set_parallelism(1)
    ]


def _wait_for_spools(spool: str, timeout_s: float = 60.0) -> None:
    """Wait until every instance that opened has spooled (Python workers may close their functions
    just after the job reports FINISHED)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = [n for n in os.listdir(spool) if not n.startswith(".") and not n.startswith("source-")]
        opened = sum(n.startswith("opened-") for n in names)
        if opened and len(names) - opened >= opened:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Flink's Python workers did not report within {timeout_s:.0f}s")
        time.sleep(0.05)


def _as_text(event: Any) -> str:
    if isinstance(event, str):
        return event
    if isinstance(event, (bytes, bytearray)):
        return event_text(event)
    return json.dumps(event, default=str, sort_keys=True)


def _read_spool(plan: TransformPlan, spool: str) -> EngineResult:
    result = EngineResult()
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in sorted(os.listdir(spool)):
        path = os.path.join(spool, name)
        if name.startswith("source-") and os.path.isdir(path):  # a joined source's outcomes
            other = _read_spool(plan, path)
            result.source_counts[name.removeprefix("source-")] = other.counts
            result.dead_letters.extend(other.dead_letters)
            continue
        if name.startswith("opened-"):
            continue
        with open(os.path.join(spool, name), "rb") as f:
            data = pickle.load(f)
        if name.startswith("stage1-"):
            counts, letters = data
            result.counts.add(counts)
            result.dead_letters.extend(letters)
        elif name.startswith("rows-"):
            written, letters = data
            result.dead_letters.extend(letters)
            result.counts.rows_dead_lettered += len(letters)
            for row in written:
                ident = (*(row[k] for k in plan.key_names), row[EVENT_TIMESTAMP])
                if ident in rows:  # one row per key and time (DESIGN §2): a second is a bug
                    raise RuntimeError(f"Flink gave two rows for {ident}: {rows[ident]} and {row}")
                rows[ident] = row
    result.rows = [rows[k] for k in sorted(rows, key=repr)]
    return result


class FlinkEngine(Engine):
    """A bounded Flink job over finite events in arrival order (options: ``lateness``,
    ``parallelism``, ``master``, ``files``)."""

    name = "flink"

    def run(self, plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> EngineResult:
        return run_flink(
            plan,
            inputs,
            lateness=ctx.options.get("lateness"),
            parallelism=ctx.options.get("parallelism", 2),
            master=ctx.options.get("master"),
            files=ctx.options.get("files"),
            joins=ctx.options.get("joins"),
        )

    def run_table(
        self, plan: TransformPlan, events: pa.Table, joins: JoinInputs | None = None
    ) -> EngineResult:
        from transforms.engines.reference import raw_events

        return run_flink(plan, raw_events(events), joins=joins)


ENGINE = FlinkEngine()
