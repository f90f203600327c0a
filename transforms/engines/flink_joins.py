"""The Flink engine's joins (DESIGN §2b): a view with joins gets stage 1 of its own, whose joins run
in Flink's event-time operators and whose join rules are the reference's (``transforms.joining``).

* Each source the view reads (its own, and each interval join's other source) is decoded and timed
  by a vectorised Python function per source partition, and classified for lateness on each
  partition's arrival order by the same SQL as the rest of stage 1
  (``flink_stage1.classified_columns_sql``); its dead letters and counts go to its outcome sink (a
  joined source's letters name it). Each table of a source's events takes the source's watermark
  (``flink_stage1.partition_watermarks``: the lowest partition's) shifted as its event time is.
* Flink's operators find each event's candidates: for an interval join, every other-source event
  with the same join values in ``[a.t - before, a.t + S_j + after]`` (a SQL interval join; ``S_j``,
  the ``after`` of the interval joins before it, bounds how far earlier joins move the joined
  event's time); for a lookup, the looked-up view's latest row at or before ``a.t`` (``< a.t`` when
  exclusive: an event-time temporal join against the rows as a versioned view) and its rows up to
  ``a.t + S_j``. Both emit once the other side's watermark allows.
* A one-millisecond tumbling window at ``a.t + S`` (``S``: every interval join's ``after``) gathers
  each event with its candidates once every side's watermark has passed them, and a Python function
  joins them by the reference's ``EventJoiner`` (``of_candidates``) and runs the per-event stage
  (transform, model stages, typing). Its rows go to stage 2 with a watermark ``S`` further behind:
  the window emits events in time order, and a joined event is at most ``S`` after its event.

State is bounded by the join bounds and the sources' lateness: Flink's interval join drops an event
once the other side's watermark passes its range, the temporal join keeps each key's rows until the
watermark passes them, and the window keeps an event until ``a.t + S``; all of it is in checkpoints.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np

from transforms.dtypes import CoercionError, DType
from transforms.engines.flink_sql import interval, quote, source_lag_ms
from transforms.engines.flink_stage1 import (
    COUNTS_SETTINGS,
    DEAD,
    FILTERED,
    HEARTBEAT,
    OK,
    STAGE1_SETTINGS,
    OutcomeSink,
    RowMaker,
    classified_columns_sql,
    counts_function,
    counts_sql,
    dead_letters_function,
    decoded_sql,
    flink_types,
    letters_sql,
    partition_watermarks,
    prepared_sql,
    raw_tables,
    row_columns,
    table_environment,
)
from transforms.events import DeadLetter, EventPreparer, Lateness, PreparedEvent
from transforms.joining import (
    EventJoiner,
    LookupRow,
    OtherEvent,
    join_key,
    joined_outcome,
    lookup_key,
    other_event,
    other_plan,
)
from transforms.joins import IntervalJoin, Lookup
from transforms.plan import TransformPlan
from transforms.timeutil import datetime_to_ms, ms_to_datetime

PENDING = 3  # an event of the view's own source that passed stage 1: its joins decide its outcome
_OBJECT = np.dtype(object)


def join_settings(env: Any) -> dict[str, str]:
    """The table settings of a joined view's stage 1: stage 1's, at the job's parallelism. Lateness
    is decided per source partition (an ``OVER`` keyed by partition); Flink's joins (keyed by the
    join values) and the gathering window and the joining function (keyed by event) run in
    parallel. Each instance of the window emits its events in time order, which each channel of
    stage 2's watermark relies on."""
    return {**STAGE1_SETTINGS, "table.exec.resource.default-parallelism": str(env.get_parallelism())}


def key_text(key: tuple[Any, ...] | None) -> str | None:
    """Join values as the text both sides of a Flink join compare (JSON: ``"3"`` differs from
    ``3``); None when there are none."""
    return None if key is None else json.dumps([_plain(v) for v in key], separators=(",", ":"))


def _plain(value: Any) -> Any:
    """A value as JSON carries it: a time as ``{"ms": ...}`` (``_restored`` turns it back)."""
    if isinstance(value, datetime):
        return {"ms": datetime_to_ms(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        return ms_to_datetime(value["ms"])
    if isinstance(value, list):
        return [_restored(v) for v in value]
    return value


def values_text(values: tuple[Any, ...]) -> str:
    """Carried values (a partner's fields, a looked-up row's features) as JSON text."""
    return json.dumps([_plain(v) for v in values], separators=(",", ":"))


@dataclass(frozen=True)
class LookedUp:
    """A looked-up view as a joined view's stage 1 reads it: its rows (a DataStream of
    ``lookup_row_type``: key text, feature time, features as JSON text), its keys, and how far its
    watermark trails its rows (None: the stream carries its own watermarks)."""

    rows: Any
    keys: tuple[tuple[str, DType], ...]
    lag_ms: int | None


@dataclass(frozen=True)
class JoinSides:
    """What a view's joins read in a Flink job: its interval joins' other sources (by name), the
    rows of each lookup (by its position in the view's joins: two lookups of one view read
    different features), and where the outcomes of the joins go (None: the view's own sink)."""

    sources: dict[str, JoinedSource]
    lookups: dict[int, LookedUp]
    finished: Callable[[], OutcomeSink] | None = None


@dataclass(frozen=True)
class JoinedSource:
    """An interval join's other source in a Flink job: its raw events (a DataStream of text), its
    lateness (None: a bounded replay) and its outcome sink."""

    raws: Sequence[Any]  # a DataStream of text per source partition
    lateness: Lateness | None
    outcomes: Callable[[], OutcomeSink]


def lookup_row_type() -> Any:
    from pyflink.common import Types

    return Types.ROW_NAMED(["_j", "_ts", "_f"], [Types.STRING(), Types.LONG(), Types.STRING()])


def lookup_row_values(rows: list[LookupRow]) -> list[tuple[str, int, str]]:
    """A looked-up view's rows as ``LookedUp.rows`` carries them."""
    return [text for row in rows if (text := lookup_row_text(row)) is not None]


def lookup_row_text(row: LookupRow) -> tuple[str, int, str] | None:
    """One looked-up row as ``LookedUp.rows`` carries it: key text, time, features as JSON text
    (None: a key with a null, which no event looks up)."""
    key, time_ms, values = row
    text = key_text(key)
    return None if text is None or None in key else (text, time_ms, values_text(values))


def _own_fields(plan: TransformPlan) -> list[str]:
    return ["_t", "_k0", "_n0", "_l0", *(f"_j{j}" for j in range(len(plan.joins)))]


def own_events_function(
    plan: TransformPlan, lookup_keys: dict[str, tuple[tuple[str, DType], ...]]
) -> Callable[[Any], Any]:
    """The view's own events (a pandas Series of text) decoded and timed: time, kind (DEAD or
    PENDING), dead letter, and each join's values as ``key_text`` (null when null or of a type that
    does not join: the joins themselves decide what that makes of the event)."""
    preparers: list[EventPreparer] = []
    fields = {
        position: [(event_field, dict(lookup_keys[join.view])[key]) for event_field, key in join.on]
        for position, join in enumerate(plan.joins)
        if isinstance(join, Lookup)
    }

    def keys_of(event: dict[str, Any]) -> list[str | None]:
        found: list[str | None] = []
        for position, join in enumerate(plan.joins):
            try:
                if isinstance(join, Lookup):
                    key: tuple[Any, ...] | None = lookup_key(join, fields[position], event)
                else:
                    key = join_key(join, event, 0)
            except CoercionError:
                key = None
            found.append(None if key is None or None in key else key_text(key))
        return found

    def decode(raws: Any) -> Any:
        import pandas as pd

        if not preparers:
            preparers.append(EventPreparer(plan))
        columns: list[list[Any]] = [[] for _ in _own_fields(plan)]
        for raw in raws.tolist():
            first = preparers[0].decode_and_time(raw)
            if isinstance(first, DeadLetter):
                values: list[Any] = [None, DEAD, 0, first.to_json(), *[None] * len(plan.joins)]
            else:
                event, time_ms = first
                values = [time_ms, PENDING, 0, None, *keys_of(event)]
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return pd.DataFrame(
            {name: pd.Series(c, dtype=_OBJECT) for name, c in zip(_own_fields(plan), columns, strict=True)}
        )

    return decode


def own_result_type(plan: TransformPlan) -> Any:
    from pyflink.table import DataTypes

    types = [DataTypes.BIGINT(), DataTypes.INT(), DataTypes.INT(), DataTypes.STRING()]
    types += [DataTypes.STRING()] * len(plan.joins)
    return DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in zip(_own_fields(plan), types, strict=True)])


OTHER_FIELDS = ["_t", "_k0", "_n0", "_l0", "_j", "_f"]


def other_events_function(plan: TransformPlan, join: IntervalJoin) -> Callable[[Any], Any]:
    """An interval join's other-source events (a pandas Series of text) as the reference reads them
    (``joining.other_event``): time, kind (OK: a partner, FILTERED: a null join value, DEAD), dead
    letter (on that source), join values (``key_text``) and carried fields (``values_text``)."""
    preparers: list[EventPreparer] = []

    def decode(raws: Any) -> Any:
        import pandas as pd

        if not preparers:
            preparers.append(EventPreparer(other_plan(plan, join)))
        columns: list[list[Any]] = [[] for _ in OTHER_FIELDS]
        for raw in raws.tolist():
            outcome = other_event(preparers[0], join, raw)
            if isinstance(outcome, DeadLetter):
                time_ms = None if outcome.event_time is None else datetime_to_ms(outcome.event_time)
                values: list[Any] = [time_ms, DEAD, 0, outcome.to_json(), None, None]
            elif outcome is None:  # a null join value: the event was decoded and timed
                first = preparers[0].decode_and_time(raw)
                assert not isinstance(first, DeadLetter)
                values = [first[1], FILTERED, 0, None, None, None]
            else:
                key, time_ms, carried = outcome
                values = [time_ms, OK, 0, None, key_text(key), values_text(carried)]
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        return pd.DataFrame(
            {n: pd.Series(c, dtype=_OBJECT) for n, c in zip(OTHER_FIELDS, columns, strict=True)}
        )

    return decode


def other_result_type() -> Any:
    from pyflink.table import DataTypes

    types = [DataTypes.BIGINT(), DataTypes.INT(), DataTypes.INT(), DataTypes.STRING()]
    types += [DataTypes.STRING(), DataTypes.STRING()]
    return DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in zip(OTHER_FIELDS, types, strict=True)])


def _finished_fields(plan: TransformPlan) -> list[str]:
    return ["_k0", "_n0", "_l0", *(f"_a0_{j}" for j in range(len(row_columns(plan))))]


def finished_result_type(plan: TransformPlan) -> Any:
    from pyflink.table import DataTypes

    types = [DataTypes.INT(), DataTypes.INT(), DataTypes.STRING()]
    types += [DataTypes.ARRAY(flink_types(dtype)[1]) for _, dtype in row_columns(plan)]
    return DataTypes.ROW([DataTypes.FIELD(n, t) for n, t in zip(_finished_fields(plan), types, strict=True)])


def finish_function(
    plan: TransformPlan, lookup_keys: dict[str, tuple[tuple[str, DType], ...]]
) -> Callable[..., Any]:
    """Each event with its candidates (``_items``: one JSON line each, ``[join, key, time,
    values]`` and a partner's ``_seq`` on its source) to its outcome: the reference's joins
    (``EventJoiner.of_candidates``) and per-event stage, as kind, number of rows, dead letter and
    the rows (arrays of ``row_columns``)."""
    maker = RowMaker(plan)
    n_columns = len(row_columns(plan))
    n_keys = len(plan.keys)
    preparers: list[EventPreparer] = []

    def finish(times: Any, raws: Any, items: Any) -> Any:
        import pandas as pd

        if not preparers:
            preparers.append(EventPreparer(plan))
        preparer = preparers[0]
        rows: dict[int, list[LookupRow]] = {}
        partners: dict[int, dict[int, OtherEvent]] = {}  # by position, by the partner's ``_seq``
        for text in items.tolist():
            for line in (text or "").splitlines():
                position, key, time_ms, values, *seq = json.loads(line)
                found = (tuple(key), time_ms, tuple(_restored(v) for v in values))
                if seq:  # one partner may be a candidate of several events of the batch
                    partners.setdefault(position, {})[seq[0]] = found
                else:
                    rows.setdefault(position, []).append(found)
        by_position = {position: list(found.values()) for position, found in partners.items()}
        joiner = EventJoiner.of_candidates(plan, lookup_keys, rows, by_position)
        texts = raws.tolist()
        event_times = times.tolist()
        joined: list[Any] = []
        for raw, time_ms in zip(texts, event_times, strict=True):
            first = preparer.decode_and_time(raw)
            assert not isinstance(first, DeadLetter), "stage 1 passed only good events"
            joined.append(joiner.join(raw, first[0], int(time_ms)))
        flat = [
            (raw, e, t) for raw, j in zip(texts, joined, strict=True) if isinstance(j, list) for e, t in j
        ]
        transformed = iter(preparer.transform_batch(flat))
        kinds, counts, letters = [], [], []
        columns: list[list[Any]] = [[] for _ in range(n_columns)]
        for j, time_ms in zip(joined, event_times, strict=True):
            outcome: list[PreparedEvent] | DeadLetter | None = (
                j if isinstance(j, DeadLetter) else joined_outcome([next(transformed) for _ in j])
            )
            kinds.append(DEAD if isinstance(outcome, DeadLetter) else OK if outcome else FILTERED)
            letters.append(outcome.to_json() if isinstance(outcome, DeadLetter) else None)
            made = (
                [r for one in outcome for r in maker.rows(one, one.time_ms)]
                if isinstance(outcome, list)
                else []
            )
            counts.append(sum(len(one.rows) for one in outcome) if isinstance(outcome, list) else 0)
            if not made:  # no row: a heartbeat still moves stage 2's watermark
                beat: list[Any] = [None] * n_columns
                beat[0], beat[n_keys + 1] = HEARTBEAT, maker.heartbeat_ms(int(time_ms))
                made = [tuple(beat)]
            for column, values in zip(columns, zip(*made, strict=True), strict=True):
                column.append(list(values))
        data = {"_k0": kinds, "_n0": counts, "_l0": pd.Series(letters, dtype=_OBJECT)}
        for name, column in zip(_finished_fields(plan)[3:], columns, strict=True):
            data[name] = pd.Series(column, dtype=_OBJECT)
        return pd.DataFrame(data)

    return finish


def join_shifts(plan: TransformPlan) -> tuple[list[int], int]:
    """How far the joins before each join can move an event's time (``S_j``), and all of them
    (``S``): the sum of the ``after`` of the interval joins before it."""
    shifts, total = [], 0
    for join in plan.joins:
        shifts.append(total)
        if isinstance(join, IntervalJoin):
            total += join.after_ms
    return shifts, total


def _decoded_table(t_env: Any, raws: Sequence[Any], name: str, function: str, fields: list[str]) -> None:
    """Register ``<name>_events``: each raw event ``_raw`` (of ``raws``, a DataStream per source
    partition) with ``function``'s ``fields``, its partition ``_part`` and processing time ``_pt``."""
    tables = raw_tables(t_env, raws, name)
    t_env.create_temporary_view(f"{name}_events", t_env.sql_query(decoded_sql(fields, tables, function)))


def _classify(
    env: Any,
    t_env: Any,
    name: str,
    fields: list[str],
    plan: TransformPlan,
    lateness: Lateness | None,
    outcomes: Callable[[], OutcomeSink],
    source: str | None,
) -> Any:
    """Classify ``<name>_events`` for lateness, per source partition; send its dead letters and
    counts to ``outcomes``; returns the classified events as a DataStream."""
    columns = ["_raw", *fields, "_part"]
    classified = t_env.to_data_stream(
        t_env.sql_query(classified_columns_sql(columns, f"{name}_events", lateness, "_part"))
    )
    t_env.create_temporary_view(f"{name}_classified", t_env.from_data_stream(classified))
    letters = t_env.to_data_stream(t_env.sql_query(letters_sql(1, f"{name}_classified")))
    letters.process(dead_letters_function([plan], lateness, [outcomes], source)).name(
        f"{name}-dead-letters"
    ).set_parallelism(1)
    counts_env = table_environment(env, COUNTS_SETTINGS)
    counts_env.create_temporary_view(f"{name}_classified", counts_env.from_data_stream(classified))
    counts = counts_env.to_changelog_stream(counts_env.sql_query(counts_sql(1, f"{name}_classified")))
    counts.process(counts_function([outcomes])).name(f"{name}-counts")
    return classified


def _timed(t_env: Any, stream: Any, columns: list[tuple[str, Any]], time_sql: str, lag_ms: int | None) -> Any:
    """A table over ``stream`` with event time ``rt`` = ``time_sql`` (milliseconds) and a watermark
    ``lag_ms`` behind the latest (None: the stream's own watermarks)."""
    from pyflink.table import Schema

    builder = Schema.new_builder()
    for name, data_type in columns:
        builder = builder.column(name, data_type)
    builder = builder.column_by_expression("rt", f"TO_TIMESTAMP_LTZ({time_sql}, 3)")
    watermark = "SOURCE_WATERMARK()" if lag_ms is None else f"rt - {interval(lag_ms)}"
    return t_env.from_data_stream(stream, builder.watermark("rt", watermark).build())


def build_joined_stage1(
    plan: TransformPlan,
    env: Any,
    raws: Sequence[Any],
    lateness: Lateness | None,
    outcomes: Callable[[], OutcomeSink],
    sides: JoinSides,
    name: str,
) -> tuple[Any, Lateness | None]:
    """Stage 1 of a view with joins over its raw events ``raws`` (a DataStream of text per source
    partition): returns its prepared rows (a DataStream of ``prepared_columns``) and the lateness
    stage 2 must allow them (None: a bounded replay). Each table of its own or another source's
    events takes its watermark from ``partition_watermarks``, shifted as its event time is."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    t_env = table_environment(env, join_settings(env))
    sources, lookups = sides.sources, sides.lookups
    lookup_keys = {
        join.view: lookups[position].keys
        for position, join in enumerate(plan.joins)
        if isinstance(join, Lookup)
    }
    own = f"{name}_own"
    t_env.create_temporary_function(
        f"{own}_decode",
        udf(own_events_function(plan, lookup_keys), result_type=own_result_type(plan), func_type="pandas"),
    )
    _decoded_table(t_env, raws, own, f"{own}_decode", _own_fields(plan))
    classified = _classify(env, t_env, own, _own_fields(plan), plan, lateness, outcomes, None)
    t_env.create_temporary_view(f"{own}_all", t_env.from_data_stream(classified))
    key_columns = [f"_j{j}" for j in range(len(plan.joins))]
    clean = t_env.to_data_stream(
        t_env.sql_query(
            f"SELECT _seq, _t, _raw, {', '.join(key_columns)}, _part, _max FROM {quote(own + '_all')} "
            f"WHERE _late = 0 AND _k0 = {PENDING}"
        )
    )
    own_lag = source_lag_ms(lateness)
    own_columns = [("_seq", DataTypes.BIGINT()), ("_t", DataTypes.BIGINT()), ("_raw", DataTypes.STRING())]
    own_columns += [(c, DataTypes.STRING()) for c in key_columns]
    own_columns += [("_part", DataTypes.INT()), ("_max", DataTypes.BIGINT())]
    own_fields = [column for column, _ in own_columns]

    def own_watermarked(lag_ms: int, what: str) -> Any:
        return partition_watermarks(clean, own_fields, len(raws), lag_ms, what)

    shifts, total = join_shifts(plan)
    candidates = []
    for position, join in enumerate(plan.joins):
        side = f"{name}_j{position}"
        exclusive = isinstance(join, Lookup) and join.exclusive
        events_time = "_t - 1" if exclusive else "_t"
        own_side = own_watermarked(own_lag + (1 if exclusive else 0), f"{side}_a")
        t_env.create_temporary_view(f"{side}_a", _timed(t_env, own_side, own_columns, events_time, None))
        if isinstance(join, IntervalJoin):
            other = _other_source(plan, join, env, t_env, sources[join.source_name], f"{side}_b")
            found = (
                f"SELECT a._seq AS _seq, a._t AS _t, CONCAT('[{position},', b._j, ',', "
                f"CAST(b._t AS STRING), ',', b._f, ',', CAST(b._seq AS STRING), ']') AS _item "
                f"FROM {quote(side + '_a')} a JOIN {quote(other)} b ON a._j{position} = b._j "
                f"AND b.rt BETWEEN a.rt - {interval(join.before_ms)} "
                f"AND a.rt + {interval(shifts[position] + join.after_ms)}"
            )
            candidates.append(t_env.sql_query(found))
            continue
        looked = lookups[position]
        row_columns_ = [("_j", DataTypes.STRING()), ("_ts", DataTypes.BIGINT()), ("_f", DataTypes.STRING())]
        t_env.create_temporary_view(
            f"{side}_r", _timed(t_env, looked.rows, row_columns_, "_ts", looked.lag_ms)
        )
        t_env.create_temporary_view(
            f"{side}_v",
            t_env.sql_query(
                f"SELECT _j, _ts, _f, rt FROM (SELECT *, ROW_NUMBER() OVER "
                f"(PARTITION BY _j ORDER BY rt DESC) AS _rn FROM {quote(side + '_r')}) WHERE _rn = 1"
            ),
        )
        item = f"CONCAT('[{position},', r._j, ',', CAST(r._ts AS STRING), ',', r._f, ']') AS _item"
        candidates.append(
            t_env.sql_query(
                f"SELECT a._seq AS _seq, a._t AS _t, {item} FROM {quote(side + '_a')} a "
                f"JOIN {quote(side + '_v')} FOR SYSTEM_TIME AS OF a.rt AS r ON a._j{position} = r._j"
            )
        )
        if shifts[position]:  # the rows an event moved later by the joins before may see
            candidates.append(
                t_env.sql_query(
                    f"SELECT a._seq AS _seq, a._t AS _t, {item} FROM {quote(side + '_a')} a "
                    f"JOIN {quote(side + '_r')} r ON a._j{position} = r._j "
                    f"AND r.rt BETWEEN a.rt AND a.rt + {interval(shifts[position])}"
                )
            )
    base = own_watermarked(own_lag - total, f"{name}_base")  # its events at ``_t + total``
    gathered = _gather(t_env, base, own_columns[:3], candidates, total, name)
    finished = _finish(plan, env, gathered, lookup_keys, sides.finished or outcomes, name)
    stage2_lateness = None if lateness is None else Lateness(total, 0)
    return finished, stage2_lateness


def _other_source(
    plan: TransformPlan, join: IntervalJoin, env: Any, t_env: Any, source: JoinedSource, name: str
) -> str:
    """Decode, time and classify an interval join's other source; returns the name of the view of
    its partners (``_t``, ``_j``, ``_f``, event time ``rt``)."""
    from pyflink.table import DataTypes
    from pyflink.table.udf import udf

    t_env.create_temporary_function(
        f"{name}_decode",
        udf(other_events_function(plan, join), result_type=other_result_type(), func_type="pandas"),
    )
    _decoded_table(t_env, source.raws, name, f"{name}_decode", OTHER_FIELDS)
    reader = other_plan(plan, join)
    classified = _classify(
        env, t_env, name, OTHER_FIELDS, reader, source.lateness, source.outcomes, join.source_name
    )
    t_env.create_temporary_view(f"{name}_all", t_env.from_data_stream(classified))
    partners = t_env.to_data_stream(
        t_env.sql_query(
            f"SELECT _seq, _t, _j, _f, _part, _max FROM {quote(name + '_all')} WHERE _late = 0 AND _k0 = {OK}"
        )
    )
    columns = [("_seq", DataTypes.BIGINT()), ("_t", DataTypes.BIGINT())]
    columns += [("_j", DataTypes.STRING()), ("_f", DataTypes.STRING())]
    columns += [("_part", DataTypes.INT()), ("_max", DataTypes.BIGINT())]
    fields = [column for column, _ in columns]
    lag = source_lag_ms(source.lateness)
    watermarked = partition_watermarks(partners, fields, len(source.raws), lag, f"{name}_partners")
    t_env.create_temporary_view(f"{name}_partners", _timed(t_env, watermarked, columns, "_t", None))
    return f"{name}_partners"


def _gather(
    t_env: Any, base: Any, columns: list[tuple[str, Any]], candidates: list[Any], total: int, name: str
) -> Any:
    """Each event of ``base`` (the view's own events, with their watermarks at ``_t + S``) with its
    candidates, once every side's watermark passed ``a.t + S`` (a tumbling window of one millisecond
    there): ``_seq``, ``_t``, ``_raw``, ``_items`` (JSON lines)."""
    from pyflink.table import DataTypes

    at = f"_t + {total}"
    t_env.create_temporary_view(f"{name}_base", _timed(t_env, base, columns, at, None))
    parts = [f"SELECT _seq, _t, _raw, CAST(NULL AS STRING) AS _item, rt FROM {quote(name + '_base')}"]
    found = [("_seq", DataTypes.BIGINT()), ("_t", DataTypes.BIGINT()), ("_item", DataTypes.STRING())]
    for k, table in enumerate(candidates):
        view = f"{name}_c{k}"
        t_env.create_temporary_view(view, _timed(t_env, t_env.to_data_stream(table), found, at, None))
        parts.append(f"SELECT _seq, _t, CAST(NULL AS STRING) AS _raw, _item, rt FROM {quote(view)}")
    t_env.create_temporary_view(f"{name}_union", t_env.sql_query(" UNION ALL ".join(parts)))
    newline = "'\n'"  # no JSON text holds a raw line break
    return t_env.to_data_stream(
        t_env.sql_query(
            f"SELECT _seq, MAX(_t) AS _t, MAX(_raw) AS _raw, LISTAGG(_item, {newline}) AS _items "
            f"FROM TABLE(TUMBLE(TABLE {quote(name + '_union')}, DESCRIPTOR(rt), INTERVAL '0.001' SECOND)) "
            "GROUP BY _seq, window_start, window_end"
        )
    )


def _finish(
    plan: TransformPlan,
    env: Any,
    gathered: Any,
    lookup_keys: dict[str, tuple[tuple[str, DType], ...]],
    outcomes: Callable[[], OutcomeSink],
    name: str,
) -> Any:
    """Join and prepare each gathered event (``finish_function``); its dead letters and counts go
    to ``outcomes``; returns the prepared rows."""
    from pyflink.table.udf import udf

    t_env = table_environment(env, join_settings(env))
    function = f"{name}_finish"
    t_env.create_temporary_function(
        function,
        udf(finish_function(plan, lookup_keys), result_type=finished_result_type(plan), func_type="pandas"),
    )
    t_env.create_temporary_view(f"{name}_gathered", t_env.from_data_stream(gathered))
    items = ", ".join(f"f.{quote(n)} AS {quote(n)}" for n in _finished_fields(plan))
    finished = t_env.to_data_stream(
        t_env.sql_query(
            f"SELECT _seq, _t, _raw, {items}, 0 AS _late, _t AS _max FROM (SELECT _seq, _t, _raw, "
            f"{quote(function)}(_t, _raw, _items) AS f FROM {quote(name + '_gathered')})"
        )
    )
    view = f"{name}_finished"
    t_env.create_temporary_view(view, t_env.from_data_stream(finished))
    letters = t_env.to_data_stream(t_env.sql_query(letters_sql(1, view)))
    letters.process(dead_letters_function([plan], None, [outcomes])).name(
        f"{view}-dead-letters"
    ).set_parallelism(1)
    counts_env = table_environment(env, COUNTS_SETTINGS)
    counts_env.create_temporary_view(view, counts_env.from_data_stream(finished))
    counts = counts_env.to_changelog_stream(counts_env.sql_query(counts_sql(1, view, arrivals=False)))
    counts.process(counts_function([outcomes])).name(f"{view}-counts")
    return t_env.to_data_stream(t_env.sql_query(prepared_sql(plan, 0, view, single=False)))
