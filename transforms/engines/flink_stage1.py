"""Stage 1 of the Flink engine: raw events to the typed rows of ``flink_sql``, mostly in Flink's
own operators. One stage 1 serves the declarative views of a source and one the others
(``flink_decode.stage1_groups``): event time, lateness and the position in the source belong to
the source, so each stage 1 decodes and classifies each event once. The declarative views' events
are decided in the JVM (``flink_decode``); only those it leaves undecided reach ``prepare`` below.

* ``prepare`` is a vectorised (pandas) Python function over a batch of raw events: decode, event
  time, and for each view its event transform, model stages, keys and types. Views without Python
  code in that stage (no event transform, or a ``Select``) take the Arrow kernels of
  ``transforms.arrow_events`` for the events ``transforms.json_batches`` can type; every other event
  runs the reference's own ``EventPreparer``. It keeps no state, so Flink hands it Arrow batches,
  not single events. A row function may give several rows per event, so its view's rows come back
  as one array per column.
* Lateness depends on arrival order, so it is decided after ``prepare`` by a Flink SQL ``OVER``
  aggregate at parallelism 1 ordered by processing time: the highest event time so far (this event
  included) and the event's position ``_seq``, both in Flink state. An event is late when its time is
  below that maximum minus the bound. A late event never raises the maximum, so this is exactly
  ``LateClassifier``'s rule, which compares with the maximum before the event.
* Each view's accepted rows are unnested in SQL, with leave markers and a heartbeat for an event
  that gives the view no row (every event moves the watermark, as in the reference). Dead letters
  (and late events, one letter per view) go to the views' Python outcome sinks; the counts are one
  global SQL aggregate, emitted once per mini-batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np

from transforms.arrow_events import python_values, split_clean
from transforms.dtypes import DType
from transforms.engines.flink_sql import encode_ordered, marker_offset_ms, quote, source_lag_ms
from transforms.events import DeadLetter, EventCounts, EventPreparer, Lateness, PreparedEvent
from transforms.json_batches import DecodedLines, TypedBatch, decode_lines, needed_fields, typed_batch
from transforms.plan import TransformPlan
from transforms.timeutil import engine_value
from transforms.windows import LAST_ROW_MS

ROW, MARKER, HEARTBEAT = 0, 4, 5  # ``_kind`` of a prepared row
OK, FILTERED, DEAD = 0, 1, 2  # what ``prepare`` made of an event
COUNTS_EVERY = "1 s"  # how often the counts are emitted while events arrive
# pandas looks a dtype given by name up among every registered dtype: a millisecond per column of
# a small batch, which a dtype object skips.
_OBJECT = np.dtype(object)


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
        if feature.aggregation.by_time:
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
    ``prepare`` returns that row (or the heartbeat) as plain columns ``_r<v>_<j>`` and SQL adds its
    leave marker; otherwise it returns every row and marker as arrays ``_a<v>_<j>``. Plain columns
    cost far less to carry between Flink's operators than arrays."""
    return plan.one_row_per_event


def _row_fields(plan: TransformPlan, v: int, single: bool | None = None) -> list[str]:
    """View ``v``'s row columns: plain for a ``single_row`` view (or as ``single`` says), else arrays."""
    prefix = f"_r{v}_" if (single_row(plan) if single is None else single) else f"_a{v}_"
    return [f"{prefix}{j}" for j in range(len(row_columns(plan)))]


def _view_fields(plan: TransformPlan, v: int) -> list[str]:
    """What ``prepare`` made of each event for view ``v``: kind (OK, FILTERED, DEAD), number of
    rows, dead letter (JSON), and the rows (``_row_fields``)."""
    return [f"_k{v}", f"_n{v}", f"_l{v}", *_row_fields(plan, v)]


def outcome_fields(plans: Sequence[TransformPlan]) -> list[str]:
    """The fields of ``prepare``'s result (``prepare_result_type``): the event's time ``_t``, then
    each view's ``_view_fields``."""
    return ["_t", *(name for v, plan in enumerate(plans) for name in _view_fields(plan, v))]


def view_field_types(plan: TransformPlan) -> list[tuple[Any, Any]]:
    """(DataStream type info, Table data type) of each of ``_view_fields``, with one row per event
    (a view whose events can give several rows holds an array of each row column instead)."""
    from pyflink.common import Types
    from pyflink.table import DataTypes

    return [
        (Types.INT(), DataTypes.INT()),
        (Types.INT(), DataTypes.INT()),
        (Types.STRING(), DataTypes.STRING()),
        *(flink_types(dtype) for _, dtype in row_columns(plan)),
    ]


def prepare_result_type(plans: Sequence[TransformPlan]) -> Any:
    from pyflink.table import DataTypes

    fields = [DataTypes.FIELD("_t", DataTypes.BIGINT())]
    for v, plan in enumerate(plans):
        types = [data_type for _, data_type in view_field_types(plan)]
        if not single_row(plan):
            types[3:] = [DataTypes.ARRAY(t) for t in types[3:]]
        fields += [DataTypes.FIELD(n, t) for n, t in zip(_view_fields(plan, v), types, strict=True)]
    return DataTypes.ROW(fields)


class RowMaker:
    """A view's stage-1 rows of a prepared event (``row_columns``): each row, then its leave
    marker when the window has them."""

    def __init__(self, plan: TransformPlan) -> None:
        self.ordered = _ordered(plan)
        self.offset = marker_offset_ms(plan)
        self.n_values = len(plan.features) + len(self.ordered)

    def rows(self, prepared: PreparedEvent, time_ms: int) -> list[tuple[Any, ...]]:
        rows = []
        for key, values in prepared.rows:
            engine_values = [engine_value(v) for v in values]
            encoded = [
                None if engine_values[i] is None else encode_ordered(time_ms, engine_values[i], dtype)
                for i, dtype in self.ordered
            ]
            rows.append((ROW, *key, time_ms, *engine_values, *encoded))
            if self.offset is not None and time_ms + self.offset <= LAST_ROW_MS:
                rows.append((MARKER, *key, time_ms + self.offset, *[None] * self.n_values))
        return rows

    def heartbeat_ms(self, time_ms: int) -> int:
        """The time of the heartbeat of an event at ``time_ms`` that gives no row."""
        return min(time_ms + (self.offset or 0), LAST_ROW_MS)


@dataclass
class ViewOutcomes:
    """What ``prepare`` made of a batch of events for one view (one entry per event): kind, time
    (None: undecodable, or no usable time), number of rows, dead letter, and one list per output
    row column (``row_columns``), of plain values for a ``single_row`` view, else arrays."""

    kinds: list[int]
    times: list[int | None]
    counts: list[int]
    letters: list[str | None]
    rows: list[list[Any]]


def prepare_function(plans: Sequence[TransformPlan], vectorised: bool = True) -> Callable[[Any], Any]:
    """The batch function behind ``prepare``, for every view reading one source: raw events (a
    pandas Series of text) to one result each (a DataFrame of ``outcome_fields``).

    The event's time is the source's (every view of a source has its time field), so lateness is
    decided once for all of them. Views without Python code in the per-event stage (no event
    transform, or a ``Select``) take the Arrow kernels of ``arrow_events`` for the events
    ``json_batches`` can type (``vectorised``), from one decoding of the batch; the others, and
    every event otherwise, the reference's ``EventPreparer``."""
    # The last view on the row path (Python code per event) takes the shared decoding for its own:
    # its code may change the decoded events, so it runs after every other view has read them.
    row_path = [v for v, plan in enumerate(plans) if not vectorised or needed_fields(plan) is None]
    owner = row_path[-1] if row_path else None
    views = [_view_preparer(plan, vectorised, v == owner) for v, plan in enumerate(plans)]
    order = [v for v in range(len(plans)) if v != owner] + ([] if owner is None else [owner])
    time_fields = {plan.timestamp_field for plan in plans}
    if len(time_fields) != 1:
        raise ValueError(f"the views of one stage 1 read one source with one time field, got {time_fields}")
    (time_field,) = time_fields

    def prepare(raws: Any) -> Any:
        import pandas as pd

        texts = raws.tolist()
        decoded: list[DecodedLines] = []  # decoded once, when a view first asks

        def decode() -> DecodedLines:
            if not decoded:
                decoded.append(decode_lines(time_field, texts))
            return decoded[0]

        by_view = {v: views[v](texts, decode) for v in order}
        outcomes = [by_view[v] for v in range(len(views))]
        data: dict[str, Any] = {"_t": pd.Series(outcomes[0].times, dtype=_OBJECT)}
        for v, (plan, outcome) in enumerate(zip(plans, outcomes, strict=True)):
            kind, count, letter, *rows = _view_fields(plan, v)
            data[kind] = outcome.kinds
            data[count] = outcome.counts
            data[letter] = pd.Series(outcome.letters, dtype=_OBJECT)
            for name, column in zip(rows, outcome.rows, strict=True):
                data[name] = pd.Series(column, dtype=_OBJECT)
        return pd.DataFrame(data)

    return prepare


def _view_preparer(
    plan: TransformPlan, vectorised: bool, owns_decoding: bool = False
) -> Callable[[list[str], Callable[[], DecodedLines]], ViewOutcomes]:
    """One view's part of ``prepare``: texts (and their shared decoding, on demand) to outcomes.
    A view that ``owns_decoding`` runs its row path over the decoded events themselves (it is the
    last to read them) instead of decoding the texts again."""
    n_keys = len(plan.keys)
    fields = needed_fields(plan) if vectorised else None
    single = single_row(plan)
    preparers: list[EventPreparer] = []  # made on the worker, once
    maker = RowMaker(plan)
    event_rows = maker.rows
    ordered = maker.ordered

    def prepare(texts: list[str], decode: Callable[[], DecodedLines]) -> ViewOutcomes:
        if not preparers:
            preparers.append(EventPreparer(plan))
        n = len(texts)
        out = ViewOutcomes(
            [FILTERED] * n,
            [None] * n,
            [0] * n,
            [None] * n,
            [[None] * n for _ in range(n_keys + maker.n_values + 2)],
        )
        if fields is not None:
            rest = _prepare_vectorised(typed_batch(fields, decode()), n, out)
            timed = preparers[0].prepare_batch_timed([texts[i] for i in rest])
        elif owns_decoding:
            timed, rest = _prepare_decoded(texts, decode())
        else:
            rest = list(range(n))
            timed = preparers[0].prepare_batch_timed(texts)
        beats: list[tuple[int, int]] = []  # (position, time) of the events that give no row
        for i, (time_ms, outcome) in zip(rest, timed, strict=True):
            out.times[i] = time_ms
            if outcome is not None:
                out.kinds[i] = DEAD if isinstance(outcome, DeadLetter) else OK
            count = 0 if outcome is None or isinstance(outcome, DeadLetter) else len(outcome.rows)
            out.counts[i] = count
            out.letters[i] = outcome.to_json() if isinstance(outcome, DeadLetter) else None
            if time_ms is None:  # undecodable, or no usable time: no rows and no watermark
                continue
            if count == 0:
                beats.append((i, time_ms))
                continue
            assert isinstance(outcome, PreparedEvent)
            for column, values in zip(out.rows, zip(*event_rows(outcome, time_ms), strict=True), strict=True):
                column[i] = values[0] if single else list(values)  # single: the row (SQL adds the marker)
        _heartbeats(out, beats)
        return out

    def _heartbeats(out: ViewOutcomes, beats: list[tuple[int, int]]) -> None:
        """A heartbeat for each event of ``beats``: it gives no row but still moves the source's
        watermark on. Only its kind and time are set; its keys and values stay null (as arrays
        too: SQL's element of a null array is null)."""
        kinds, times = out.rows[0], out.rows[n_keys + 1]
        if single:
            for i, time_ms in beats:
                kinds[i] = HEARTBEAT
                times[i] = maker.heartbeat_ms(time_ms)
        else:
            beat = [HEARTBEAT]  # shared: nothing changes these lists
            for i, time_ms in beats:
                kinds[i] = beat
                times[i] = [maker.heartbeat_ms(time_ms)]

    def _prepare_decoded(
        texts: list[str], decoded: DecodedLines
    ) -> tuple[list[tuple[int | None, Any]], list[int]]:
        """The row path over decoded events: what ``prepare_batch_timed`` gives for their texts
        (``decode_lines`` decodes and times them as it does), and their positions, in that order."""
        preparer = preparers[0]
        low, high = plan.event_time_range_ms
        events: list[tuple[int, dict[str, Any], int]] = []
        rest = list(decoded.rest)  # and the events outside the view's range: the row path's bad_time
        for i, event, time_ms in zip(decoded.positions, decoded.events, decoded.times, strict=True):
            if low <= time_ms <= high:
                events.append((i, event, time_ms))
            else:
                rest.append(i)
        rest.sort()
        outcomes = preparer.transform_batch([(texts[i], e, t) for i, e, t in events])
        timed: list[tuple[int | None, Any]] = [(t, o) for (_, _, t), o in zip(events, outcomes, strict=True)]
        timed += preparer.prepare_batch_timed([texts[i] for i in rest])
        return timed, [i for i, _, _ in events] + rest

    def _prepare_vectorised(typed: TypedBatch, n: int, out: ViewOutcomes) -> list[int]:
        """Fill in the events the Arrow kernels prepare (one row each, as plain columns); returns the
        positions left to the row path."""
        assert single
        split = split_clean(plan, typed.batch) if typed.positions else None
        if split is None:
            return list(range(n))
        positions = typed.positions
        clean = [positions[j] for j in split.clean_mask.to_numpy(zero_copy_only=False).nonzero()[0]]
        dropped = [positions[j] for j in split.filtered_mask.to_numpy(zero_copy_only=False).nonzero()[0]]
        if dropped:  # a Select's where= dropped them: heartbeats
            dropped_ms = python_values(typed.batch.column(0).filter(split.filtered_mask).cast("int64"))
            for i, time_ms in zip(dropped, dropped_ms, strict=True):
                out.times[i] = time_ms
            _heartbeats(out, list(zip(dropped, dropped_ms, strict=True)))
        row_ms = python_values(split.clean["_ts"])
        columns = [python_values(split.clean[name]) for name in plan.key_names]
        columns.append(row_ms)
        columns += [python_values(split.clean[f"_v{k}"]) for k in range(len(plan.features))]
        for k, dtype in ordered:
            values = columns[n_keys + 1 + k]
            columns.append(
                [
                    None if v is None else encode_ordered(t, v, dtype)
                    for t, v in zip(row_ms, values, strict=True)
                ]
            )
        elements = [[ROW] * len(clean), *columns]  # per row column, each clean event's row
        targets: list[list[Any]] = [out.kinds, out.times, out.counts, *out.rows]
        for target, values in zip(
            targets,
            [[OK] * len(clean), row_ms, [1] * len(clean), *elements],
            strict=True,
        ):
            if len(clean) == n:
                target[:] = values
            else:
                for i, v in zip(clean, values, strict=True):
                    target[i] = v
        return sorted(set(range(n)) - set(clean) - set(dropped))

    return prepare


class OutcomeSink(Protocol):
    """Where a view's dead letters and counts go (opened on a Flink worker; one instance receives
    the dead letters, another the counts)."""

    def dead(self, letter: DeadLetter, late: bool, seq: int) -> None:
        """A dead letter; ``seq`` is the event's 1-based position in the source (checkpointed, so a
        letter written again after a restart is recognisable). One instance receives every letter
        of a source, in ``seq`` order."""

    def update(self, counts: EventCounts, max_event_ms: int | None) -> None:
        """The counts so far (they only grow) and the highest event time seen."""

    def close(self) -> None: ...


def prepared_sql(plan: TransformPlan, v: int, classified: str, single: bool | None = None) -> str:
    """View ``v``'s stage-1 output: the rows, markers and heartbeats of the events that are not
    late, in the order of the events (one unnesting, so nothing reorders them); ``single`` as
    ``_row_fields`` takes it."""
    columns = row_columns(plan)
    fields = _row_fields(plan, v, single)
    if fields[0].startswith("_a"):
        items = ", ".join(
            f"{quote(f)}[_i] AS {quote(name)}" for f, (name, _) in zip(fields, columns, strict=True)
        )
        return (
            f"SELECT {items} FROM {quote(classified)} "
            f"CROSS JOIN UNNEST({quote(fields[0])}) WITH ORDINALITY AS r(_x, _i) WHERE _late = 0"
        )
    offset = marker_offset_ms(plan)
    n_keys = len(plan.keys)
    kind, time = quote(fields[0]), quote(fields[n_keys + 1])
    present = f"WHERE _late = 0 AND {kind} IS NOT NULL"
    if offset is None:
        items = ", ".join(
            f"{quote(f)} AS {quote(name)}" for f, (name, _) in zip(fields, columns, strict=True)
        )
        return f"SELECT {items} FROM {quote(classified)} {present}"
    # Each row, then its leave marker (``_m`` = 2): same keys, ``offset`` later, no values.
    listed = [f"CASE WHEN _m = 1 THEN {kind} ELSE {MARKER} END AS `_kind`"]
    listed += [
        f"{quote(f)} AS {quote(name)}"
        for f, (name, _) in zip(fields[1 : n_keys + 1], columns[1 : n_keys + 1], strict=True)
    ]
    listed.append(f"CASE WHEN _m = 1 THEN {time} ELSE {time} + {offset} END AS `_ts`")
    listed += [
        f"CASE WHEN _m = 1 THEN {quote(f)} END AS {quote(name)}"
        for f, (name, _) in zip(fields[n_keys + 2 :], columns[n_keys + 2 :], strict=True)
    ]
    # The array depends on the row, so this stays a correlated unnest (a constant array would make
    # the planner join with a constant table, which keeps every event in state). No marker goes
    # past the last time a row can have.
    return (
        f"SELECT {', '.join(listed)} FROM {quote(classified)} "
        f"CROSS JOIN UNNEST(CASE WHEN {kind} = {ROW} AND {time} <= {LAST_ROW_MS - offset} "
        f"THEN ARRAY[1, 2] ELSE ARRAY[1] END) AS m(_m) {present}"
    )


def events_sql(plans: Sequence[TransformPlan], raws: Sequence[str], function: str) -> str:
    """Each raw event with what ``prepare`` made of it and its partition ``_part`` (the position of
    its table in ``raws``, one per source partition; each partition's ``prepare`` runs on its own)."""
    return decoded_sql(outcome_fields(plans), raws, function)


def decoded_sql(fields: Sequence[str], raws: Sequence[str], function: str) -> str:
    """Each raw event ``_raw`` of the tables ``raws`` (one per source partition, with columns ``f0``
    and ``_pt``) with the ``fields`` of ``function``'s result, its partition ``_part`` and ``_pt``."""
    items = ", ".join(f"p.{quote(name)} AS {quote(name)}" for name in fields)
    return " UNION ALL ".join(
        f"SELECT _raw, {items}, {part} AS _part, _pt FROM "
        f"(SELECT f0 AS _raw, {quote(function)}(f0) AS p, _pt FROM {quote(raw)})"
        for part, raw in enumerate(raws)
    )


SEQ_PARTITION_BITS = 40  # ``_seq`` = partition << 40 | the event's position in its partition


def classified_fields(plans: Sequence[TransformPlan]) -> list[str]:
    """The columns of ``classified_sql``."""
    return ["_raw", *outcome_fields(plans), "_part", "_max", "_seq", "_late"]


def classified_sql(plans: Sequence[TransformPlan], events: str, lateness: Lateness | None) -> str:
    """Each event of ``events_sql`` with, within its partition (DESIGN §2: lateness is judged per
    source partition), the highest event time so far ``_max`` (this event included), its
    position ``_seq`` (``SEQ_PARTITION_BITS``) and whether it is late (``_late``, 0 or 1)."""
    return classified_columns_sql(["_raw", *outcome_fields(plans), "_part"], events, lateness, "_part")


def classified_columns_sql(
    columns: Sequence[str], events: str, lateness: Lateness | None, partition: str | None = None
) -> str:
    """``classified_sql`` over events with ``columns`` (their time is ``_t``), per value of the
    column ``partition`` (None: one partition)."""
    if lateness is None:  # a bounded replay: nothing is late
        late = "0"
    else:
        late = f"CASE WHEN _t < _max - {lateness.bound_ms} THEN 1 ELSE 0 END"
    listed = ", ".join(quote(name) for name in columns)
    seq, by = "COUNT(*) OVER w", ""
    if partition is not None:
        seq = f"CAST({quote(partition)} AS BIGINT) * {1 << SEQ_PARTITION_BITS} + {seq}"
        by = f"PARTITION BY {quote(partition)} "
    return (
        f"SELECT {listed}, _max, _seq, {late} AS _late FROM ("
        f"SELECT {listed}, MAX(_t) OVER w AS _max, {seq} AS _seq FROM {quote(events)} "
        f"WINDOW w AS ({by}ORDER BY _pt ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW))"
    )


def letters_sql(n_views: int, classified: str) -> str:
    """The events that become a dead letter of some view: late, or rejected by ``prepare``."""
    letters = [f"_l{v}" for v in range(n_views)]
    rejected = " OR ".join(f"{name} IS NOT NULL" for name in letters)
    return (
        f"SELECT _seq, _late, _t, _max, _raw, {', '.join(letters)} FROM {quote(classified)} "
        f"WHERE _late = 1 OR {rejected}"
    )


def counts_sql(n_views: int, classified: str, arrivals: bool = True) -> str:
    """The events so far, the late ones and the highest event time, then each view's outcomes and
    rows (one global aggregate). Without ``arrivals`` (outcomes decided after stage 1, as a joined
    view's are), the first three are 0, 0 and null."""
    items = ["COUNT(*) AS `input`", "CAST(SUM(_late) AS BIGINT) AS late", "MAX(_max) AS max_seen"]
    if not arrivals:
        items = ["CAST(0 AS BIGINT) AS `input`", "CAST(0 AS BIGINT) AS late"]
        items.append("CAST(NULL AS BIGINT) AS max_seen")
    for v in range(n_views):
        accepted = f"_late = 0 AND _k{v}"
        items += [
            f"CAST(SUM(CASE WHEN {accepted} = {OK} THEN 1 ELSE 0 END) AS BIGINT) AS aggregated{v}",
            f"CAST(SUM(CASE WHEN {accepted} = {FILTERED} THEN 1 ELSE 0 END) AS BIGINT) AS filtered{v}",
            f"CAST(SUM(CASE WHEN {accepted} = {DEAD} THEN 1 ELSE 0 END) AS BIGINT) AS dead{v}",
            f"CAST(SUM(CASE WHEN {accepted} = {OK} THEN _n{v} ELSE 0 END) AS BIGINT) AS rows{v}",
        ]
    return f"SELECT {', '.join(items)} FROM {quote(classified)}"


def dead_letters_function(
    plans: Sequence[TransformPlan],
    lateness: Lateness | None,
    outcomes: Sequence[Callable[[], OutcomeSink]],
    source: str | None = None,
) -> Any:
    """A Python function over ``letters_sql``'s rows: a late event becomes a late dead letter of
    every view (against the watermark it missed; on ``source``, a joined source), the others are
    ``prepare``'s letters; each goes to its view's outcome sink."""
    from pyflink.datastream.functions import ProcessFunction

    class DeadLetters(ProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.preparers = [EventPreparer(plan) for plan in plans]
            self.sinks = [make() for make in outcomes]

        def process_element(self, value: Any, ctx: Any) -> Any:
            yield from ()  # a sink
            seq, late, time_ms, max_seen, raw, *texts = tuple(value)
            for preparer, sink, text in zip(self.preparers, self.sinks, texts, strict=True):
                if late:
                    assert lateness is not None, "nothing is late without lateness"
                    letter = preparer.late(raw, time_ms, lateness.watermark(max_seen))
                    sink.dead(letter if source is None else replace(letter, source=source), True, seq)
                elif text is not None:
                    sink.dead(DeadLetter.from_json(text), False, seq)

        def close(self) -> None:
            for sink in self.sinks:
                sink.close()

    return DeadLetters()


def counts_function(outcomes: Sequence[Callable[[], OutcomeSink]]) -> Any:
    """A Python function over ``counts_sql``'s changelog: each new total goes to the views' outcome
    sinks."""
    from pyflink.common import RowKind
    from pyflink.datastream.functions import ProcessFunction

    class Counts(ProcessFunction):
        def open(self, runtime_context: Any) -> None:
            self.sinks = [make() for make in outcomes]

        def process_element(self, value: Any, ctx: Any) -> Any:
            yield from ()  # a sink
            if value.get_row_kind() in (RowKind.UPDATE_BEFORE, RowKind.DELETE):
                return
            total, late, max_seen, *per_view = tuple(value)
            for v, sink in enumerate(self.sinks):
                aggregated, filtered, dead, rows = per_view[4 * v : 4 * v + 4]
                counts = EventCounts(
                    input=total,
                    aggregated=aggregated,
                    filtered=filtered,
                    dead_lettered=dead,
                    late=late,
                    rows=rows,
                )
                sink.update(counts, max_seen)

        def close(self) -> None:
            for sink in self.sinks:
                sink.close()

    return Counts()


def table_environment(env: Any, settings: dict[str, str] | None = None) -> Any:
    """A table environment over ``env`` in UTC, with extra table ``settings`` and MLFS's
    functions (``flink_exact``)."""
    from pyflink.table import StreamTableEnvironment

    from transforms.engines.flink_exact import register_functions

    t_env = StreamTableEnvironment.create(env)
    config = t_env.get_config()
    config.set("table.local-time-zone", "UTC")
    for name, value in (settings or {}).items():
        config.set(name, value)
    register_functions(t_env)
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
    plans: Sequence[TransformPlan],
    env: Any,
    raws: Sequence[Any],
    lateness: Lateness | None,
    outcomes: Sequence[Callable[[], OutcomeSink]],
    name: str,
    spec: str | None = None,
) -> list[Any]:
    """Add one stage 1 for the views ``plans`` of one source, over its raw events ``raws`` (a
    DataStream of text per source partition, each at parallelism 1), to ``env``; returns each view's
    DataStream of prepared rows (``prepared_columns``), each partition's in the order stage 1
    accepted its events, with the source's watermarks (``PartitionWatermarks``). ``outcomes`` are
    the views' outcome sinks. With ``spec`` (``flink_decode.jvm_spec`` of ``plans``) events are
    decided in the JVM and only the undecided ones reach the Python ``prepare``. Its state lives in
    the SQL operators, whose ids derive from the job's shape, so a restarted job of the same views
    restores it."""
    from pyflink.table.udf import udf

    from transforms.engines.flink_decode import jvm_events  # it builds on this module

    t_env = table_environment(env, STAGE1_SETTINGS)
    function = f"{name}_prepare"
    t_env.create_temporary_function(
        function, udf(prepare_function(plans), result_type=prepare_result_type(plans), func_type="pandas")
    )
    if spec is not None:  # declarative views: decided in the JVM, only undecided events reach Python
        jvm_events(plans, spec, t_env, raws, function, name)
    else:
        tables = raw_tables(t_env, raws, name)
        t_env.create_temporary_view(f"{name}_events", t_env.sql_query(events_sql(plans, tables, function)))
    return stage1_sql(plans, env, t_env, lateness, outcomes, name, len(raws))


def raw_tables(t_env: Any, raws: Sequence[Any], name: str) -> list[str]:
    """Register each partition's raw events (a DataStream of text) as ``<name>_raw<partition>``
    (``f0``, processing time ``_pt``); returns their names."""
    from pyflink.table import DataTypes, Schema

    schema = Schema.new_builder().column("f0", DataTypes.STRING()).column_by_expression("_pt", "PROCTIME()")
    tables = [f"{name}_raw{part}" for part in range(len(raws))]
    for table, raw in zip(tables, raws, strict=True):
        t_env.create_temporary_view(table, t_env.from_data_stream(raw, schema.build()))
    return tables


def partition_watermarks(stream: Any, fields: Sequence[str], partitions: int, lag_ms: int, name: str) -> Any:
    """``stream`` (of classified events, or rows of them, with columns ``fields``: ``_part``,
    ``_max`` and ``_t`` among them) with the source's watermarks, ``lag_ms`` behind the lowest
    partition's highest event time (``PartitionWatermarks``). One instance sees every partition (the
    classification runs per partition, in parallel)."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    strategy = get_gateway().jvm.mlfs.flink.PartitionWatermarks(
        partitions, fields.index("_part"), fields.index("_max"), fields.index("_t"), lag_ms
    )
    j_watermarked = stream._j_data_stream.assignTimestampsAndWatermarks(strategy)
    return DataStream(j_watermarked.name(f"{name}-watermarks").setParallelism(1))


def stage1_sql(
    plans: Sequence[TransformPlan],
    env: Any,
    t_env: Any,
    lateness: Lateness | None,
    outcomes: Sequence[Callable[[], OutcomeSink]],
    name: str,
    partitions: int = 1,
) -> list[Any]:
    """The Flink SQL half of stage 1 over the view ``<name>_events`` of ``t_env`` (made with
    ``STAGE1_SETTINGS``): each raw event ``_raw`` with ``prepare``'s result (``outcome_fields``),
    its partition ``_part`` (of ``partitions``) and its processing time ``_pt``. Classifies, counts
    and unnests as ``build_stage1`` says; ``benchmarks/flink_ceiling.py`` runs it over
    ``prepare``'s results read from a file."""
    from pyflink.table import Schema

    classified = t_env.to_data_stream(t_env.sql_query(classified_sql(plans, f"{name}_events", lateness)))
    fields = classified_fields(plans)
    classified = partition_watermarks(classified, fields, partitions, source_lag_ms(lateness), name)
    # Every consumer starts from this one stream, so ``prepare`` and the classification run once;
    # a table drops a stream's watermarks unless it declares them.
    schema = (
        Schema.new_builder()
        .column_by_metadata("_rowtime", "TIMESTAMP_LTZ(3)", "rowtime")
        .watermark("_rowtime", "SOURCE_WATERMARK()")
        .build()
    )
    t_env.create_temporary_view(f"{name}_classified", t_env.from_data_stream(classified, schema))
    letters = t_env.to_data_stream(t_env.sql_query(letters_sql(len(plans), f"{name}_classified")))
    # One instance, so each view's letters are written in ``_seq`` order (``OutcomeSink.dead``).
    letters.process(dead_letters_function(plans, lateness, outcomes)).name(
        f"{name}-dead-letters"
    ).set_parallelism(1)
    counts_env = table_environment(env, COUNTS_SETTINGS)
    counts_env.create_temporary_view(f"{name}_classified", counts_env.from_data_stream(classified))
    counts = counts_env.to_changelog_stream(
        counts_env.sql_query(counts_sql(len(plans), f"{name}_classified"))
    )
    counts.process(counts_function(outcomes)).name(f"{name}-counts")
    return [
        t_env.to_data_stream(t_env.sql_query(prepared_sql(plan, v, f"{name}_classified")))
        for v, plan in enumerate(plans)
    ]
