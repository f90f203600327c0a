"""Stage 1 of the Flink engine: raw events to the typed rows of ``flink_sql``, mostly in Flink's
own operators.

* ``prepare`` is a vectorised (pandas) Python function over a batch of raw events: decode, event
  time, event transform, model stages, keys and types. Views without Python code in that stage (no
  event transform, or a ``Select``) take the Arrow kernels of ``transforms.arrow_events`` for the
  events ``transforms.json_batches`` can type; every other event runs the reference's own
  ``EventPreparer``. It keeps no state, so Flink hands it Arrow batches, not single events. A row
  function may give several rows per event, so rows come back as one array per column.
* Lateness depends on arrival order, so it is decided after ``prepare`` by a Flink SQL ``OVER``
  aggregate at parallelism 1 ordered by processing time: the highest event time so far (this event
  included) and the event's position ``_seq``, both in Flink state. An event is late when its time is
  below that maximum minus the bound. A late event never raises the maximum, so this is exactly
  ``LateClassifier``'s rule, which compares with the maximum before the event.
* The accepted rows are unnested in SQL, with leave markers and a heartbeat for an event that gives
  no row (every event moves the watermark, as in the reference). Dead letters (and late events)
  go to a Python outcome sink; the counts are one global SQL aggregate, emitted once per mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from transforms.arrow_events import split_clean
from transforms.dtypes import DType
from transforms.engines.flink_sql import encode_ordered, is_ordered, marker_offset_ms, quote
from transforms.events import DeadLetter, EventCounts, EventPreparer, Lateness
from transforms.json_batches import needed_fields, typed_batch
from transforms.plan import TransformPlan
from transforms.timeutil import engine_value

ROW, MARKER, HEARTBEAT = 0, 4, 5  # ``_kind`` of a prepared row
OK, FILTERED, DEAD = 0, 1, 2  # what ``prepare`` made of an event
COUNTS_EVERY = "1 s"  # how often the counts are emitted while events arrive


def flink_types(dtype: DType | None) -> tuple[Any, Any]:
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


def _ordered(plan: TransformPlan) -> list[tuple[int, DType]]:
    found = []
    for i, feature in enumerate(plan.features):
        if is_ordered(feature.aggregation):
            assert feature.input_dtype is not None, "ordered monoids have typed inputs"
            found.append((i, feature.input_dtype))
    return found


def row_columns(plan: TransformPlan) -> list[tuple[str, DType | None]]:
    """Stage 1's output columns, which ``prepare`` returns as one array per column (an event's rows,
    leave markers and heartbeat): ``_kind``, keys, ``_ts``, input values, ordered encodings."""
    from transforms.dtypes import Int32, Int64, String

    columns: list[tuple[str, DType | None]] = [("_kind", Int32), *plan.keys, ("_ts", Int64)]
    columns += [(f"_v{i}", f.input_dtype) for i, f in enumerate(plan.features)]
    columns += [(f"_o{i}", String) for i, _ in _ordered(plan)]
    return columns


def prepared_columns(plan: TransformPlan) -> list[tuple[str, Any, Any]]:
    """Stage 1's output columns as (name, type info, data type)."""
    return [(name, *flink_types(dtype)) for name, dtype in row_columns(plan)]


def single_row(plan: TransformPlan) -> bool:
    """Whether every event gives at most one row (no event transform, or a ``Select``). Then
    ``prepare`` returns that row (or the heartbeat) as plain columns ``_r<j>`` and SQL adds its
    leave marker; otherwise it returns every row and marker as arrays ``_a<j>``. Plain columns cost
    far less to carry between Flink's operators than arrays."""
    return plan.one_row_per_event


def _row_fields(plan: TransformPlan) -> list[str]:
    prefix = "_r" if single_row(plan) else "_a"
    return [f"{prefix}{j}" for j in range(len(row_columns(plan)))]


def prepare_result_type(plan: TransformPlan) -> Any:
    from pyflink.table import DataTypes

    fields = [
        DataTypes.FIELD("_kind", DataTypes.INT()),
        DataTypes.FIELD("_t", DataTypes.BIGINT()),
        DataTypes.FIELD("_n", DataTypes.INT()),
        DataTypes.FIELD("_letter", DataTypes.STRING()),
    ]
    for name, (_, dtype) in zip(_row_fields(plan), row_columns(plan), strict=True):
        data_type = flink_types(dtype)[1]
        fields.append(DataTypes.FIELD(name, data_type if single_row(plan) else DataTypes.ARRAY(data_type)))
    return DataTypes.ROW(fields)


def prepare_function(plan: TransformPlan, vectorised: bool = True) -> Callable[[Any], Any]:
    """The batch function behind ``prepare``: raw events (a pandas Series of text) to one result each
    (a DataFrame): what became of the event, its time, its number of rows, its dead letter, and its
    output rows (``row_columns``): plain columns for a ``single_row`` view, else arrays.

    Without Python code in the per-event stage (no event transform, or a ``Select``), the events
    ``json_batches`` can type go through the Arrow kernels of ``arrow_events`` (``vectorised``);
    the others, and every event otherwise, through the reference's ``EventPreparer``."""
    ordered = _ordered(plan)
    offset = marker_offset_ms(plan)
    n_keys = len(plan.keys)
    n_values = len(plan.features) + len(ordered)
    fields = needed_fields(plan) if vectorised else None
    single = single_row(plan)
    fields_out = _row_fields(plan)
    preparers: list[EventPreparer] = []  # made on the worker, once

    def event_rows(prepared: Any, time_ms: int) -> list[tuple[Any, ...]]:
        if prepared is None or isinstance(prepared, DeadLetter) or not prepared.rows:
            # The event gives no row, but it still moves the source's watermark on.
            return [(HEARTBEAT, *[None] * n_keys, time_ms + (offset or 0), *[None] * n_values)]
        rows = []
        for key, values in prepared.rows:
            engine_values = [engine_value(v) for v in values]
            encoded = [
                None if engine_values[i] is None else encode_ordered(time_ms, engine_values[i], dtype)
                for i, dtype in ordered
            ]
            rows.append((ROW, *key, time_ms, *engine_values, *encoded))
            if offset is not None:
                rows.append((MARKER, *key, time_ms + offset, *[None] * n_values))
        return rows

    def prepare(raws: Any) -> Any:
        import pandas as pd

        if not preparers:
            preparers.append(EventPreparer(plan))
        texts = raws.tolist()
        n = len(texts)
        kinds = [FILTERED] * n
        times: list[int | None] = [None] * n
        counts = [0] * n
        letters: list[str | None] = [None] * n
        arrays: list[list[Any]] = [[None] * n for _ in range(n_keys + n_values + 2)]
        rest = range(n) if fields is None else _prepare_vectorised(texts, kinds, times, counts, arrays)
        outcomes = preparers[0].prepare_batch_timed([texts[i] for i in rest])
        for i, (time_ms, outcome) in zip(rest, outcomes, strict=True):
            times[i] = time_ms
            if outcome is not None:
                kinds[i] = DEAD if isinstance(outcome, DeadLetter) else OK
            counts[i] = 0 if outcome is None or isinstance(outcome, DeadLetter) else len(outcome.rows)
            letters[i] = outcome.to_json() if isinstance(outcome, DeadLetter) else None
            if time_ms is None:  # undecodable, or no usable time: no rows and no watermark
                continue
            for column, values in zip(arrays, zip(*event_rows(outcome, time_ms), strict=True), strict=True):
                column[i] = values[0] if single else list(values)  # single: the row (SQL adds the marker)
        data = {
            "_kind": kinds,
            "_t": pd.Series(times, dtype="object"),
            "_n": counts,
            "_letter": pd.Series(letters, dtype="object"),
        }
        for name, column in zip(fields_out, arrays, strict=True):
            data[name] = pd.Series(column, dtype="object")
        return pd.DataFrame(data)

    def _prepare_vectorised(
        texts: list[str],
        kinds: list[int],
        times: list[int | None],
        counts: list[int],
        arrays: list[list[Any]],
    ) -> list[int]:
        """Fill in the events the Arrow kernels prepare (one row each, as plain columns); returns the
        positions left to the row path."""
        assert fields is not None and single
        typed = typed_batch(fields, texts)
        split = split_clean(plan, typed.batch) if typed.positions else None
        if split is None:
            return list(range(len(texts)))
        positions = typed.positions
        clean = [positions[j] for j in split.clean_mask.to_numpy(zero_copy_only=False).nonzero()[0]]
        dropped = [positions[j] for j in split.filtered_mask.to_numpy(zero_copy_only=False).nonzero()[0]]
        if dropped:  # a Select's where= dropped them: heartbeats, as event_rows gives
            dropped_ms = typed.batch.column(0).filter(split.filtered_mask).cast("int64").to_pylist()
            for i, time_ms in zip(dropped, dropped_ms, strict=True):
                times[i] = time_ms
                arrays[0][i] = HEARTBEAT
                arrays[n_keys + 1][i] = time_ms + (offset or 0)
        row_ms = split.clean["_ts"].to_pylist()
        columns = [split.clean[name].to_pylist() for name in plan.key_names]
        columns.append(row_ms)
        columns += [split.clean[f"_v{k}"].to_pylist() for k in range(len(plan.features))]
        for k, dtype in ordered:
            values = columns[n_keys + 1 + k]
            columns.append(
                [
                    None if v is None else encode_ordered(t, v, dtype)
                    for t, v in zip(row_ms, values, strict=True)
                ]
            )
        elements = [[ROW] * len(clean), *columns]  # per column of ``arrays``, each clean event's row
        targets: list[list[Any]] = [kinds, times, counts, *arrays]
        for target, values in zip(
            targets,
            [[OK] * len(clean), row_ms, [1] * len(clean), *elements],
            strict=True,
        ):
            if len(clean) == len(texts):
                target[:] = values
            else:
                for i, v in zip(clean, values, strict=True):
                    target[i] = v
        return sorted(set(range(len(texts))) - set(clean) - set(dropped))

    return prepare


class OutcomeSink(Protocol):
    """Where a view's dead letters and counts go (opened on a Flink worker; one instance receives
    the dead letters, another the counts)."""

    def dead(self, letter: DeadLetter, late: bool, seq: int) -> None:
        """A dead letter; ``seq`` is the event's 1-based position in the source (checkpointed, so a
        letter written again after a restart is recognisable)."""

    def update(self, counts: EventCounts, max_event_ms: int | None) -> None:
        """The counts so far (they only grow) and the highest event time seen."""

    def close(self) -> None: ...


def prepared_sql(plan: TransformPlan, classified: str) -> str:
    """Stage 1's output: the rows, markers and heartbeats of the events that are not late, in the
    order of the events (one unnesting, so nothing reorders them)."""
    columns = row_columns(plan)
    if not single_row(plan):
        items = ", ".join(f"_a{j}[_i] AS {quote(name)}" for j, (name, _) in enumerate(columns))
        return (
            f"SELECT {items} FROM {quote(classified)} CROSS JOIN UNNEST(_a0) WITH ORDINALITY AS r(_x, _i) "
            "WHERE _late = 0"
        )
    offset = marker_offset_ms(plan)
    n_keys = len(plan.keys)
    if offset is None:
        items = ", ".join(f"_r{j} AS {quote(name)}" for j, (name, _) in enumerate(columns))
        return f"SELECT {items} FROM {quote(classified)} WHERE _late = 0 AND _r0 IS NOT NULL"
    # Each row, then its leave marker (``_m`` = 2): same keys, ``offset`` later, no values.
    listed = [f"CASE WHEN _m = 1 THEN _r0 ELSE {MARKER} END AS `_kind`"]
    listed += [f"_r{j} AS {quote(name)}" for j, (name, _) in enumerate(columns[1 : n_keys + 1], start=1)]
    listed.append(f"CASE WHEN _m = 1 THEN _r{n_keys + 1} ELSE _r{n_keys + 1} + {offset} END AS `_ts`")
    listed += [
        f"CASE WHEN _m = 1 THEN _r{j} END AS {quote(name)}"
        for j, (name, _) in enumerate(columns[n_keys + 2 :], start=n_keys + 2)
    ]
    # The array depends on the row, so this stays a correlated unnest (a constant array would make
    # the planner join with a constant table, which keeps every event in state).
    return (
        f"SELECT {', '.join(listed)} FROM {quote(classified)} "
        f"CROSS JOIN UNNEST(CASE WHEN _r0 = {ROW} THEN ARRAY[1, 2] ELSE ARRAY[1] END) AS m(_m) "
        "WHERE _late = 0 AND _r0 IS NOT NULL"
    )


def _outcome_fields(plan: TransformPlan) -> list[str]:
    """The fields of ``prepare``'s result (``prepare_result_type``)."""
    return ["_kind", "_t", "_n", "_letter", *_row_fields(plan)]


def events_sql(plan: TransformPlan, raw: str, function: str) -> str:
    """Each raw event with what ``prepare`` made of it."""
    items = ", ".join(f"p.{quote(name)} AS {quote(name)}" for name in _outcome_fields(plan))
    return f"SELECT _raw, {items}, _pt FROM (SELECT f0 AS _raw, {function}(f0) AS p, _pt FROM {quote(raw)})"


def classified_sql(plan: TransformPlan, events: str, lateness: Lateness | None) -> str:
    """Each event with its position ``_seq``, the highest event time so far ``_max`` (this event
    included) and whether it is late (``_late``, 0 or 1)."""
    if lateness is None:  # a bounded replay: nothing is late
        late = "0"
    else:
        bound = lateness.max_out_of_orderness_ms + lateness.allowed_lateness_ms
        late = f"CASE WHEN _t < _max - {bound} THEN 1 ELSE 0 END"
    listed = ", ".join(quote(name) for name in ["_raw", *_outcome_fields(plan)])
    return (
        f"SELECT {listed}, _max, _seq, {late} AS _late FROM ("
        f"SELECT {listed}, MAX(_t) OVER w AS _max, COUNT(*) OVER w AS _seq FROM {quote(events)} "
        "WINDOW w AS (ORDER BY _pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))"
    )


def letters_sql(classified: str) -> str:
    """The events that become dead letters: late, or rejected by ``prepare``."""
    return (
        f"SELECT _seq, _late, _t, _max, _raw, _letter FROM {quote(classified)} "
        "WHERE _late = 1 OR _letter IS NOT NULL"
    )


def counts_sql(classified: str) -> str:
    """The four outcomes and the rows so far, and the highest event time (one global aggregate)."""
    accepted = "_late = 0 AND _kind"
    return (
        "SELECT COUNT(*) AS `input`, "
        f"CAST(SUM(CASE WHEN {accepted} = {OK} THEN 1 ELSE 0 END) AS BIGINT) AS aggregated, "
        f"CAST(SUM(CASE WHEN {accepted} = {FILTERED} THEN 1 ELSE 0 END) AS BIGINT) AS filtered, "
        f"CAST(SUM(CASE WHEN {accepted} = {DEAD} THEN 1 ELSE 0 END) AS BIGINT) AS dead_lettered, "
        "CAST(SUM(_late) AS BIGINT) AS late, "
        f"CAST(SUM(CASE WHEN {accepted} = {OK} THEN _n ELSE 0 END) AS BIGINT) AS `rows`, "
        f"MAX(_max) AS max_seen FROM {quote(classified)}"
    )


def dead_letters_function(
    plan: TransformPlan, lateness: Lateness | None, outcomes: Callable[[], OutcomeSink]
) -> Any:
    """A Python function over ``letters_sql``'s rows: late events become late dead letters (against
    the watermark they missed), the others are ``prepare``'s letters; all go to an outcome sink."""
    from pyflink.datastream.functions import ProcessFunction

    class DeadLetters(ProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.preparer = EventPreparer(plan)
            self.sink = outcomes()

        def process_element(self, value: Any, ctx: Any) -> Any:
            yield from ()  # a sink
            seq, late, time_ms, max_seen, raw, text = tuple(value)
            if late:
                assert lateness is not None, "nothing is late without lateness"
                letter = self.preparer.late(raw, time_ms, max_seen - lateness.max_out_of_orderness_ms)
            else:
                letter = DeadLetter.from_json(text)
            self.sink.dead(letter, bool(late), seq)

        def close(self) -> None:
            self.sink.close()

    return DeadLetters()


def counts_function(outcomes: Callable[[], OutcomeSink]) -> Any:
    """A Python function over ``counts_sql``'s changelog: each new total goes to an outcome sink."""
    from pyflink.common import RowKind
    from pyflink.datastream.functions import ProcessFunction

    class Counts(ProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.sink = outcomes()

        def process_element(self, value: Any, ctx: Any) -> Any:
            yield from ()  # a sink
            if value.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
                return
            total, aggregated, filtered, dead, late, rows, max_seen = tuple(value)
            counts = EventCounts(
                input=total,
                aggregated=aggregated,
                filtered=filtered,
                dead_lettered=dead,
                late=late,
                rows=rows,
            )
            self.sink.update(counts, max_seen)

        def close(self) -> None:
            self.sink.close()

    return Counts()


def table_environment(env: Any, settings: dict[str, str] | None = None) -> Any:
    """A table environment over ``env`` in UTC, with extra table ``settings``."""
    from pyflink.table import StreamTableEnvironment

    t_env = StreamTableEnvironment.create(env)
    config = t_env.get_config()
    config.set("table.local-time-zone", "UTC")
    for name, value in (settings or {}).items():
        config.set(name, value)
    return t_env


# Stage 1 runs at parallelism 1 (arrival order decides lateness); Python gets batches of up to
# ``arrow.batch.size`` events, at least every ``bundle.time``.
STAGE1_SETTINGS = {
    "table.exec.resource.default-parallelism": "1",
    "python.fn-execution.bundle.time": "100",
    "python.fn-execution.arrow.batch.size": "5000",
}
COUNTS_SETTINGS = {
    "table.exec.resource.default-parallelism": "1",
    "table.exec.mini-batch.enabled": "true",
    "table.exec.mini-batch.allow-latency": COUNTS_EVERY,
    "table.exec.mini-batch.size": "1000000",
}


def build_stage1(
    plan: TransformPlan,
    env: Any,
    raw: Any,
    lateness: Lateness | None,
    outcomes: Callable[[], OutcomeSink],
    name: str,
) -> Any:
    """Add stage 1 for ``plan`` over the raw events ``raw`` to ``env``; returns the DataStream of
    prepared rows (``prepared_columns``), in the order stage 1 accepted the events. Its state
    lives in the SQL operators, whose ids derive from the job's shape, so a restarted job of the
    same views restores it."""
    from pyflink.table import DataTypes, Schema
    from pyflink.table.udf import udf

    t_env = table_environment(env, STAGE1_SETTINGS)
    function = f"{name}_prepare"
    t_env.create_temporary_function(
        function, udf(prepare_function(plan), result_type=prepare_result_type(plan), func_type="pandas")
    )
    schema = Schema.new_builder().column("f0", DataTypes.STRING()).column_by_expression("_pt", "PROCTIME()")
    t_env.create_temporary_view(f"{name}_raw", t_env.from_data_stream(raw, schema.build()))
    t_env.create_temporary_view(f"{name}_events", t_env.sql_query(events_sql(plan, f"{name}_raw", function)))
    classified = t_env.to_data_stream(t_env.sql_query(classified_sql(plan, f"{name}_events", lateness)))
    # Every consumer starts from this one stream, so ``prepare`` and the classification run once.
    t_env.create_temporary_view(f"{name}_classified", t_env.from_data_stream(classified))
    letters = t_env.to_data_stream(t_env.sql_query(letters_sql(f"{name}_classified")))
    letters.process(dead_letters_function(plan, lateness, outcomes)).name(f"{name}-dead-letters")
    counts_env = table_environment(env, COUNTS_SETTINGS)
    counts_env.create_temporary_view(f"{name}_classified", counts_env.from_data_stream(classified))
    counts = counts_env.to_changelog_stream(counts_env.sql_query(counts_sql(f"{name}_classified")))
    counts.process(counts_function(outcomes)).name(f"{name}-counts")
    return t_env.to_data_stream(t_env.sql_query(prepared_sql(plan, f"{name}_classified")))
