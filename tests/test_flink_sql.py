"""The Flink compilation's pure parts: order-preserving encodings, intervals, the SQL it writes."""

from __future__ import annotations

import json
import math
from datetime import timedelta
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from conformance import FEATURES, WINDOWS, conformance_view, generate_events
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.aggregations import Count, CountDistinct, Max, Mean, Min, Sum
from transforms.arrow_events import row_dicts, split_clean
from transforms.dtypes import Bool, DType, Float64, Int64, String, UnixTimestamp
from transforms.engines.flink import decode_columns, sink_columns, sink_table
from transforms.engines.flink_sql import (
    _as_feature,
    _feature_column,
    _result,
    decode_ordered,
    encode_ordered,
    feature_rows,
    interval,
    marker_offset_ms,
    stage2_sql,
)
from transforms.engines.flink_stage1 import (
    DEAD,
    FILTERED,
    HEARTBEAT,
    MARKER,
    OK,
    ROW,
    flink_types,
    prepare_function,
    prepared_sql,
    row_columns,
    single_row,
)
from transforms.events import DeadLetter, EventPreparer, LateClassifier, Lateness
from transforms.json_batches import needed_fields, typed_batch
from transforms.plan import EVENT_TIMESTAMP

VALUES: dict[str, tuple[DType, st.SearchStrategy[Any]]] = {
    "int": (Int64, st.integers(-(2**63), 2**63 - 1)),
    "float": (Float64, st.floats(allow_nan=False)),
    "string": (String, st.text()),
    "bool": (Bool, st.booleans()),
    "timestamp": (UnixTimestamp, st.integers(0, 2**45)),
}
TIMES = st.integers(-(2**40), 2**45)


@pytest.mark.parametrize("kind", sorted(VALUES))
@given(data=st.data())
def test_encoding_orders_like_the_monoids_and_round_trips(kind: str, data: st.DataObject) -> None:
    dtype, values = VALUES[kind]
    a = (data.draw(TIMES), data.draw(values))
    b = (data.draw(st.sampled_from([a[0], data.draw(TIMES)])), data.draw(values))
    ea, eb = encode_ordered(*a, dtype), encode_ordered(*b, dtype)
    assert decode_ordered(ea, dtype) == a
    if a < b:
        assert ea < eb
    elif b < a:
        assert eb < ea
    assert "," not in ea  # LISTAGG separates encodings with commas


def test_intervals() -> None:
    assert interval(1) == "INTERVAL '0 00:00:00.001' DAY(3) TO SECOND(3)"
    assert interval(int(timedelta(days=7, hours=1, seconds=2).total_seconds() * 1000) + 5) == (
        "INTERVAL '7 01:00:02.005' DAY(3) TO SECOND(3)"
    )
    with pytest.raises(ValueError, match="at most 999"):
        interval(1000 * 86_400_000)


def test_stage2_sql_shapes() -> None:
    continuous = stage2_sql(conformance_view("continuous").plan)
    assert (
        "RANGE BETWEEN INTERVAL '0 00:00:09.999' DAY(3) TO SECOND(3) PRECEDING AND CURRENT ROW" in continuous
    )
    assert "MAX(`_o" in continuous and "LISTAGG(`_o" in continuous and "COUNT(DISTINCT `_v" in continuous
    assert "UNBOUNDED PRECEDING" in stage2_sql(conformance_view("lifetime").plan)
    hopping = stage2_sql(conformance_view("hopping").plan)
    assert "TABLE(HOP(TABLE `prepared`, DESCRIPTOR(rt)" in hopping
    assert "HAVING MAX(rt) >= window_end - INTERVAL '0 00:00:02.000'" in hopping


@given(
    times=st.lists(st.one_of(st.none(), st.integers(0, 20_000)), max_size=60),
    bound=st.integers(0, 3000),
)
def test_lateness_against_the_maximum_including_the_event_is_the_classifiers_rule(
    times: list[int | None], bound: int
) -> None:
    # classified_sql compares each event with MAX(_t) over the events so far, itself included
    # (None: an event without a time); LateClassifier compares with the maximum before it.
    classifier = LateClassifier(Lateness(bound, 0))
    running: int | None = None
    for t in times:
        if t is not None:
            running = t if running is None else max(running, t)
        late_in_sql = t is not None and running is not None and t < running - bound
        late_in_reference = t is not None and classifier.late_watermark(t) is not None
        assert late_in_sql == late_in_reference


@pytest.mark.parametrize("window", ["continuous", "hopping", "lifetime"])
def test_prepare_function_gives_the_reference_rows_markers_and_heartbeats(window: str) -> None:
    view = conformance_view(window, "row")
    plan = view.plan
    raws = [json.dumps(e, default=str) if isinstance(e, dict) else e for e in generate_events(3)[:300]]
    got = prepare_function([plan])(pd.Series(raws, dtype="object"))
    offset = marker_offset_ms(plan)
    n_keys = len(plan.keys)
    preparer = EventPreparer(plan)
    for i, raw in enumerate(raws):
        expected = preparer.prepare(raw)
        result = got.iloc[i]
        if isinstance(expected, DeadLetter):
            assert result["_k0"] == DEAD and DeadLetter.from_json(result["_l0"]) == expected
        elif expected is None:
            assert result["_k0"] == FILTERED and result["_l0"] is None
        else:
            assert result["_k0"] == OK and result["_n0"] == len(expected.rows)
        if result["_t"] is None:
            assert result["_a0_0"] is None
            continue
        columns = [result[f"_a0_{j}"] for j in range(len(row_columns(plan)))]
        if result["_n0"] == 0:
            # A heartbeat: its kind and time; its keys and values are null arrays (null elements in SQL).
            assert columns[0] == [HEARTBEAT] and columns[n_keys + 1] == [result["_t"] + (offset or 0)]
            assert all(c is None for j, c in enumerate(columns) if j not in (0, n_keys + 1))
            continue
        elements = list(zip(*columns, strict=True))
        assert [e[0] for e in elements if e[0] == ROW] == [ROW] * len(expected.rows)
        rows = [e for e in elements if e[0] == ROW]
        assert [tuple(e[1 : n_keys + 1]) for e in rows] == [key for key, _ in expected.rows]
        markers = [e for e in elements if e[0] == MARKER]
        assert len(markers) == (len(expected.rows) if offset is not None else 0)
        assert all(m[n_keys + 1] == result["_t"] + offset for m in markers)


def assert_vectorised_equals_row_path(window: str, transform: str, raws: list[str]) -> None:
    plan = conformance_view(window, transform).plan
    series = pd.Series(raws, dtype="object")
    vectorised = prepare_function([plan])(series).to_dict("list")
    assert vectorised == prepare_function([plan], vectorised=False)(series).to_dict("list")


def test_one_prepare_for_a_sources_views_gives_each_views_own_result() -> None:
    """Stage 1 serves every view of a source: its shared time, and for each view exactly what that
    view's stage 1 alone would give (declarative views share one decoding of the batch)."""
    plans = [
        conformance_view("continuous", "row").plan,  # its code may change the decoded events
        conformance_view("hopping", "declarative").plan,
        conformance_view("lifetime", "none").plan,
        conformance_view("tumbling", "declarative").plan,
        conformance_view("hopping", "row").plan,
    ]
    series = pd.Series([json.dumps(e) for e in generate_events(5)], dtype="object")
    shared = prepare_function(plans)(series)
    for v, plan in enumerate(plans):
        alone = prepare_function([plan])(series)
        assert shared["_t"].tolist() == alone["_t"].tolist()
        for name in alone.columns[1:]:
            shared_name = name.replace("0", str(v), 1)  # _k0 -> _k<v>, _r0_3 -> _r<v>_3
            assert shared[shared_name].tolist() == alone[name].tolist(), (plan.view, name)
    assert len(shared.columns) == 1 + sum(len(prepare_function([p])(series[:1]).columns) - 1 for p in plans)


@pytest.mark.parametrize("transform", ["row", "none"])
def test_row_path_over_the_shared_decoding_equals_decoding_the_texts(transform: str) -> None:
    """The row path of the view that takes the batch's shared decoding gives exactly what it gives
    decoding each text itself, dead letters (bad JSON, no object, bad or early times) included."""
    from transforms.engines.flink_stage1 import _view_preparer
    from transforms.json_batches import decode_lines

    plan = conformance_view("continuous", transform).plan
    texts = [json.dumps(e) for e in generate_events(5)]
    early, bad, none = "1969-12-31T23:59:59.500000+00:00", "yesterday", None
    texts += ["{not json", "[1, 2]", '"text"']
    for time in (early, bad, none):
        texts.append(json.dumps({"user_id": "k1", "timestamp": time, "v": 1.0, "kind": "keep"}))

    def outcomes(owns: bool) -> Any:
        return _view_preparer(plan, False, owns)(texts, lambda: decode_lines(plan.timestamp_field, texts))

    shared, own = outcomes(True), outcomes(False)
    assert shared == own
    assert sum(kind == DEAD for kind in own.kinds) >= 5


@pytest.mark.parametrize("transform", ["none", "declarative"])
@pytest.mark.parametrize("window", sorted(WINDOWS))
def test_vectorised_prepare_gives_the_row_paths_result(window: str, transform: str) -> None:
    """Stage 1's Arrow path over JSON text gives exactly what the reference's row path gives, on
    the conformance events (ties, nulls, bad times, missing keys, drops), and takes most of them."""
    raws = [json.dumps(e) for e in generate_events(4)]
    plan = conformance_view(window, transform).plan
    fields = needed_fields(plan)
    assert fields is not None
    typed = typed_batch(fields, raws)
    split = split_clean(plan, typed.batch)
    assert split is not None
    taken = sum(split.clean_mask.to_pylist()) + sum(split.filtered_mask.to_pylist())
    assert taken > 0.85 * len(raws) and len(typed.rest) > 0
    assert_vectorised_equals_row_path(window, transform, raws)


def test_row_functions_are_not_vectorised() -> None:
    assert needed_fields(conformance_view("continuous", "row").plan) is None


JSON_VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=3)
    | st.sampled_from(["a", "k1", "drop", "split"])
    | st.lists(st.integers(), max_size=2)
)
TIMES_AS_JSON = (
    st.datetimes(timezones=st.none() | st.timezones()).map(lambda d: d.isoformat())
    | st.integers(-(2**45), 2**64)
    | st.floats()
    | JSON_VALUES
)
EVENTS = st.fixed_dictionaries(
    {
        "user_id": st.sampled_from(["k1", "k2", 7]) | JSON_VALUES,
        "timestamp": TIMES_AS_JSON,
        "v": JSON_VALUES,
        "i": JSON_VALUES,
        "tag": JSON_VALUES,
        "kind": st.sampled_from(["keep", "drop", "split"]) | JSON_VALUES,
    }
).map(lambda e: json.dumps(e)) | st.sampled_from(["not json", "[1, 2]", '"text"', "{}", "NaN"])


@settings(deadline=None, max_examples=200)
@given(
    raws=st.lists(EVENTS, min_size=1, max_size=25),
    window=st.sampled_from(["continuous", "hopping", "lifetime"]),
)
def test_vectorised_prepare_equals_row_path_on_any_json(raws: list[str], window: str) -> None:
    """Mixed types in a column, huge integers, NaN, times of every kind and non-objects: each event
    either takes the Arrow path with the row path's exact result, or the row path itself."""
    assert_vectorised_equals_row_path(window, "declarative", raws)
    assert_vectorised_equals_row_path(window, "none", raws)


@given(
    st.lists(
        st.tuples(
            st.none() | st.integers(-(2**63), 2**63 - 1),
            st.none() | st.floats(),
            st.none() | st.datetimes(),
            st.none() | st.text(),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_sink_columns_decode_exactly(rows: list[tuple[Any, ...]]) -> None:
    """What the row sink receives (pandas columns from Arrow, as PyFlink converts them, in the shapes
    ``sink_columns`` asks Flink for) decodes to the exact values: integers beyond 2**53 next to
    nulls (zero and a null flag), NaN apart from null, timestamps as text."""
    import pyarrow as pa

    ints, floats, times, texts = (list(column) for column in zip(*rows, strict=True))
    table = pa.table(
        {
            "i": pa.array([0 if v is None else v for v in ints], pa.int64()),
            "i_null": pa.array([v is None for v in ints], pa.bool_()),
            "f": pa.array(floats, pa.float64()),
            "f_null": pa.array([v is None for v in floats], pa.bool_()),
            "t": pa.array([None if v is None else v.isoformat(sep=" ") for v in times], pa.string()),
            "s": pa.array(texts, pa.string()),
        }
    )
    columns = [c.to_pandas(date_as_object=True) for c in table.itercolumns()]
    decoded = decode_columns(columns, ["int", "float", "time", "value"])
    assert decoded[0] == ints
    assert [repr(v) for v in decoded[1]] == [repr(v) for v in floats]  # repr: NaN equals NaN
    assert decoded[2] == times
    assert decoded[3] == texts


def test_sink_columns_take_a_constant_null_flag() -> None:
    """Flink folds ``x IS NULL`` of a NOT NULL column to a constant, which PyFlink passes as one
    value, not a column."""
    ints = pd.Series([1, 2**62], dtype="int64")
    assert decode_columns([ints, False], ["int"]) == [[1, 2**62]]
    assert decode_columns([ints, True], ["int"]) == [[None, None]]


def test_sink_columns_of_a_flink_table() -> None:
    """The kinds ``sink_columns`` reads from a real Flink table's schema."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    t_env = TableEnvironment.create(EnvironmentSettings.in_batch_mode())
    table = t_env.sql_query(
        "SELECT 'k' AS k, CAST(1 AS BIGINT) AS n, CAST(1 AS INT) AS i, CAST(0.5 AS DOUBLE) AS d, "
        "CAST(NULL AS TIMESTAMP(3)) AS t, TRUE AS b"
    )
    expressions, kinds = sink_columns(table)
    assert kinds == ["value", "int", "int", "float", "time", "value"]
    assert expressions[1:3] == ["COALESCE(CAST(`n` AS BIGINT), 0)", "`n` IS NULL"]
    assert expressions[7] == "CAST(`t` AS STRING)"
    assert expressions[5:7] == ["CAST(`d` AS DOUBLE)", "`d` IS NULL"]


@pytest.mark.parametrize("window", ["continuous", "lifetime"])
def test_single_row_stage1_unnests_without_state(window: str) -> None:
    """Stage 1's plain-column rows get their leave markers from a correlated unnest: a join with a
    constant table would keep every event in Flink state for ever."""
    from pyflink.table import EnvironmentSettings, TableEnvironment

    plan = conformance_view(window, "declarative").plan
    assert single_row(plan) and not single_row(conformance_view(window, "row").plan)
    t_env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    columns = ", ".join(
        f"`_r0_{j}` {flink_types(dtype)[1]}" for j, (_, dtype) in enumerate(row_columns(plan))
    )
    t_env.execute_sql(f"CREATE TABLE classified (_late INT, {columns}) WITH ('connector' = 'datagen')")
    optimized = t_env.explain_sql(prepared_sql(plan, 0, "classified")).split(
        "== Optimized Execution Plan =="
    )[1]
    assert "Join" not in optimized
    assert ("Correlate" in optimized) == (marker_offset_ms(plan) is not None)


@given(
    st.sampled_from([Count(), CountDistinct("x"), Sum("x"), Mean("x"), Min("x"), Max("x")]),
    st.sampled_from([Int64, Float64, String, Bool]),
    st.lists(
        st.none() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.booleans() | st.text(max_size=3),
        max_size=8,
    ),
)
def test_feature_columns_convert_as_each_value_would(agg: Any, dtype: DType, values: list[Any]) -> None:
    """The row sink's column-wise conversion of SQL aggregates (with its shortcut for columns that
    need none) gives exactly what converting each value gives, errors included."""

    def one_by_one() -> list[Any]:
        return [_as_feature(_result(agg, dtype, v, None), dtype) for v in values]

    try:
        expected = one_by_one()
    except Exception as err:  # whatever the one-by-one path raises
        with pytest.raises(type(err)):
            _feature_column(agg, dtype, values)
        return
    got = _feature_column(agg, dtype, values)
    assert [(type(v), repr(v)) for v in got] == [(type(v), repr(v)) for v in expected]


# Features whose SQL results the row sink may take as columns (``plain_result``), and how SQL
# passes each (``sink_columns``).
PLAIN_FEATURES = ["n", "n_v", "sum_v", "sum_i", "mean_v", "min_v", "max_i", "var_v", "sd_i", "distinct_tag"]


@settings(deadline=None)
@given(st.data())
def test_the_sink_table_is_the_feature_rows(data: st.DataObject) -> None:
    """The row sink's batches built by columns (``sink_table``) hold exactly the feature rows the
    row path makes of the same columns: null keys, null and NaN features (each feature's empty
    value), NOT NULL columns' constant flags; where a column needs converting it gives None."""
    names = data.draw(st.lists(st.sampled_from(PLAIN_FEATURES), min_size=1, max_size=4, unique=True))
    plan = conformance_view("continuous", "none", {n: FEATURES[n] for n in names}).plan
    kinds = ["value", "int", *("int" if f.dtype.name == "Int64" else "float" for f in plan.features)]
    size = data.draw(st.integers(0, 6))

    def flags(values: list[Any]) -> Any:
        nulls = [v is None for v in values]
        return False if not any(nulls) and data.draw(st.booleans()) else pd.Series(nulls, dtype=bool)

    keys = data.draw(st.lists(st.none() | st.sampled_from(["a", "b", "é"]), min_size=size, max_size=size))
    times = data.draw(st.lists(st.integers(0, 2**45), min_size=size, max_size=size))
    columns: list[Any] = [pd.Series(keys, dtype=object), pd.Series(times, dtype="int64"), False]
    for kind in kinds[2:]:
        if kind == "int":
            ints = data.draw(
                st.lists(st.none() | st.integers(-(2**63), 2**63 - 1), min_size=size, max_size=size)
            )
            columns += [pd.Series([0 if v is None else v for v in ints], dtype="int64"), flags(ints)]
        else:
            floats = data.draw(st.lists(st.none() | st.floats(), min_size=size, max_size=size))
            columns += [
                pd.Series([math.nan if v is None else v for v in floats], dtype="float64"),
                flags(floats),
            ]
    want = feature_rows(plan, decode_columns(columns, kinds))
    table = sink_table(plan, columns, kinds)
    assert table is not None
    got = row_dicts(table)
    assert [{k: repr(v) for k, v in r.items()} for r in got] == [
        {k: repr(v) for k, v in r.items()} for r in want
    ]
    assert table.schema.field(EVENT_TIMESTAMP).type == pa.timestamp("ms", "UTC")
    if len(plan.features) > 0:
        mismatched = [*kinds[:2], "float" if kinds[2] == "int" else "int", *kinds[3:]]
        assert sink_table(plan, columns, mismatched) is None  # converted value by value instead
    assert sink_table(plan, columns, [kinds[0], "time", *kinds[2:]]) is None  # a hop's end, as text
    by_time = conformance_view("continuous", "none", {"latest_v": FEATURES["latest_v"]}).plan
    latest = [*columns[:3], pd.Series([0.5] * size, dtype="float64"), False]
    assert sink_table(by_time, latest, ["value", "int", "float"]) is None
