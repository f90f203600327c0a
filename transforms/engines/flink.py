"""The Flink engine: compiles a ``TransformPlan`` to a PyFlink job.

* Stage 1 (``flink_stage1``): a vectorised Python function runs ``transforms.events`` (the
  reference's code) over batches of raw events, and Flink SQL decides lateness in arrival order,
  counts the outcomes and unnests the typed rows (plus leave markers, see ``flink_sql``, and a
  heartbeat for an event that gives no row, so every event moves the watermark as in the
  reference). Dead letters and counts go to an ``OutcomeSink``.
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

from transforms.engines.flink_sql import PREPARED, feature_row, interval, stage2_sql, watermark_lag_ms
from transforms.engines.flink_stage1 import (
    HEARTBEAT,
    OutcomeSink,
    build_stage1,
    prepared_columns,
    table_environment,
)
from transforms.engines.reference import EngineResult
from transforms.events import DeadLetter, EventCounts, Lateness
from transforms.plan import EVENT_TIMESTAMP, FeatureContext, TransformPlan
from transforms.usercode import import_root, plan_functions, user_module

BOUNDED_REPLAY_LAG_MS = 500 * 86_400_000  # without lateness, hold the watermark back 500 days


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

    def dead(self, letters: list[DeadLetter]) -> None: ...

    def close(self) -> None: ...


class SpoolRows:
    """Keeps the feature rows and spools them when the job ends (tests, ``mlfs verify``)."""

    def __init__(self, spool: str, subtask: int = 0) -> None:
        self.spool = spool
        _opened(spool)
        self.rows: list[dict[str, Any]] = []
        self.letters: list[DeadLetter] = []

    def write(self, rows: list[dict[str, Any]]) -> None:
        self.rows.extend(rows)

    def dead(self, letters: list[DeadLetter]) -> None:
        self.letters.extend(letters)

    def close(self) -> None:
        _spool(self.spool, "rows", (self.rows, self.letters))


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
    return env, table_environment(env)


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
    prepared = build_stage1(plan, env, raw, lateness, outcomes, table)
    columns = prepared_columns(plan)
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
        table, t_env.sql_query(f"SELECT * FROM `{table}_all` WHERE _kind <> {HEARTBEAT}")
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
        _wait_for_spools(spool)
        return _read_spool(plan, spool)
    finally:
        shutil.rmtree(spool, ignore_errors=True)


def _wait_for_spools(spool: str, timeout_s: float = 60.0) -> None:
    """Wait until every instance that opened has spooled (Python workers may close their functions
    just after the job reports FINISHED)."""
    deadline = time.monotonic() + timeout_s
    while True:
        names = [n for n in os.listdir(spool) if not n.startswith(".")]
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
        return bytes(event).decode("utf-8", errors="replace")
    return json.dumps(event, default=str, sort_keys=True)


def _read_spool(plan: TransformPlan, spool: str) -> EngineResult:
    result = EngineResult()
    rows: dict[tuple[Any, ...], dict[str, Any]] = {}
    for name in sorted(os.listdir(spool)):
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
