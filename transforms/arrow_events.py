"""The per-event stage over whole Arrow batches, for views without an event transform or with a
declarative one (``transforms.expressions.Select``).

It gives exactly what ``transforms.events.EventPreparer`` gives row by row, and only takes the
rows it can prove clean: a typed, non-null event time in the view's range and at or after 1970
(``timeutil.vectorised_range``: truncating to the millisecond is flooring) and non-null keys of the
exact key type. Every other row, and every batch whose column types do not map one-to-one onto the
plan's types, is left to the row path, which produces the dead letters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.dtypes import DType
from transforms.expressions import NotVectorisable, Select
from transforms.plan import TransformPlan
from transforms.timeutil import vectorised_range

# How each value type is held inside the engines (timestamps as epoch milliseconds).
ENGINE_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float64(),
    "Float64": pa.float64(),
    "Bool": pa.bool_(),
    "Bytes": pa.binary(),
    "UnixTimestamp": pa.int64(),
}

# How each type is stored (offline Parquet, feature-row tables): timestamps as UTC microseconds.
STORE_TIMESTAMP = pa.timestamp("us", tz="UTC")
_STORE_TYPES: dict[str, pa.DataType] = {
    **ENGINE_TYPES,
    "Float32": pa.float32(),
    "UnixTimestamp": STORE_TIMESTAMP,
}


def arrow_type(dtype: DType) -> pa.DataType:
    """The Arrow type a feature of ``dtype`` is stored as."""
    if dtype.element is not None:
        return pa.list_(arrow_type(dtype.element))
    return _STORE_TYPES[dtype.name]


_KEY_TYPES = {"String": (pa.string(), pa.large_string()), "Int64": (pa.int64(),), "Int32": (pa.int32(),)}
_NUMERIC = (pa.int32(), pa.int64(), pa.float32(), pa.float64())


def python_values(array: pa.Array) -> list[Any]:
    """``array.to_pylist()``; through NumPy for integers, floats, booleans, text and bytes without
    nulls, which is 10-50x faster (Arrow makes a scalar object per value)."""
    kind = array.type
    plain = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    text = pa.types.is_string(kind) or pa.types.is_large_string(kind)
    if array.null_count == 0 and (
        plain or text or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    ):
        values: list[Any] = array.to_numpy(zero_copy_only=False).tolist()
        return values
    return array.to_pylist()


def one_array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    """A column as one Arrow array (a table's columns come in chunks)."""
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def column_values(column: pa.ChunkedArray | pa.Array) -> list[Any]:
    """``column.to_pylist()``, with zoned timestamps made UTC datetimes in one step (Arrow's
    per-value time zone conversion costs more than an online write of the values)."""
    kind = column.type
    if not (pa.types.is_timestamp(kind) and kind.tz is not None):
        return python_values(one_array(column))
    values = column.cast(pa.timestamp(kind.unit)).to_pylist()
    return [None if v is None else v.replace(tzinfo=UTC) for v in values]


def row_dicts(table: pa.Table) -> list[dict[str, Any]]:
    """``table.to_pylist()`` by ``column_values``."""
    columns = [column_values(c) for c in table.columns]
    names = table.column_names
    return [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]


def same_as_previous(table: pa.Table, columns: Sequence[str]) -> np.ndarray:
    """Whether each row equals the row before it on ``columns`` (nulls equal nulls; the first row:
    False): in a table sorted by those columns, where a run of equal rows continues."""
    repeated = np.zeros(table.num_rows, bool)
    if table.num_rows < 2:
        return repeated
    repeated[1:] = True
    for name in columns:
        column = table.column(name)
        after, before = column.slice(1), column.slice(0, table.num_rows - 1)
        same = pc.fill_null(pc.equal(after, before), False)
        same = pc.or_(same, pc.and_(pc.is_null(after), pc.is_null(before)))
        repeated[1:] &= same.to_numpy(zero_copy_only=False)
    return repeated


def time_ms_column(column: pa.Array) -> pa.Array | None:
    """A timestamp column as epoch milliseconds (None if the column is not a timestamp)."""
    if not pa.types.is_timestamp(column.type):
        return None
    raw = pc.cast(column, pa.int64())
    per_ms = {"s": None, "ms": 1, "us": 1000, "ns": 1_000_000}[column.type.unit]
    if per_ms is None:
        return pc.multiply(raw, 1000)
    return raw if per_ms == 1 else pc.divide(raw, per_ms)  # integer division; rows are >= 0


def _value(
    column: pa.Array | None, dtype: DType | None, n: int, time_ms: pa.Array, is_time: bool
) -> pa.Array | None:
    """One aggregation input, as the row path would coerce it (None: not vectorisable)."""
    if is_time:  # the row path replaces the time column by the event time
        if dtype is None:
            return pa.array(np.ones(n, dtype=bool))
        return time_ms if dtype.name == "UnixTimestamp" else None
    if column is None:
        return pa.nulls(n, pa.bool_() if dtype is None else ENGINE_TYPES[dtype.name])
    if dtype is None:  # Count(col): only nullness, NaN counting as null
        valid = pc.is_valid(column)
        if pa.types.is_floating(column.type):
            valid = pc.and_(valid, pc.invert(pc.fill_null(pc.is_nan(column), False)))
        return pc.if_else(valid, pa.scalar(True), pa.scalar(None, pa.bool_()))
    name = dtype.name
    if name in ("Float64", "Float32") and column.type in _NUMERIC:
        floats = pc.cast(column, pa.float64(), safe=False)
        return pc.if_else(pc.fill_null(pc.is_nan(floats), False), pa.scalar(None, pa.float64()), floats)
    if name == "Int64" and column.type in (pa.int64(), pa.int32()):
        return pc.cast(column, pa.int64())
    if name == "Int32" and column.type == pa.int32():
        return column
    if name == "String" and column.type in (pa.string(), pa.large_string()):
        return pc.cast(column, pa.string())
    if name == "Bool" and column.type == pa.bool_():
        return column
    if name == "Bytes" and column.type in (pa.binary(), pa.large_binary()):
        return pc.cast(column, pa.binary())
    if name == "UnixTimestamp":
        as_ms = time_ms_column(column)
        if as_ms is None or (pc.min(as_ms).as_py() or 0) < 0:
            return None  # before 1970, truncating to the millisecond would not floor
        return as_ms
    return None


def typed_time_ms(
    batch: pa.RecordBatch | pa.Table, field: str, time_range_ms: tuple[int, int]
) -> tuple[pa.Array, pa.Array] | None:
    """A batch's event times in ms and which of them the row path would accept (not null, in the
    range; truncating to the millisecond is flooring there, ``vectorised_range``), where column
    ``field`` is a timestamp (None: the row path times the events)."""
    if field not in batch.schema.names:
        return None
    raw_ms = time_ms_column(batch.column(field))
    if raw_ms is None:
        return None
    low, high = vectorised_range(time_range_ms)
    return raw_ms, pc.fill_null(pc.and_(pc.greater_equal(raw_ms, low), pc.less_equal(raw_ms, high)), False)


def holds(batch: pa.RecordBatch | pa.Table, field: str, types: tuple[pa.DataType, ...]) -> bool:
    """Whether the batch has column ``field`` of one of ``types`` (large strings as strings)."""
    if field not in batch.schema.names:
        return False
    kind = batch.schema.field(field).type
    return kind in types or (pa.types.is_large_string(kind) and pa.string() in types)


@dataclass
class VectorisedBatch:
    """What the vectorised stage took from a batch: the clean rows' keys, time (``_ts``) and input
    values (``_v<i>``), how many events the transform filtered, and the rows left to the row path;
    ``clean_mask`` and ``filtered_mask`` tell which rows of the batch were which."""

    clean: dict[str, pa.Array]
    filtered: int
    rest: pa.RecordBatch
    clean_mask: pa.Array
    filtered_mask: pa.Array


def _transformed(
    plan: TransformPlan, batch: pa.RecordBatch
) -> tuple[pa.Array, pa.Array, pa.Array, dict[str, pa.Array]] | None:
    """A declarative view's events by columns: their times in ms, which are usable
    (``typed_time_ms``), which the transform keeps, and the transform's output columns; None where
    the batch cannot be read so (a Python transform, an untyped time, an inexact expression)."""
    if not plan.declarative_events:
        return None
    times = typed_time_ms(batch, plan.timestamp_field, plan.event_time_range_ms)
    if times is None:
        return None
    raw_ms, timed = times
    columns = dict(zip(batch.schema.names, batch.columns, strict=True))
    kept = pa.array(np.ones(batch.num_rows, dtype=bool))
    if isinstance(plan.event_transform, Select):
        try:
            kept, columns = plan.event_transform.arrow(batch)
        except NotVectorisable:
            return None
    return raw_ms, timed, kept, columns


@dataclass
class MissingFields:
    """Events the row path would dead-letter for a missing time or key, found by columns: their
    positions in the batch, each one's first missing key (None: no time) and its time in ms."""

    mask: np.ndarray
    positions: list[int]
    keys: list[str | None]
    times: list[int | None]


def missing_fields(plan: TransformPlan, batch: pa.RecordBatch) -> MissingFields | None:
    """The events without a time (``missing_time``), and the timed events the transform keeps whose
    key is null (``missing_key``, naming the first such key in the view's key order), as the row
    path decides them (``EventPreparer``); None where the batch cannot be read so."""
    transformed = _transformed(plan, batch)
    if transformed is None:
        return None
    raw_ms, timed, kept, columns = transformed
    n = batch.num_rows
    no_time = pc.is_null(batch.column(plan.timestamp_field)).to_numpy(zero_copy_only=False)
    reached = pc.fill_null(pc.and_(timed, kept), False).to_numpy(zero_copy_only=False)
    missing_key: list[str | None] = [None] * n
    keyless = np.zeros(n, dtype=bool)
    for name, _ in plan.keys:
        column = columns.get(name)
        null = np.ones(n, dtype=bool) if column is None else pc.is_null(column).to_numpy(zero_copy_only=False)
        first = reached & null & ~keyless
        for i in np.flatnonzero(first):
            missing_key[i] = name
        keyless |= first
    mask = no_time | keyless
    positions = np.flatnonzero(mask).tolist()
    time_values = raw_ms.to_pylist()
    return MissingFields(
        mask,
        positions,
        [missing_key[i] for i in positions],
        [None if no_time[i] else time_values[i] for i in positions],
    )


def split_clean(plan: TransformPlan, batch: pa.RecordBatch) -> VectorisedBatch | None:
    """The rows this stage can prepare exactly as the row path would, prepared, and the others.

    None when the batch cannot be vectorised at all (a Python event transform, column types that
    do not map one-to-one, or an expression the Arrow kernels would evaluate differently).
    """
    transformed = _transformed(plan, batch)
    if transformed is None:
        return None
    raw_ms, timed, kept, columns = transformed
    clean = timed
    for name, dtype in plan.keys:
        column = columns.get(name)
        if column is None or column.type not in _KEY_TYPES[dtype.name]:
            return None
        clean = pc.and_(clean, pc.is_valid(column))
    for feature in plan.features:
        column = columns.get(feature.aggregation.column or "")
        if feature.input_dtype is not None and feature.input_dtype.is_float and column is not None:
            if pa.types.is_floating(column.type):  # an infinity is the row path's wrong_type
                clean = pc.and_(clean, pc.fill_null(pc.invert(pc.is_inf(column)), True))
    clean = pc.and_(pc.fill_null(clean, False), kept)
    filtered = pc.and_(timed, pc.invert(kept))
    n = pc.sum(clean).as_py() or 0
    if n == batch.num_rows:  # the usual batch: nothing to filter out
        picked, time_ms = columns, raw_ms
    else:
        picked = {name: column.filter(clean) for name, column in columns.items()}
        time_ms = raw_ms.filter(clean)
    out: dict[str, pa.Array] = {"_ts": time_ms}
    for name, _ in plan.keys:
        out[name] = (
            pc.cast(picked[name], pa.string()) if picked[name].type == pa.large_string() else picked[name]
        )
    for i, feature in enumerate(plan.features):
        column_name = feature.aggregation.column
        if column_name is None:  # Count(): every row
            out[f"_v{i}"] = pa.array(np.ones(n, dtype=bool))
            continue
        value = _value(
            picked.get(column_name), feature.input_dtype, n, time_ms, column_name == plan.timestamp_field
        )
        if value is None:
            return None
        out[f"_v{i}"] = value
    rest = batch.slice(0, 0) if n == batch.num_rows else batch.filter(pc.invert(pc.or_(clean, filtered)))
    return VectorisedBatch(out, pc.sum(filtered).as_py() or 0, rest, clean, filtered)
