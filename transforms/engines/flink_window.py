"""Stage 2 of continuous and lifetime windows on Flink: MLFS's keyed window operator.

``flink_sql.stage2_sql`` states these windows as a bounded ``OVER`` query, which Flink runs by
revisiting every time a key holds in its frame at each new time, so a key's cost per event grows
with its events in the window (a hot key's 7-day window). ``ContinuousWindow`` (Java,
``flink_java``) gives the same rows in time linear in the events: each aggregate is updated by the
rows entering and leaving the frame (``Window.frame``), one row per key and time, from event-time
timers, in checkpointed keyed state. Its result columns and types are the ``OVER`` query's, so
everything after stage 2 reads either the same way; the ``OVER`` query stays the reference that
``benchmarks/flink_ceiling.py`` compares with (``over="sql"``).
"""

from __future__ import annotations

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
from transforms.dtypes import DType
from transforms.engines.flink_stage1 import row_columns
from transforms.plan import TransformPlan


def window_kind(agg: Aggregation, input_dtype: DType | None) -> str:
    """The aggregate's kind in ``ContinuousWindow``'s spec (``Aggregates.java``)."""
    if isinstance(agg, Count):
        return "count"
    if isinstance(agg, Sum):
        if input_dtype is not None and input_dtype.is_float:
            return "sum_double"
        return "sum_int" if input_dtype is not None and input_dtype.name == "Int32" else "sum_long"
    if isinstance(agg, Mean):
        return "mean"
    if isinstance(agg, Min):
        return "min"
    if isinstance(agg, Max):
        return "max"
    if isinstance(agg, Latest):
        return "latest"
    if isinstance(agg, First):
        return "first"
    if isinstance(agg, LastK):
        return f"last{agg.k}"
    if isinstance(agg, Variance):  # Stddev too
        return f"{'std' if isinstance(agg, Stddev) else 'var'}_{'samp' if agg.sample else 'pop'}"
    if isinstance(agg, CountDistinct):
        return "distinct"
    raise TypeError(f"no window operator for {agg!r}")


def window_spec(plan: TransformPlan) -> str:
    """``ContinuousWindow``'s spec: field indexes in stage 1's prepared rows, the frame's start
    relative to its end (``Window.frame``; ``none`` for a lifetime window) and each feature's kind
    and input (the ordered text ``_o<i>`` for the by-time monoids, else ``_v<i>``)."""
    index = {name: i for i, (name, _) in enumerate(row_columns(plan))}
    low, high = plan.window.frame()
    assert high == 1, "a continuous or lifetime frame ends at its row's time"
    inputs = [index[f"_o{i}" if f.aggregation.by_time else f"_v{i}"] for i, f in enumerate(plan.features)]
    features = ",".join(
        f"{window_kind(f.aggregation, f.input_dtype)}:{column}"
        for f, column in zip(plan.features, inputs, strict=True)
    )
    keys = ",".join(str(index[k]) for k in plan.key_names)
    return f"keys={keys};ts={index['_ts']};low={'none' if low is None else low};features={features}"


def window_results(plan: TransformPlan, t_env: Any, table: str, over: Any) -> Any:
    """Stage 2's results (a DataStream, one row per key and time) over the registered view
    ``table`` of stage 1's rows, typed as the ``OVER`` query ``over`` (a Table, never run) types them."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway

    jvm = get_gateway().jvm
    rows = t_env.to_data_stream(t_env.from_path(f"`{table}`"))._j_data_stream
    schema = over._j_table.getResolvedSchema().toPhysicalRowDataType()
    result_type = jvm.org.apache.flink.table.runtime.typeutils.ExternalTypeInfo.of(schema)
    spec = window_spec(plan)
    results = (
        rows.keyBy(jvm.mlfs.flink.WindowKey(spec))
        .process(jvm.mlfs.flink.ContinuousWindow(spec), result_type)
        .name(f"{table}-window")
        .uid(f"{table}-window")
    )
    return DataStream(results)
