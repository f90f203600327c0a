"""Stage 1 in the JVM for views without an event transform or with a declarative one (``Select``,
compiled by ``spark_expressions``): Spark SQL expressions take the rows
``transforms.arrow_events.split_clean`` would take (a typed event time in
``timeutil.vectorised_range``, non-null keys of the exact key type, a decided transform) and
coerce their values by the same rules, so only the other rows (the future dead letters) cross into
Python.

``clean_rows`` returns None whenever a column's type is not one of the pairs mapped here; the
caller then runs every row through Python, which gives the same result more slowly.
"""

from __future__ import annotations

from typing import Any

from transforms.dtypes import DType
from transforms.engines.spark_expressions import compile_select
from transforms.expressions import Select
from transforms.plan import TransformPlan
from transforms.timeutil import vectorised_range

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
    """(stage 1's rows for the events Spark SQL prepares, the condition that picks those events),
    or None. Those rows are the clean rows, typed, and a ``filtered`` marker (kind 2) per event a
    ``Select``'s ``where=`` drops; every other event is left to Python."""
    from pyspark.sql import functions as F

    if not plan.declarative_events:
        return None
    transform = plan.event_transform
    raw_types = {f.name: f.dataType.typeName() for f in events.schema.fields}
    if raw_types.get(plan.timestamp_field) != "timestamp":
        return None
    when = F.col(plan.timestamp_field)
    time_ms = F.unix_millis(when)
    low, high = vectorised_range(plan.event_time_range_ms)
    timed = when.isNotNull() & (F.unix_micros(when) >= low * 1000) & (time_ms <= high)
    filtered = None
    if isinstance(transform, Select):
        compiled = compile_select(transform, raw_types)
        if compiled is None:
            return None
        sources = compiled.outputs
        schema = events.select(*[c.alias(name) for name, c in sources.items()]).schema
        types = {f.name: f.dataType.typeName() for f in schema.fields}
        clean = timed & compiled.kept & ~compiled.undecided
        if transform.where is not None:
            filtered = timed & ~compiled.where_undecided & ~compiled.kept
    else:  # no event transform
        sources = {name: F.col(f"`{name}`") for name in raw_types}
        types = raw_types
        clean = timed
    for name, dtype in plan.keys:
        if types.get(name) != _KEY_TYPES[dtype.name]:
            return None
        clean = clean & sources[name].isNotNull()
    for feature in plan.features:
        column = feature.aggregation.column or ""
        is_float = feature.input_dtype is not None and feature.input_dtype.is_float
        if is_float and types.get(column) in ("float", "double"):  # an infinity is a wrong_type
            infinite = sources[column].isin(float("inf"), float("-inf"))
            clean = clean & F.coalesce(~infinite, F.lit(True))
    values = [(name, sources[name]) for name, _ in plan.keys]
    values.append((ts, time_ms))
    for i, feature in enumerate(plan.features):
        source = feature.aggregation.column
        if source is None:  # Count(): every row
            value = F.lit(True)
        else:
            value = _value(
                sources.get(source),
                types.get(source),
                feature.input_dtype,
                time_ms,
                source == plan.timestamp_field,
            )
        if value is None:
            return None
        values.append((f"_v{i}", value))
    if filtered is None:
        marks = [F.lit(0).cast("tinyint").alias(kind), F.lit(True).alias(first)]
        return events.filter(clean).select(*marks, *[v.alias(name) for name, v in values]), clean
    # A dropped event becomes one filtered marker, with no key, time or values.
    marks = [F.when(clean, 0).otherwise(2).cast("tinyint").alias(kind), clean.alias(first)]
    typed = [F.when(clean, v).alias(name) for name, v in values]
    return events.filter(clean | filtered).select(*marks, *typed), clean | filtered
