"""Stage 1 in the JVM for views without an event transform: Spark SQL expressions take the rows
``transforms.arrow_events.split_clean`` would take (a typed event time at or after 1970, non-null
keys of the exact key type) and coerce their values by the same rules, so only the other rows
(the future dead letters) cross into Python.

``clean_rows`` returns None whenever a column's type is not one of the pairs mapped here; the
caller then runs every row through Python, which gives the same result more slowly.
"""

from __future__ import annotations

from typing import Any

from transforms.dtypes import DType
from transforms.plan import TransformPlan

# Spark type names (``DataType.typeName()``) per MLFS value type, taken as they are.
_EXACT = {"String": "string", "Int32": "integer", "Bool": "boolean", "Bytes": "binary"}
_INTEGERS = ("integer", "long")
_NUMERIC = ("integer", "long", "float", "double")
_KEY_TYPES = {"String": "string", "Int64": "long", "Int32": "integer"}


def _value(column: Any, spark_type: str | None, dtype: DType | None, time_ms: Any, is_time: bool) -> Any:
    """One aggregation input as the row path coerces it (None: not mapped here)."""
    from pyspark.sql import functions as F

    if is_time:  # the row path replaces the time column by the event time
        if dtype is None:
            return F.lit(True)
        return time_ms if dtype.name == "UnixTimestamp" else None
    if spark_type is None:  # the events have no such column
        return F.lit(None).cast("boolean" if dtype is None else _engine_type(dtype))
    floating = spark_type in ("float", "double")
    if dtype is None:  # Count(col): only nullness, NaN counting as null
        valid = column.isNotNull() & ~F.isnan(column) if floating else column.isNotNull()
        return F.when(valid, F.lit(True))
    name = dtype.name
    if name in ("Float64", "Float32") and spark_type in _NUMERIC:
        floats = column.cast("double")
        return F.when(~F.isnan(floats), floats)
    if name == "Int64" and spark_type in _INTEGERS:
        return column.cast("long")
    if _EXACT.get(name) == spark_type:
        return column
    return None  # timestamps as values and every other pairing: left to Python


def _engine_type(dtype: DType) -> str:
    return {
        "String": "string",
        "Int32": "int",
        "Int64": "bigint",
        "Float32": "double",
        "Float64": "double",
        "Bool": "boolean",
        "Bytes": "binary",
        "UnixTimestamp": "bigint",
    }[dtype.name]


def clean_rows(plan: TransformPlan, events: Any, kind: str, first: str, ts: str) -> tuple[Any, Any] | None:
    """(the clean rows as stage 1's typed columns, the condition that picks them), or None."""
    from pyspark.sql import functions as F

    if plan.event_transform is not None or plan.event_stages:
        return None
    types = {f.name: f.dataType.typeName() for f in events.schema.fields}
    if types.get(plan.timestamp_field) != "timestamp":
        return None
    when = F.col(plan.timestamp_field)
    clean = when.isNotNull() & (F.unix_micros(when) >= 0)
    time_ms = F.unix_millis(when)
    columns = [F.lit(0).cast("tinyint").alias(kind), F.lit(True).alias(first)]
    for name, dtype in plan.keys:
        if types.get(name) != _KEY_TYPES[dtype.name]:
            return None
        clean = clean & F.col(name).isNotNull()
        columns.append(F.col(name))
    columns.append(time_ms.alias(ts))
    for i, feature in enumerate(plan.features):
        source = feature.aggregation.column
        if source is None:  # Count(): every row
            value = F.lit(True)
        else:
            value = _value(
                F.col(source), types.get(source), feature.input_dtype, time_ms, source == plan.timestamp_field
            )
        if value is None:
            return None
        columns.append(value.alias(f"_v{i}"))
    return events.filter(clean).select(*columns), clean
