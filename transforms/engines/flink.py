"""The Flink engine: compiles a ``TransformPlan`` to a PyFlink job.

* Stage 1 is a Python ``flat_map`` running ``transforms.events`` (the reference's code) on each raw
  event, in arrival order, with the same ``LateClassifier``; it emits typed rows (plus leave
  markers, see ``flink_sql``, and a heartbeat for an event that gives no row, so every event moves
  the watermark as in the reference) and hands dead letters and counts to an ``OutcomeSink``.
* The rows become the table ``prepared`` with event-time attribute ``rt`` and a watermark that trails
  the latest event by the source's out-of-orderness plus allowed lateness, so no event stage 1
  accepted is ever late for Flink's operators.
* Stage 2 is Flink SQL (``flink_sql.stage2_sql``): keyed state and aggregation in Java operators.
* Feature rows go to a row sink: a spool directory here (``run_flink``), the stores in
  ``mlfs serve-stream``.

Rows are emitted once Flink's watermark passes their time; with allowed lateness the watermark waits
for it, so emitted rows are final and no correction is ever needed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pickle
import shutil
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from transforms.dtypes import DType
from transforms.engines.flink_sql import (
    PREPARED,
    encode_ordered,
    feature_row,
    interval,
    is_ordered,
    marker_offset_ms,
    stage2_sql,
    watermark_lag_ms,
)
from transforms.engines.reference import EngineResult
from transforms.events import DeadLetter, EventCounts, EventPreparer, LateClassifier, Lateness
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.timeutil import engine_value
from transforms.usercode import import_root, plan_functions, user_module

KIND = "_kind"
ROW, MARKER, HEARTBEAT = 0, 4, 5
BOUNDED_REPLAY_LAG_MS = 500 * 86_400_000  # without lateness, hold the watermark back 500 days
RESTORE_TIMER_MS = 1000
END_OF_INPUT_MS = 2**63 - 2  # an event-time timer the final watermark of a bounded input fires


def _flink_type(dtype: DType | None) -> tuple[Any, Any]:
    """(DataStream type info, Table data type) of a key or input column."""
    from pyflink.common import Types
    from pyflink.table import DataTypes

    name = "Bool" if dtype is None else dtype.name
    table = {
        "String": (Types.STRING(), DataTypes.STRING()),
        "Int32": (Types.INT(), DataTypes.INT()),
        "Int64": (Types.LONG(), DataTypes.BIGINT()),
        "UnixTimestamp": (Types.LONG(), DataTypes.BIGINT()),
        "Float32": (Types.DOUBLE(), DataTypes.DOUBLE()),
        "Float64": (Types.DOUBLE(), DataTypes.DOUBLE()),
        "Bool": (Types.BOOLEAN(), DataTypes.BOOLEAN()),
        "Bytes": (Types.PRIMITIVE_ARRAY(Types.BYTE()), DataTypes.BYTES()),
    }
    if name not in table:
        raise TypeError(f"no Flink type for {dtype}")
    return table[name]


def prepared_columns(plan: TransformPlan) -> list[tuple[str, Any, Any]]:
    """Stage 1's output columns: (name, type info, data type)."""
    from pyflink.common import Types
    from pyflink.table import DataTypes

    columns = [(KIND, Types.INT(), DataTypes.INT())]
    columns += [(name, *_flink_type(dtype)) for name, dtype in plan.keys]
    columns.append(("_ts", Types.LONG(), DataTypes.BIGINT()))
    columns += [(f"_v{i}", *_flink_type(f.input_dtype)) for i, f in enumerate(plan.features)]
    columns += [
        (f"_o{i}", Types.STRING(), DataTypes.STRING())
        for i, f in enumerate(plan.features)
        if is_ordered(f.aggregation)
    ]
    return columns


class OutcomeSink(Protocol):
    """Where one stage-1 instance puts dead letters and counts (opened on the Flink worker)."""

    counts: EventCounts
    max_event_ms: int | None

    def dead(self, letter: DeadLetter, late: bool = False) -> None: ...

    def tick(self) -> None:
        """Called after every event; an implementation may publish its counts now and then."""

    def close(self) -> None: ...


class SpoolOutcomes:
    """Keeps dead letters and counts, and spools them to a directory when the job ends."""

    def __init__(self, spool: str) -> None:
        self.spool = spool
        self.counts = EventCounts()
        self.max_event_ms: int | None = None
        self.dead_letters: list[DeadLetter] = []

    def dead(self, letter: DeadLetter, late: bool = False) -> None:
        if late:
            self.counts.late += 1
        else:
            self.counts.dead_lettered += 1
        self.dead_letters.append(letter)

    def tick(self) -> None:
        return None

    def close(self) -> None:
        _spool(self.spool, "stage1", (self.counts, self.dead_letters))


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

    def dead(self, letters: list[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class SpoolRows:
    """Keeps the feature rows and spools them when the job ends (tests, ``mlfs verify``)."""

    def __init__(self, spool: str, subtask: int = 0) -> None:
        self.spool = spool
        self.rows: list[dict[str, Any]] = []
        self.letters: list[DeadLetter] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def dead(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        _spool(self.spool, "rows", (self.rows, self.letters))


def prepare_events_function(
    plan: TransformPlan, lateness: Lateness | None, outcomes: Callable[[], OutcomeSink]
) -> Any:
    """Stage 1 as a PyFlink ``KeyedProcessFunction`` over a stream keyed by one constant (arrival
    order decides lateness). The highest event time seen and the counts live in Flink state, so a
    job restored from a checkpoint classifies and counts exactly as an uninterrupted one."""
    from pyflink.common import Row, Types
    from pyflink.datastream.functions import KeyedProcessFunction
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    offset = marker_offset_ms(plan)
    ordered: list[tuple[int, DType]] = []
    for i, feature in enumerate(plan.features):
        if is_ordered(feature.aggregation):
            assert feature.input_dtype is not None, "ordered monoids have typed inputs"
            ordered.append((i, feature.input_dtype))
    no_key = [None] * len(plan.keys)
    no_values = [None] * (len(plan.features) + len(ordered))

    # With model stages before aggregation, events wait (in Flink state) until a batch is full or
    # its oldest event has waited max_wait_ms, so the models score batches, not single events.
    batching = plan.event_stages[0].batching if plan.event_stages else None

    class PrepareEvents(KeyedProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.preparer = EventPreparer(plan)
            self.classifier = None if lateness is None else LateClassifier(lateness)
            self.outcomes = outcomes()
            descriptor = ValueStateDescriptor("stage1", Types.PICKLED_BYTE_ARRAY())
            self.state = runtime_context.get_state(descriptor)
            self.pending = runtime_context.get_list_state(
                ListStateDescriptor("pending", Types.PICKLED_BYTE_ARRAY())
            )
            self.pending_count = runtime_context.get_state(
                ValueStateDescriptor("pending_count", Types.LONG())
            )
            self.flush_due = runtime_context.get_state(ValueStateDescriptor("flush_due", Types.LONG()))
            self.chain_due = runtime_context.get_state(ValueStateDescriptor("chain_due", Types.LONG()))
            self.restored = False

        def process_element(self, raw: Any, ctx: Any) -> Iterator[Any]:
            if not self.restored and not self._restore() and lateness is not None:
                self._wake_up(ctx)  # the first event of a fresh job starts the timer chain
            if batching is None:
                yield from self._prepare_many([raw])
                return
            self.pending.add(raw)
            count = (self.pending_count.value() or 0) + 1
            self.pending_count.update(count)
            if count >= batching.max_batch_size:
                yield from self._flush()
            elif self.flush_due.value() is None:
                due = ctx.timer_service().current_processing_time() + batching.max_wait_ms
                ctx.timer_service().register_processing_time_timer(due)
                self.flush_due.update(due)
                # A bounded input ends with the final watermark: what still waits is scored then.
                ctx.timer_service().register_event_time_timer(END_OF_INPUT_MS)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            if not self.restored:
                self._restore()
            if timestamp == END_OF_INPUT_MS or timestamp == self.flush_due.value():
                yield from self._flush()
            if lateness is not None and timestamp == self.chain_due.value():
                # Timers are checkpointed with the state, so a restored job reads its counts back
                # (and publishes them) before any new event arrives, not only when the next one does.
                self._wake_up(ctx)

        def _wake_up(self, ctx: Any) -> None:
            due = ctx.timer_service().current_processing_time() + RESTORE_TIMER_MS
            ctx.timer_service().register_processing_time_timer(due)
            self.chain_due.update(due)

        def _restore(self) -> bool:
            self.restored = True
            saved = self.state.value()
            if saved is None:
                return False
            max_seen, counts = saved
            if self.classifier is not None:
                self.classifier.max_seen = max_seen
            self.outcomes.max_event_ms = max_seen
            self.outcomes.counts = EventCounts(*counts)
            return True

        def _flush(self) -> Iterator[Any]:
            raws = list(self.pending.get() or [])
            self.pending.clear()
            self.pending_count.clear()
            self.flush_due.clear()  # a timer still due finds nothing to flush
            if raws:
                yield from self._prepare_many(raws)

        def _prepare_many(self, raws: list[Any]) -> Iterator[Any]:
            """Events in arrival order: classified one by one (lateness depends on those before),
            transformed and scored as one batch, emitted in order."""
            classified: list[Any] = []
            for raw in raws:
                first = self.preparer.decode_and_time(raw)
                if isinstance(first, DeadLetter):
                    classified.append((raw, first, False))
                    continue
                event, time_ms = first
                watermark = None if self.classifier is None else self.classifier.late_watermark(time_ms)
                if watermark is not None:
                    classified.append((raw, self.preparer.late(raw, time_ms, watermark), True))
                else:
                    classified.append((raw, (event, time_ms), None))
            good = [(raw, *timed) for raw, timed, kind in classified if kind is None]
            prepared = iter(self.preparer.transform_batch(good))
            for _, outcome, late in classified:
                self.outcomes.counts.input += 1
                if late is None:
                    yield from self._emit(outcome[1], next(prepared))
                else:
                    self.outcomes.dead(outcome, late=late)
            max_seen = None if self.classifier is None else self.classifier.max_seen
            self.outcomes.max_event_ms = max_seen
            self.state.update((max_seen, dataclasses.astuple(self.outcomes.counts)))
            self.outcomes.tick()

        def _emit(self, time_ms: int, prepared: Any) -> Iterator[Any]:
            outcomes = self.outcomes
            if prepared is None or isinstance(prepared, DeadLetter):
                if prepared is None:
                    outcomes.counts.filtered += 1
                else:
                    outcomes.dead(prepared)
                # The event produced no row, but it still moves the source's watermark on.
                yield Row(HEARTBEAT, *no_key, time_ms + (offset or 0), *no_values)
                return
            outcomes.counts.aggregated += 1
            outcomes.counts.rows += len(prepared.rows)
            for key, values in prepared.rows:
                engine_values = [engine_value(v) for v in values]
                encoded = [
                    None if engine_values[i] is None else encode_ordered(time_ms, engine_values[i], dtype)
                    for i, dtype in ordered
                ]
                yield Row(ROW, *key, time_ms, *engine_values, *encoded)
                if offset is not None:
                    yield Row(MARKER, *key, time_ms + offset, *no_values)

        def close(self) -> None:
            self.outcomes.close()

    return PrepareEvents()


def subtask_index(runtime_context: Any) -> int:
    """This parallel instance's index. In thread mode PyFlink 2.3 asks the Java context for a method
    Flink 2 moved to ``TaskInfo``, so fall back to that."""
    try:
        return int(runtime_context.get_index_of_this_subtask())
    except AttributeError:
        return int(runtime_context._runtime_context.getTaskInfo().getIndexOfThisSubtask())


def buffered_sink_function(
    plan: TransformPlan, writer: Callable[[int], RowWriter], flush_ms: int = 100
) -> Any:
    """The row sink: a ``KeyedProcessFunction`` that buffers result rows in Flink state and, at most
    ``flush_ms`` later, decodes them, runs the plan's after-aggregation model stages over them as one
    batch and hands them to ``writer``. A checkpoint holds the rows not yet written, so a restored
    job writes them; rows written after the checkpoint are written again on replay, which the stores
    absorb (newer-wins online, newest created row offline)."""
    from pyflink.common import Types
    from pyflink.datastream.functions import KeyedProcessFunction
    from pyflink.datastream.state import ListStateDescriptor, ValueStateDescriptor

    class BufferedSink(KeyedProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.writer = writer(subtask_index(runtime_context))
            self.scorer = None
            if plan.row_stages:
                from transforms.inference.feature_rows import FeatureRowScorer

                self.scorer = FeatureRowScorer(plan)
            self.buffer = runtime_context.get_list_state(
                ListStateDescriptor("rows", Types.PICKLED_BYTE_ARRAY())
            )
            self.timer = runtime_context.get_state(ValueStateDescriptor("flush_at", Types.LONG()))
            self.unflushed: dict[Any, list[tuple[Any, ...]]] = {}  # what the buffer holds, for close()

        def process_element(self, value: Any, ctx: Any) -> Iterator[Any]:
            yield from ()  # a sink: PyFlink wants a generator of (no) outputs
            row = tuple(value)
            self.buffer.add(row)
            self.unflushed.setdefault(ctx.get_current_key(), []).append(row)
            if self.timer.value() is None:
                due = ctx.timer_service().current_processing_time() + flush_ms
                ctx.timer_service().register_processing_time_timer(due)
                self.timer.update(due)

        def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
            yield from ()
            rows = list(self.buffer.get() or [])
            self.buffer.clear()
            self.timer.clear()
            self.unflushed.pop(ctx.get_current_key(), None)
            self._flush(rows)

        def _flush(self, results: list[tuple[Any, ...]]) -> None:
            if not results:
                return
            rows = [feature_row(plan, r)[1] for r in results]
            if self.scorer is not None:
                rows, letters = self.scorer.score(rows)
                if letters:
                    self.writer.dead(letters)
            if rows:
                self.writer.write(rows)

        def close(self) -> None:
            self._flush([row for pending in self.unflushed.values() for row in pending])
            self.writer.close()

    return BufferedSink()


SINK_BUCKETS = 16


def sink_bucket(row: Any) -> int:
    """Which sink buffer a result row goes to: a stable hash of its first key."""
    return zlib.crc32(repr(row[0]).encode()) % SINK_BUCKETS


def flink_environment(
    parallelism: int = 2, master: str | None = None, settings: dict[str, str] | None = None
) -> tuple[Any, Any]:
    """A streaming environment (a local mini-cluster, or ``host:port`` of a remote JobManager) and
    its table environment, in UTC; ``settings`` are extra Flink configuration entries."""
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    config = Configuration()
    config.set_string("python.executable", sys.executable)
    config.set_string("python.client.executable", sys.executable)
    config.set_string("table.local-time-zone", "UTC")
    for name, value in (settings or {}).items():
        config.set_string(name, value)
    if master:
        env = _remote_environment(master, config)
    else:
        env = StreamExecutionEnvironment.get_execution_environment(config)
    env.set_parallelism(parallelism)
    t_env = StreamTableEnvironment.create(env)
    t_env.get_config().set("table.local-time-zone", "UTC")
    return env, t_env


def _remote_environment(master: str, config: Any) -> Any:
    """An environment submitting to the JobManager at ``host:port`` (its REST port), shipping the
    flink-python jar the cluster needs to run Python functions."""
    import pyflink
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.java_gateway import get_gateway

    host, _, port = master.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"a Flink master is HOST:PORT (the REST port), got {master!r}")
    gateway = get_gateway()
    jars = sorted(str(p) for p in (Path(pyflink.__file__).parent / "opt").glob("flink-python-*.jar"))
    j_jars = gateway.new_array(gateway.jvm.String, len(jars))
    for i, jar in enumerate(jars):
        j_jars[i] = jar
    java_env = gateway.jvm.org.apache.flink.streaming.api.environment.StreamExecutionEnvironment
    j_env = java_env.createRemoteEnvironment(host, int(port), config._j_configuration, j_jars)
    return StreamExecutionEnvironment(j_env)


def build_job(
    plan: TransformPlan,
    env: Any,
    t_env: Any,
    raw: Any,
    lateness: Lateness | None,
    outcomes: Callable[[], OutcomeSink],
    row_writer: Callable[[int], RowWriter],
    table: str = PREPARED,
    uid_prefix: str | None = None,
) -> None:
    """Add the view's stage 1, stage 2 and sinks to ``env``, reading raw events from ``raw``."""
    from pyflink.common import Types
    from pyflink.table import Schema

    # The workers import the user code's modules (event transform, model stages) from shipped copies.
    roots = {import_root(m) for m in map(user_module, plan_functions(plan)) if m is not None}
    for folder in sorted(roots):
        env.add_python_file(str(folder))
    columns = prepared_columns(plan)
    row_type = Types.ROW_NAMED([c[0] for c in columns], [c[1] for c in columns])
    prepared = (
        raw.key_by(lambda _: 0, key_type=Types.INT())
        .process(prepare_events_function(plan, lateness, outcomes), output_type=row_type)
        .set_parallelism(1)  # arrival order decides lateness
    )
    if uid_prefix is not None:  # stable operator ids, so a restart can restore their state
        prepared = prepared.uid(f"{uid_prefix}-stage1")
    if lateness is None:  # a bounded replay: every event counts, rows are emitted at the end
        out_of_order = BOUNDED_REPLAY_LAG_MS
    else:
        out_of_order = lateness.max_out_of_orderness_ms + lateness.allowed_lateness_ms
    # One more millisecond, so an event exactly at stage 1's bound is still ahead of Flink's watermark.
    lag = watermark_lag_ms(plan, out_of_order) + 1
    builder = Schema.new_builder()
    for name, _, data_type in columns:
        builder = builder.column(name, data_type)
    schema = (
        builder.column_by_expression("rt", "TO_TIMESTAMP_LTZ(_ts, 3)")
        .watermark("rt", f"rt - {interval(lag)}")
        .build()
    )
    # Heartbeats only carry the watermark; a filter keeps the time attribute and its watermarks.
    t_env.create_temporary_view(f"{table}_all", t_env.from_data_stream(prepared, schema))
    t_env.create_temporary_view(
        table, t_env.sql_query(f"SELECT * FROM `{table}_all` WHERE {KIND} <> {HEARTBEAT}")
    )
    result = t_env.sql_query(stage2_sql(plan, table))
    # Rows wait at most this long in the sink: the row stages' max wait, or 100 ms.
    flush_ms = plan.row_stages[0].batching.max_wait_ms if plan.row_stages else 100
    sink = (
        t_env.to_data_stream(result)
        .key_by(sink_bucket, key_type=Types.INT())
        .process(buffered_sink_function(plan, row_writer, flush_ms))
    )
    if uid_prefix is not None:
        sink.uid(f"{uid_prefix}-sink")


def run_flink(
    plan: TransformPlan,
    events: Iterable[Any],
    lateness: Lateness | None = None,
    parallelism: int = 2,
    master: str | None = None,
) -> EngineResult:
    """Run ``plan`` over finite ``events`` (in arrival order) as a Flink job; the same result type
    as the reference engine. Dicts are sent as JSON text, which is how Flink sources read events."""
    from pyflink.common import Types

    texts = [_as_text(e) for e in events]
    spool = tempfile.mkdtemp(prefix="mlfs-flink-")
    try:
        env, t_env = flink_environment(parallelism, master)
        raw = env.from_collection(texts, Types.STRING())
        outcomes = functools.partial(SpoolOutcomes, spool)
        build_job(plan, env, t_env, raw, lateness, outcomes, functools.partial(SpoolRows, spool))
        env.execute(f"mlfs-{plan.view}")
        # Python workers may close their functions just after the job reports FINISHED.
        _wait_for_spools(spool, 1 + parallelism)
        return _read_spool(plan, spool)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _wait_for_spools(spool: str, expected: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while len([n for n in os.listdir(spool) if not n.startswith(".")]) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Flink's Python workers did not report within {timeout_s:.0f}s")
        time.sleep(0.05)


def _as_text(event: Any) -> str:
    if isinstance(event, str):
        return event
    if isinstance(event, (bytes, bytearray)):
        return bytes(event).decode("utf-8", errors="replace")
    return json.dumps(event, default=str, sort_keys=True)


def _read_spool(plan: TransformPlan, spool: str) -> EngineResult:
    result = EngineResult()
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in sorted(os.listdir(spool)):
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
                held = rows.setdefault(ident, row)
                if held != row:
                    raise RuntimeError(f"Flink gave two different rows for {ident}: {held} and {row}")
    result.rows = [rows[k] for k in sorted(rows, key=repr)]
    return result


def flink_engine(plan: TransformPlan, inputs: Any, ctx: FeatureContext) -> EngineResult:
    """Engine entry point used by ``UnifiedTransformer.run`` (options: ``lateness``, ``parallelism``)."""
    return run_flink(
        plan,
        inputs,
        lateness=ctx.options.get("lateness"),
        parallelism=ctx.options.get("parallelism", 2),
        master=ctx.options.get("master"),
    )
