"""Compiling a ``TransformPlan``'s windows and aggregations to Flink SQL, and reading its results back.

Stage 1 (``transforms.engines.flink``) hands Flink a table ``prepared`` of typed rows: the keys,
``_ts`` (event time, epoch ms), one input column ``_v<i>`` per feature and, for the order-sensitive
monoids (latest, first, last_k), an order-preserving text ``_o<i>`` of ``(event time, value)``, so
that Flink's own ``MAX``/``MIN``/``LISTAGG`` break ties exactly as ``transforms.aggregations`` does.
Continuous and hopping windows also get a *leave marker* per row at ``_ts + size`` with null
values, which makes Flink emit the rows where events leave a window. Keyed state and
aggregation stay in Java operators:

* continuous: ``OVER (PARTITION BY keys ORDER BY rt RANGE BETWEEN size - 1 ms PRECEDING AND CURRENT ROW)``;
* lifetime: the same with ``UNBOUNDED PRECEDING``;
* hopping and tumbling: the ``HOP`` window table function grouped by window, keeping the windows
  with a row or a marker in their last hop (exactly the ends where the window changed).

Jobs run continuous and lifetime windows in MLFS's window operator (``flink_window``), which gives
the ``OVER`` query's rows, one per key and time, in time linear in a key's events; the ``OVER``
query states them, types the operator's results and is the reference the benchmarks compare with.
An ``OVER`` aggregate gives a result per input row, and rows of one key and time (ties, or an
event at another's leave time) share a frame, so they give equal results, one after another:
run as SQL (``over="sql"``), ``FirstOfTime`` (Java, stateless, chained) keeps the first.
"""

from __future__ import annotations

import struct
from typing import Any

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
from transforms.events import Lateness
from transforms.plan import EVENT_TIMESTAMP, TransformPlan
from transforms.timeutil import datetime_to_ms, ms_to_datetime
from transforms.windows import LAST_ROW_MS, Sliding

LAST_ROW = ms_to_datetime(LAST_ROW_MS).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]  # as a SQL literal
PREPARED = "prepared"
END = "_end"


def marker_offset_ms(plan: TransformPlan) -> int | None:
    """How far after a row its leave marker goes (None: the window needs no markers)."""
    return plan.window.leave_offset_ms()


BOUNDED_REPLAY_LAG_MS = 500 * 86_400_000  # without lateness, hold the watermark back 500 days


def source_lag_ms(lateness: Lateness | None) -> int:
    """How far a source's watermark trails its latest event time: one millisecond past its lateness
    bound, so an event exactly at the bound is still ahead of Flink's watermark (None: a bounded
    replay, whose rows are emitted at the end of the input)."""
    return BOUNDED_REPLAY_LAG_MS if lateness is None else lateness.bound_ms + 1


def watermark_lag_ms(plan: TransformPlan, lateness: Lateness | None) -> int:
    """``source_lag_ms`` over a view's prepared rows that carry no watermark (a joined stage 1's):
    the markers run ``size`` ahead of the events, so the lag adds ``size``."""
    return source_lag_ms(lateness) + (marker_offset_ms(plan) or 0)


# -- order-preserving text of (event time, value) ------------------------------------------------

_SIGN = 1 << 63


def _hex64(n: int) -> str:
    return format(n, "016x")


def encode_ordered(ts: int, value: Any, dtype: DType) -> str:
    """Text whose byte order is the order of ``(ts, value)`` (values as the monoids compare them)."""
    return _hex64(ts + _SIGN) + _encode_value(value, dtype)


def _encode_value(value: Any, dtype: DType) -> str:
    name = dtype.name
    if name in ("Int64", "Int32", "UnixTimestamp"):
        return _hex64(int(value) + _SIGN)
    if name in ("Float64", "Float32"):
        bits = struct.unpack(">Q", struct.pack(">d", float(value)))[0]
        return _hex64(bits ^ 0xFFFFFFFFFFFFFFFF if bits & _SIGN else bits | _SIGN)
    if name == "Bool":
        return "1" if value else "0"
    if name == "String":
        return str(value).encode("utf-8").hex()  # UTF-8 byte order is code point order
    if name == "Bytes":
        return bytes(value).hex()
    raise TypeError(f"no ordered encoding for {dtype}")


def decode_ordered(text: str, dtype: DType) -> tuple[int, Any]:
    ts = int(text[:16], 16) - _SIGN
    body = text[16:]
    name = dtype.name
    value: Any
    if name in ("Int64", "Int32", "UnixTimestamp"):
        value = int(body, 16) - _SIGN
    elif name in ("Float64", "Float32"):
        bits = int(body, 16)
        bits = bits ^ _SIGN if bits & _SIGN else bits ^ 0xFFFFFFFFFFFFFFFF
        value = struct.unpack(">d", struct.pack(">Q", bits))[0]
    elif name == "Bool":
        value = body == "1"
    elif name == "String":
        value = bytes.fromhex(body).decode("utf-8")
    elif name == "Bytes":
        value = bytes.fromhex(body)
    else:
        raise TypeError(f"no ordered encoding for {dtype}")
    return ts, value


# -- SQL ---------------------------------------------------------------------------------------


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def interval(ms: int) -> str:
    """A Flink SQL day-time interval of ``ms`` milliseconds."""
    days, rest = divmod(ms, 86_400_000)
    hours, rest = divmod(rest, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    if days > 999:  # the largest day precision Flink's planner accepts is 3
        raise ValueError(f"Flink cannot express an interval of {days} days (at most 999)")
    return f"INTERVAL '{days} {hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}' DAY(3) TO SECOND(3)"


def _aggregate_sql(agg: Aggregation, i: int, input_dtype: DType | None, over: str = "") -> str:
    """The SQL aggregate of feature ``i``, with ``over`` (`` OVER w`` or nothing) after the call.
    Sums, means and variances of doubles use MLFS's exact functions (``flink_exact``): Flink's own
    drift under retraction and cancel in variances."""
    v, o = quote(f"_v{i}"), quote(f"_o{i}")
    call = _aggregate_call(agg, v, o, input_dtype) + over
    return f"SQRT({call})" if isinstance(agg, Stddev) else call


def _aggregate_call(agg: Aggregation, v: str, o: str, input_dtype: DType | None) -> str:
    if isinstance(agg, Count):
        return f"COUNT({v})"
    if isinstance(agg, Sum):
        return f"mlfs_sum({v})" if input_dtype is not None and input_dtype.is_float else f"SUM({v})"
    if isinstance(agg, Mean):
        return f"mlfs_mean(CAST({v} AS DOUBLE))"
    if isinstance(agg, Min):
        return f"MIN({v})"
    if isinstance(agg, Max):
        return f"MAX({v})"
    if isinstance(agg, Latest):
        return f"MAX({o})"
    if isinstance(agg, First):
        return f"MIN({o})"
    if isinstance(agg, LastK):
        return f"LISTAGG({o}, ',')"
    if isinstance(agg, Variance):  # Stddev too: its square root is taken outside the call
        return f"mlfs_var_{'samp' if agg.sample else 'pop'}(CAST({v} AS DOUBLE))"
    if isinstance(agg, CountDistinct):
        return f"COUNT(DISTINCT {v})"
    raise TypeError(f"no Flink compilation for {agg!r}")


def is_over(plan: TransformPlan) -> bool:
    """Whether stage 2 is an ``OVER`` aggregate (continuous and lifetime windows), whose results
    repeat for rows of one key and time."""
    window = plan.window
    return not (isinstance(window, Sliding) and window.hop is not None)


def stage2_sql(plan: TransformPlan, table: str = PREPARED) -> str:
    """The query over ``table`` (stage 1's rows, with time attribute ``rt``) giving the keys, the
    row's time (``_ts`` in ms, or ``_end`` as a timestamp for hopping windows) and results ``f<i>``."""
    keys = ", ".join(quote(k) for k in plan.key_names)
    window = plan.window
    if isinstance(window, Sliding) and window.hop is not None:
        assert window.hop_ms is not None
        aggregates = ", ".join(
            f"{_aggregate_sql(f.aggregation, i, f.input_dtype)} AS f{i}" for i, f in enumerate(plan.features)
        )
        return (
            f"SELECT {keys}, CAST(window_end AS TIMESTAMP(3)) AS {END}, {aggregates} "
            f"FROM TABLE(HOP(TABLE {quote(table)}, DESCRIPTOR(rt), {interval(window.hop_ms)}, "
            f"{interval(window.size_ms)})) "
            f"GROUP BY {keys}, window_start, window_end "
            f"HAVING MAX(rt) >= window_end - {interval(window.hop_ms)} "
            f"AND window_end <= TIMESTAMP '{LAST_ROW}'"
        )
    low, high = window.frame()
    assert high == 1, "an OVER frame ends at its current row's time"
    frame = f"RANGE BETWEEN {'UNBOUNDED' if low is None else interval(-low)} PRECEDING AND CURRENT ROW"
    aggregates = ", ".join(
        f"{_aggregate_sql(f.aggregation, i, f.input_dtype, ' OVER w')} AS f{i}"
        for i, f in enumerate(plan.features)
    )
    return (
        f"SELECT {keys}, _ts, {aggregates} FROM {quote(table)} "
        f"WINDOW w AS (PARTITION BY {keys} ORDER BY rt {frame})"
    )


# -- results back to feature rows -------------------------------------------------------------


def _result(agg: Aggregation, dtype: DType, value: Any, element: DType | None) -> Any:
    """A SQL aggregate as the monoid's result (engine values: timestamps in ms)."""
    if value is None:
        return agg.empty()
    if isinstance(agg, (Count, CountDistinct)):
        return int(value)
    item_type = element if element is not None else dtype
    if isinstance(agg, (Latest, First)):
        return decode_ordered(value, item_type)[1]
    if isinstance(agg, LastK):
        items = sorted((decode_ordered(text, item_type) for text in value.split(",")), reverse=True)
        return [v for _, v in items[: agg.k]]
    return value


def _as_feature(value: Any, dtype: DType) -> Any:
    """Engine value (timestamps in ms) to the stored feature value, as every engine stores it."""
    if value is None:
        return None
    if dtype.name == "UnixTimestamp":
        return feature_value(ms_to_datetime(value), dtype)
    if dtype.element is not None and dtype.element.name == "UnixTimestamp":
        return feature_value([ms_to_datetime(v) for v in value], dtype)
    return feature_value(value, dtype)


# The Python type every value of a result column has when the column needs no conversion (the
# monoid's result is already the stored feature value); any other value takes the general path.
_PLAIN_RESULTS = {"Int64": int, "Float64": float, "String": str, "Bool": bool}


def plain_result(agg: Aggregation, dtype: DType) -> type | None:
    """The Python type of a result column whose values need no conversion, when they all have it
    (``_PLAIN_RESULTS``); None where each value takes the general path."""
    plain = _PLAIN_RESULTS.get(dtype.name) if dtype.element is None else None
    if isinstance(agg, (Count, CountDistinct)) and plain is not int:
        return None  # a count is an integer, whatever the feature's declared type
    return None if agg.by_time else plain


def empty_feature(agg: Aggregation, dtype: DType) -> Any:
    """The stored feature value of an empty aggregate (``Aggregation.empty``, converted)."""
    return _as_feature(_result(agg, dtype, None, None), dtype)


def _feature_column(agg: Aggregation, dtype: DType, values: list[Any]) -> list[Any]:
    """A column of SQL aggregates as stored feature values (``_result``, then ``_as_feature``)."""
    plain = plain_result(agg, dtype)
    if plain is not None and set(map(type, values)) <= {plain, type(None)}:
        zero = empty_feature(agg, dtype) if None in values else None  # converted once
        if plain is float:  # NaN is null
            return [zero if v is None else (v if v == v else None) for v in values]
        return [zero if v is None else v for v in values]
    element = dtype.element
    return [_as_feature(_result(agg, dtype, v, element), dtype) for v in values]


def feature_rows(plan: TransformPlan, columns: list[list[Any]]) -> list[dict[str, Any]]:
    """Stage 2's results, one list per column (keys, time, ``f<i>``...), as feature rows."""
    n_keys = len(plan.keys)
    names = [*plan.key_names, *(f.name for f in plan.features), EVENT_TIMESTAMP]
    converted = columns[:n_keys]
    for i, feature in enumerate(plan.features):
        converted.append(_feature_column(feature.aggregation, feature.dtype, columns[n_keys + 1 + i]))
    # A time is epoch ms, or a naive UTC datetime (a hopping window's end).
    converted.append(
        [ms_to_datetime(w if isinstance(w, int) else datetime_to_ms(w)) for w in columns[n_keys]]
    )
    return [dict(zip(names, values, strict=True)) for values in zip(*converted, strict=True)]
