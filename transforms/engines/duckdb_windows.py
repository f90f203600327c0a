"""Stage 2 as one DuckDB query: feature rows from stage 1's typed rows, for every window kind.

The kernel both backfill engines run (the embedded engine over all of a chunk's rows, Spark inside
each partition after a shuffle by key). It lowers the window's two rules (``Window.change_times``
and ``Window.frame``) and the monoids of ``transforms.aggregations`` to SQL:

* rows at each time a key's value can change: for continuous and lifetime windows the events
  themselves and one row (no values) where each event leaves, the value at a time being that of
  its last row (``lead``); for hopping windows one *marker* row per key and window end, in the
  order ``(time, marker last)`` when the frame ends at ``t`` inclusive and ``(time, marker first)``
  when it ends before ``t``;
* each row's frame start found by an as-of join (the first row at or after ``t + frame low``), so
  every aggregate runs over a ``ROWS`` frame of per-row length. DuckDB evaluates those with
  segment trees: the cost per event grows with the log of the events a key has in a window, never
  linearly. Its ``RANGE`` frames cost per row with the rows of the key (``docs/benchmarks.md``), so
  only when every key has few rows (``RANGE_ROWS_PER_KEY``) do bounded windows use them, skipping
  the numbering and the as-of join; both lowerings give the same frames.
* continuous and lifetime windows of counts, sums and means over keys hotter than that take no
  frames at all (``_running_totals_sql``): each event adds its exact integer contribution (a float
  scaled by a power of two, ``running_total_scales``) where it enters and takes it back where it
  leaves, and the value is the running total, rounded once: a sort and a running sum per key;
* hopping and tumbling windows whose aggregations all merge exactly (``per_hop``) first merge
  each key's events per hop into one row at the hop's start, so a window's cost follows its hops;
  a tumbling window is then exactly one hop, joined to its window ends without a window function.

``Latest``/``First``/``LastK`` order values by ``(time, value)`` through a dense rank, so ties in
time are broken by the value as everywhere. ``Min``/``Max`` run as ``arg_min(v, v)``/``arg_max(v, v)``,
which DuckDB's segment trees evaluate several times faster than its windowed ``min``/``max``.
Variances run on values shifted by the key's median; a row whose rounding error bound could exceed
the contract (values far from each other's spread, see ``_inexact``) is recomputed exactly by the
monoid from its frame, so the result is the exact one the reference computes.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
from transforms.dtypes import DType, feature_value
from transforms.plan import EVENT_TIMESTAMP, TransformPlan
from transforms.stage1 import TS, value_column
from transforms.windows import LAST_ROW_MS, Sliding

EPSILON = 2.0**-52
RANGE_ROWS_PER_KEY = 4096  # keys with at most this many rows take RANGE frames (_few_rows_per_key)
RUNNING_TOTALS = True  # hotter keys of count/sum/mean views take exact running totals (_running_totals_sql)
ACCURACY = 1e-11  # a variance whose error bound exceeds this (relative) is recomputed exactly

_SQL_TYPES = {
    "String": "VARCHAR",
    "Int32": "INTEGER",
    "Int64": "BIGINT",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "Bool": "BOOLEAN",
    "Bytes": "BLOB",
    "UnixTimestamp": "TIMESTAMP",
}


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_type(dtype: DType) -> str:
    if dtype.element is not None:
        return f"{sql_type(dtype.element)}[]"
    return _SQL_TYPES[dtype.name]


MERGEABLE = (Count, Sum, Mean, Min, Max, Latest, First)  # partials per hop merge exactly in SQL


def _partial(agg: Aggregation, value: str) -> str:
    """``agg``'s partial over the events of one key and hop, as the columns ``_aggregate`` merges."""
    if isinstance(agg, Count):
        return f"count({value}) AS {value}"
    if isinstance(agg, Mean):
        return f"sum({value}) AS {value}, count({value}) AS {value}_c"
    if isinstance(agg, (Sum, Min, Max)):
        return f"{type(agg).__name__.lower()}({value}) AS {value}"
    if isinstance(agg, (Latest, First)):  # the value of the largest (smallest) (time, value)
        pick = "arg_max" if isinstance(agg, Latest) else "arg_min"
        return (
            f"{pick}({value}, struct_pack(t := {TS}, v := {value})) FILTER ({value} IS NOT NULL) AS {value}"
        )
    raise TypeError(f"no partial for {agg!r}")


def _aggregate(agg: Aggregation, value: str, rank: str, partials: bool = False) -> str:
    """The windowed aggregate of ``agg`` over value column ``value`` (``rank``: its (time, value)
    rank), over events, or over per-hop ``_partial`` rows when ``partials``."""
    if isinstance(agg, Count):
        return f"sum({value})" if partials else f"count({value})"
    if isinstance(agg, Sum):
        return f"sum({value})"
    if isinstance(agg, Mean):  # over partials: the sum, divided by the count (``{value}_c``) at the end
        return f"sum({value})" if partials else f"avg({value})"
    if isinstance(agg, Min):
        return f"arg_min({value}, {value})"
    if isinstance(agg, Max):
        return f"arg_max({value}, {value})"
    if isinstance(agg, Latest):
        return f"arg_max({value}, {rank})"
    if isinstance(agg, First):
        return f"arg_min({value}, {rank})"
    if isinstance(agg, LastK):
        return f"arg_max({value}, {rank}, {int(agg.k)})"
    if isinstance(agg, Stddev):
        return f"stddev_{'samp' if agg.sample else 'pop'}({value} - {value}_p)"
    if isinstance(agg, Variance):
        return f"var_{'samp' if agg.sample else 'pop'}({value} - {value}_p)"
    if isinstance(agg, CountDistinct):
        return f"count(DISTINCT {value})"
    raise TypeError(f"no DuckDB compilation for {agg!r}")


def _finish(agg: Aggregation, dtype: DType, value: str) -> str:
    """An aggregate's result as the stored feature value, as ``transforms.dtypes.feature_value`` makes it."""
    empty = agg.empty()
    if empty is not None:
        value = f"coalesce({value}, {empty!r})"
    elif isinstance(agg, LastK):
        value = f"CASE WHEN len({value}) > 0 THEN {value} END"
    element = dtype.element if dtype.element is not None else dtype
    if element.name == "UnixTimestamp":  # whole seconds, floored (Feast's online values hold seconds)
        if dtype.element is not None:
            return f"list_transform({value}, x -> date_trunc('second', epoch_ms(x)))"
        return f"date_trunc('second', epoch_ms({value}))"
    return f"CAST({value} AS {sql_type(dtype)})"


def _aligned(plan: TransformPlan) -> str:
    """``Window.aligned`` in SQL (floor division: times before 1970 are negative)."""
    hop = hop_ms(plan)
    if hop is not None:
        return f"({TS} - ((({TS} % {hop}) + {hop}) % {hop}) + {hop})"
    return TS


def feature_rows_sql(plan: TransformPlan, rows: str, range_frames: bool = False) -> str:
    """The query over table ``rows`` (the keys, ``_ts`` and ``_v<i>`` columns of stage 1's rows)
    that returns the keys, the features and ``event_timestamp``. ``range_frames``: bounded windows
    use DuckDB's ``RANGE`` frames (no as-of join), for keys with few rows each (see ``feature_rows``)."""
    window = plan.window
    keys = [quote(k) for k in plan.key_names]
    key_list = ", ".join(keys)
    values = [value_column(i) for i in range(len(plan.features))]
    ordered = sorted({value_column(i) for i, f in enumerate(plan.features) if f.aggregation.by_time})
    ranks = {v: f"_r{v[2:]}" for v in ordered}
    low, high = window.frame()
    marker_order = 1 if high > 0 else -1  # the frame holds the events at t, or ends before them
    offsets = ", ".join(f"{_aligned(plan)} + {o}" for o in window.change_offsets())
    rank_columns = "".join(
        f", CASE WHEN {v} IS NOT NULL THEN dense_rank() OVER (PARTITION BY {key_list} ORDER BY {TS}, {v}) END"
        f" AS {r}"
        for v, r in ranks.items()
    )
    spread = _variance_columns(plan)
    rank_columns += "".join(f", median({v}) OVER (PARTITION BY {key_list}) AS {v}_p" for v in spread)
    pivots = [f"{v}_p" for v in spread]
    partials = per_hop(plan)
    means = [f"{v}_c" for f, v in zip(plan.features, values, strict=True) if isinstance(f.aggregation, Mean)]
    counts = means if partials else []  # the count beside each mean's sum, in per-hop partials
    if partials:
        assert isinstance(window, Sliding) and window.hop_ms is not None
        merged = ", ".join(_partial(f.aggregation, v) for f, v in zip(plan.features, values, strict=True))
        # One row per key and hop, at the hop's start: a window holds all of a hop's events or none.
        rows = f"""(SELECT {key_list}, _b AS {TS}, {", ".join([*values, *counts])} FROM (
        SELECT {key_list}, _b, {merged}
        FROM (SELECT *, {_aligned(plan)} - {window.hop_ms} AS _b FROM {rows}) GROUP BY {key_list}, _b))"""
    single_hop = _one_hop(plan)
    if single_hop:
        rank_columns = ""  # a hop's partial is its value
    sql = f"""
WITH ev AS (SELECT {key_list}, {TS}, {", ".join([*values, *counts])}{rank_columns} FROM {rows})"""
    marks = f""",
marks AS (
    SELECT DISTINCT {key_list}, _t AS {TS}
    FROM (SELECT {key_list}, unnest([{offsets}]) AS _t FROM ev)
    WHERE _t <= {LAST_ROW_MS}
)"""
    if single_hop:
        assert low is not None
        return sql + marks + _single_hop(plan, values, counts, low)
    nulls = "".join(f", NULL AS {c}" for c in [*values, *counts, *ranks.values(), *pivots])
    carried = ", ".join([*values, *counts, *ranks.values(), *pivots])
    range_frames = range_frames and low is not None
    # Continuous and lifetime values change only at the events' own times and where they leave,
    # and a time's last row holds every event at that time in its frame: no marks to make.
    peers = hop_ms(plan) is None
    if peers:
        body = f"SELECT {key_list}, {TS}, 0 AS _m, {carried} FROM ev" + "".join(
            f"""
        UNION ALL
        SELECT {key_list}, {TS} + {o} AS {TS}, 1 AS _m{nulls} FROM ev WHERE {TS} + {o} <= {LAST_ROW_MS}"""
            for o in window.change_offsets()
            if o
        )
    else:
        sql += marks
        body = f"""SELECT {key_list}, {TS}, 0 AS _m, {carried} FROM ev
        UNION ALL
        SELECT {key_list}, {TS}, {marker_order} AS _m{nulls} FROM marks"""
    rows_frames = low is not None and not range_frames  # bounded ROWS frames need row numbers
    numbering = (
        f", row_number() OVER (PARTITION BY {key_list} ORDER BY {TS}, _m) AS _rn" if rows_frames else ""
    )
    sql += f""",
numbered AS (
    SELECT *{numbering}
    FROM (
        {body}
    )
)"""
    order = "_rn"
    if low is None:  # lifetime: a time's rows are peers and share a RANGE frame
        frame_source, frame, order = "numbered", "RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW", TS
    elif range_frames:  # peers share a RANGE frame, so the marker's frame is the window's own
        end = "CURRENT ROW" if high == 1 else f"{1 - high} PRECEDING"
        frame_source, frame, order = "numbered", f"RANGE BETWEEN {-low} PRECEDING AND {end}", TS
    else:
        on = " AND ".join(f"n.{k} = s.{k}" for k in keys)
        sql += f""",
starts AS (SELECT {key_list}, {TS}, min(_rn) AS _first FROM numbered GROUP BY ALL),
framed AS (
    SELECT n.*, n._rn - s._first AS _off
    FROM numbered n ASOF JOIN starts s ON {on} AND s.{TS} >= n.{TS} + ({low})
)"""
        frame_source, frame = "framed", "ROWS BETWEEN _off PRECEDING AND CURRENT ROW"
    aggregates = ", ".join(
        f"{_aggregate(f.aggregation, v, ranks.get(v, ''), partials)} OVER w AS {v}"
        for f, v in zip(plan.features, values, strict=True)
    )
    checks = [f"{expr} OVER w AS {name}" for v in spread for name, expr in _accuracy_columns(v).items()]
    checks += [f"sum({c}) OVER w AS {c}" for c in counts]
    aggregates = ", ".join([aggregates, *checks])
    check_columns = "".join(f", {c}" for v in spread for c in _accuracy_columns(v))

    if peers:
        aggregates += f", lead({TS}) OVER w AS _next"
    emitted = f"_next IS DISTINCT FROM {TS}" if peers else "_m <> 0"
    sql += f""",
valued AS (
    SELECT {key_list}, {TS}, _m, {aggregates}
    FROM {frame_source}
    WINDOW w AS (PARTITION BY {key_list} ORDER BY {order} {frame})
)
SELECT {key_list}, {_finished(plan, values, counts)},
       epoch_ms({TS}) AS {quote(EVENT_TIMESTAMP)}{check_columns}
FROM valued WHERE {emitted}"""
    return sql


HUGEINT_BITS = 125  # the magnitude an exact running total may reach (DuckDB's HUGEINT holds 127 bits)


def running_total_scales(con: Any, plan: TransformPlan, source: str) -> dict[str, int] | None:
    """Whether the kernel may take each value as a running total of exact contributions
    (``_running_totals_sql``), and each float column's scale: for continuous and lifetime windows
    whose aggregations are all counts, sums and means, where every float column's values times
    ``2**scale`` are integers whose totals fit a HUGEINT. Integer totals never drift, so the value
    is the exact sum, rounded once (the float contract forbids running float totals); None where
    they do not fit."""
    if hop_ms(plan) is not None:
        return None
    if not all(isinstance(f.aggregation, (Count, Sum, Mean)) for f in plan.features):
        return None
    floats = [
        value_column(i)
        for i, f in enumerate(plan.features)
        if not isinstance(f.aggregation, Count) and f.input_dtype is not None and f.input_dtype.is_float
    ]
    if not floats:
        return {}
    spans = ", ".join(f"min(abs({v})) FILTER ({v} <> 0), max(abs({v})), count({v})" for v in floats)
    (found,) = con.execute(f"SELECT {spans} FROM {source}").fetchall()
    scales = {}
    for i, value in enumerate(floats):
        smallest, largest, n = found[3 * i : 3 * i + 3]
        if smallest is None:  # only zeros and nulls
            scales[value] = 0
            continue
        # A double in [2**(e-1), 2**e) is a multiple of 2**(e-53): scaled by 2**(53 - e) of the
        # smallest, every value is an integer.
        scale = 53 - math.frexp(smallest)[1]
        if abs(scale) > 1000 or math.frexp(largest)[1] + scale + max(n, 1).bit_length() > HUGEINT_BITS:
            return None
        scales[value] = scale
    return scales


def _running_totals_sql(plan: TransformPlan, rows: str, scales: dict[str, int]) -> str:
    """The feature rows of a continuous or lifetime window of counts, sums and means (see
    ``running_total_scales``). An event is in the frame of ``t`` from ``t = e - high + 1`` until it leaves
    at ``t = e - low + 1`` (``Window.frame``): it adds its exact (integer) contribution at the
    first time and takes it back at the second, and a key's value at each such time is the running
    total of those changes. One grouping and one running sum: the cost per event does not grow
    with a key's events per window, and integer totals never drift."""
    keys = [quote(k) for k in plan.key_names]
    key_list = ", ".join(keys)
    low, high = plan.window.frame()
    contributions: dict[str, str] = {}  # a column's exact contribution of one event
    results: dict[str, str] = {}  # the running total as the value ``_finished`` takes
    counts: list[str] = []
    for i, feature in enumerate(plan.features):
        v = value_column(i)
        if isinstance(feature.aggregation, Count):
            contributions[v] = f"CASE WHEN {v} IS NOT NULL THEN 1 ELSE 0 END"
        elif v in scales:
            contributions[v] = f"CAST({v} * pow(2.0, {scales[v]}) AS HUGEINT)"
        else:
            contributions[v] = f"CAST({v} AS HUGEINT)"
        if isinstance(feature.aggregation, Mean):
            contributions[f"{v}_c"] = f"CASE WHEN {v} IS NOT NULL THEN 1 ELSE 0 END"
            counts.append(f"{v}_c")
    for column in contributions:
        total = f"sum({column}) OVER (PARTITION BY {key_list} ORDER BY {TS} ROWS UNBOUNDED PRECEDING)"
        if column in scales:  # the exact total, rounded once
            total = f"CAST({total} AS DOUBLE) * pow(2.0, {-scales[column]})"
        results[column] = total
    enter = ", ".join(f"{c} AS {name}" for name, c in contributions.items())
    changes = f"SELECT {key_list}, {TS} - ({high - 1}) AS {TS}, {enter} FROM {rows}"
    if low is not None:
        leave = ", ".join(f"-({c}) AS {name}" for name, c in contributions.items())
        changes += f" UNION ALL SELECT {key_list}, {TS} - ({low - 1}) AS {TS}, {leave} FROM {rows}"
    merged = ", ".join(f"sum({name}) AS {name}" for name in contributions)
    values = [value_column(i) for i in range(len(plan.features))]
    return f"""
WITH per_time AS (
    SELECT {key_list}, {TS}, {merged} FROM ({changes}) WHERE {TS} <= {LAST_ROW_MS} GROUP BY {key_list}, {TS}
),
valued AS (SELECT {key_list}, {TS}, {", ".join(f"{r} AS {c}" for c, r in results.items())} FROM per_time)
SELECT {key_list}, {_finished(plan, values, counts)}, epoch_ms({TS}) AS {quote(EVENT_TIMESTAMP)}
FROM valued"""


def _finished(plan: TransformPlan, values: list[str], counts: list[str]) -> str:
    """The feature columns from the merged value columns (a mean: its sum over its count)."""

    def result(v: str) -> str:
        return f"CASE WHEN {v}_c > 0 THEN {v} / {v}_c END" if f"{v}_c" in counts else v

    return ", ".join(
        f"{_finish(f.aggregation, f.dtype, result(v))} AS {quote(f.name)}"
        for f, v in zip(plan.features, values, strict=True)
    )


def _one_hop(plan: TransformPlan) -> bool:
    """Tumbling: each window is one hop, merged per hop first (``per_hop``), whose partial is its value."""
    low, _ = plan.window.frame()
    return per_hop(plan) and low is not None and -low == hop_ms(plan)


def reads_once(plan: TransformPlan) -> bool:
    """Whether ``feature_rows`` reads its rows once (tumbling windows without variances), so they
    can come as a stream, never stored."""
    return _one_hop(plan) and not _variance_columns(plan)


def _single_hop(plan: TransformPlan, values: list[str], counts: list[str], low: int) -> str:
    """The rest of the query where each window is one hop (tumbling) and ``ev`` holds one partial
    per key and hop, at the hop's start: the value at a mark is the partial of the hop its frame
    starts with, or the empty value. A join, not a window: nothing to sort."""
    keys = [quote(k) for k in plan.key_names]
    on = " AND ".join(f"m.{k} = ev.{k}" for k in keys)
    picked = ", ".join(f"ev.{c} AS {c}" for c in [*values, *counts])
    return f""",
valued AS (
    SELECT {", ".join(f"m.{k} AS {k}" for k in keys)}, m.{TS} AS {TS}, {picked}
    FROM marks m LEFT JOIN ev ON {on} AND ev.{TS} = m.{TS} + ({low})
)
SELECT {", ".join(keys)}, {_finished(plan, values, counts)}, epoch_ms({TS}) AS {quote(EVENT_TIMESTAMP)}
FROM valued"""


def hop_ms(plan: TransformPlan) -> int | None:
    """The window's hop (hopping and tumbling windows), else None (continuous, lifetime)."""
    window = plan.window
    return window.hop_ms if isinstance(window, Sliding) else None


def per_hop(plan: TransformPlan) -> bool:
    """Whether the kernel first merges each key's events per hop (``_partial``): for hopping and
    tumbling windows whose aggregations all merge exactly in SQL, so a window's cost follows its
    hops, not its events."""
    return hop_ms(plan) is not None and all(isinstance(f.aggregation, MERGEABLE) for f in plan.features)


def _variance_columns(plan: TransformPlan) -> list[str]:
    return sorted(
        {value_column(i) for i, f in enumerate(plan.features) if isinstance(f.aggregation, Variance)}
    )


def _accuracy_columns(value: str) -> dict[str, str]:
    """What ``_inexact`` needs to judge a variance of ``value``: count, shifted mean and variance,
    smallest and largest value."""
    shifted = f"{value} - {value}_p"
    return {
        f"{value}_n": f"count({value})",
        f"{value}_m": f"avg({shifted})",
        f"{value}_q": f"var_pop({shifted})",
        f"{value}_lo": f"arg_min({value}, {value})",
        f"{value}_hi": f"arg_max({value}, {value})",
    }


def _inexact(table: pa.Table, value: str) -> np.ndarray:
    """Rows whose double-precision variance of ``value`` may miss the exact one by more than the
    contract allows: a segment tree's rounding error is about ``log2(n) * eps * (1 + mean^2 / var)``
    of the (pivot-shifted) values, and a zero variance of unequal values is rounding alone."""
    n = table.column(f"{value}_n").to_numpy(zero_copy_only=False).astype(np.float64)
    mean = table.column(f"{value}_m").fill_null(0.0).to_numpy(zero_copy_only=False)
    var = table.column(f"{value}_q").fill_null(0.0).to_numpy(zero_copy_only=False)
    unequal = pc.fill_null(pc.not_equal(table.column(f"{value}_lo"), table.column(f"{value}_hi")), False)
    with np.errstate(divide="ignore", invalid="ignore"):
        bound = (np.log2(np.maximum(n, 1.0)) + 2.0) * EPSILON * (1.0 + mean * mean / var)
    return (n >= 2) & np.where(var > 0, bound > ACCURACY, unequal.to_numpy(zero_copy_only=False))


def _exact_variances(plan: TransformPlan, rows: Callable[[], pa.Table], table: pa.Table) -> pa.Table:
    """The table with the variances ``_inexact`` flags recomputed exactly by the monoids themselves
    (``transforms.aggregations``), from each flagged row's frame, and the check columns dropped."""
    spread = _variance_columns(plan)
    flagged = {v: np.flatnonzero(_inexact(table, v)) for v in spread}
    if any(len(i) for i in flagged.values()):
        frames = _KeyFrames(plan, rows())
        times = table.column(EVENT_TIMESTAMP).cast(pa.int64()).to_numpy() // 1000
        keys = [table.column(k).to_pylist() for k in plan.key_names]
        for i, feature in enumerate(plan.features):
            v = value_column(i)
            if v not in spread or not len(flagged[v]):
                continue
            column = table.column(feature.name).to_pylist()
            for row in flagged[v]:
                key = tuple(k[row] for k in keys)
                values = frames.values(key, i, plan.window.bounds(int(times[row])))
                acc = feature.aggregation.create()
                for value in values:
                    acc = feature.aggregation.add(acc, value, 0)
                column[row] = feature_value(feature.aggregation.result(acc), feature.dtype)
            index = table.column_names.index(feature.name)
            table = table.set_column(index, feature.name, pa.array(column, table.schema.field(index).type))
    return table.drop_columns([c for v in spread for c in _accuracy_columns(v)])


class _KeyFrames:
    """Stage 1's rows by key, sorted by time, for recomputing a few frames exactly."""

    def __init__(self, plan: TransformPlan, rows: pa.Table) -> None:
        order = [(k, "ascending") for k in plan.key_names] + [(TS, "ascending")]
        rows = rows.sort_by(order)
        self.times: dict[tuple[Any, ...], list[int]] = {}
        self.rows: dict[tuple[Any, ...], list[int]] = {}
        self.table = rows
        keys = [rows.column(k).to_pylist() for k in plan.key_names]
        times = rows.column(TS).to_pylist()
        for position, (key, ts) in enumerate(zip(zip(*keys, strict=True), times, strict=True)):
            self.times.setdefault(key, []).append(ts)
            self.rows.setdefault(key, []).append(position)

    def values(self, key: tuple[Any, ...], feature: int, bounds: tuple[int, int]) -> list[Any]:
        times = self.times[key]
        start, end = bisect_left(times, bounds[0]), bisect_left(times, bounds[1])
        positions = self.rows[key][start:end]
        column = self.table.column(value_column(feature)).take(pa.array(positions, pa.int64())).to_pylist()
        return [v for v in column if v is not None]


def feature_rows(
    con: Any, plan: TransformPlan, rows: pa.Table | str, order_by: Sequence[str] = ()
) -> pa.Table:
    """Stage 2 over ``rows`` (an Arrow table, or a table or subquery of ``con`` in SQL, with the keys,
    ``_ts`` and ``_v<i>``): the feature rows as an Arrow table (event time as UTC microseconds),
    sorted by the SQL expressions ``order_by`` over its columns (DuckDB sorts in parallel, far
    faster than Arrow)."""
    source = rows
    if isinstance(rows, pa.Table):
        con.register("_mlfs_rows", rows)
        source = "_mlfs_rows"
    try:
        few = not _one_hop(plan) and _few_rows_per_key(con, plan, str(source))
        scales = None if few or not RUNNING_TOTALS else running_total_scales(con, plan, str(source))
        if scales is not None:
            sql = _running_totals_sql(plan, str(source), scales)
        else:
            sql = feature_rows_sql(plan, str(source), few)
        if order_by:
            sql = f"SELECT * FROM ({sql}) ORDER BY {', '.join(order_by)}"
        try:
            table = _utc(con.sql(sql).to_arrow_table())
        except (duckdb.ConversionException, duckdb.OutOfRangeException) as err:
            if not plan.integer_features():
                raise
            raise plan.out_of_range(plan.integer_features(), str(err).splitlines()[0]) from None
        if any(isinstance(f.aggregation, Variance) for f in plan.features):
            table = _exact_variances(plan, lambda: con.sql(f"SELECT * FROM {source}").to_arrow_table(), table)
    finally:
        if isinstance(rows, pa.Table):
            con.unregister("_mlfs_rows")
    return table


def _few_rows_per_key(con: Any, plan: TransformPlan, source: str) -> bool:
    """Whether no key has more than ``RANGE_ROWS_PER_KEY`` rows: DuckDB's ``RANGE`` frames cost per
    row with the rows of the key (docs/benchmarks.md), and below that beat the as-of join."""
    keys = ", ".join(quote(k) for k in plan.key_names)
    sizes = f"SELECT count(*) AS n FROM {source} GROUP BY {keys}"
    (most,) = con.execute(f"SELECT max(n) FROM ({sizes})").fetchall()
    return most[0] is None or most[0] <= RANGE_ROWS_PER_KEY


def _utc(table: pa.Table) -> pa.Table:
    """DuckDB's naive timestamps (UTC by construction) as UTC microseconds."""
    utc = pa.timestamp("us", tz="UTC")
    columns = []
    for column in table.columns:
        kind = column.type
        if pa.types.is_timestamp(kind):
            column = column.cast(pa.timestamp("us")).cast(utc)
        elif pa.types.is_list(kind) and pa.types.is_timestamp(kind.value_type):
            column = column.cast(pa.list_(pa.timestamp("us"))).cast(pa.list_(utc))
        columns.append(column)
    return pa.table(columns, names=table.column_names)
