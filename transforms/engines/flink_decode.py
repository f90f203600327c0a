"""Stage 1 in the JVM for the declarative views of a source (no event transform, or a ``Select``;
no model stages; DESIGN §4: no Python per event for them).

``JsonPrepare`` (Java, ``flink_java``) decodes each JSON event once, times it and prepares every
view's row as ``EventPreparer`` would, into the columns of ``flink_stage1.prepare_result_type``;
it decides only the events it can decide exactly (every field the views read present once as a
plain JSON scalar, a time in a canonical form, no value needing a Python rule it does not state)
and marks the rest, which go to stage 1's Python ``prepare`` as before. ``Resequence`` puts each
partition's events back in the order the partition delivered them, so lateness (stage 1's SQL,
unchanged) is judged on that order. Clean events never reach Python.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from transforms.engines.flink_sql import marker_offset_ms, quote
from transforms.engines.flink_stage1 import outcome_fields, view_field_types
from transforms.events import MAX_JSON_DEPTH
from transforms.expressions import Select
from transforms.json_batches import columns_in, needed_fields
from transforms.plan import TransformPlan
from transforms.timeutil import vectorised_range
from transforms.windows import LAST_ROW_MS

_KEY_TYPES = ("String", "Int64", "Int32")
_VALUE_TYPES = ("String", "Int64", "Int32", "Float64", "Float32", "Bool", "UnixTimestamp")
_LONG = (-(2**63), 2**63)
DECIDED = ["_raw", "_pos", "_part", "_py"]  # ``JsonPrepare``'s columns before ``prepare``'s
MERGED = ["_raw", "_pos", "_part"]  # ``decided_sql``'s columns before ``prepare``'s


def _literals_fit(spec: Any) -> bool:
    """Every ``lit`` in an expression spec is a value ``EventExpr`` holds as Python does."""
    if isinstance(spec, list):
        if len(spec) == 2 and spec[0] == "lit":
            value = spec[1]
            if isinstance(value, float):
                return math.isfinite(value)  # JSON has no NaN or infinity
            return not isinstance(value, int) or isinstance(value, bool) or _LONG[0] <= value < _LONG[1]
        return all(_literals_fit(item) for item in spec)
    if isinstance(spec, dict):
        return all(_literals_fit(item) for item in spec.values())
    return True


def _view_spec(plan: TransformPlan) -> dict[str, Any] | None:
    """One view's part of ``JsonPrepare``'s spec, or None when the view is not decided in the JVM."""
    if not plan.declarative_events or plan.joins:
        return None
    time_field = plan.timestamp_field
    if any(dtype.name not in _KEY_TYPES or name == time_field for name, dtype in plan.keys):
        return None
    features = []
    for feature in plan.features:
        column, dtype = feature.aggregation.column, feature.input_dtype
        if dtype is not None and dtype.name not in _VALUE_TYPES:
            return None
        if column == time_field and dtype is not None and dtype.name != "UnixTimestamp":
            return None
        features.append(
            {
                "column": column,
                "dtype": None if dtype is None else dtype.name,
                "ordered": feature.aggregation.by_time,
            }
        )
    select = where = None
    transform = plan.event_transform
    if isinstance(transform, Select):
        spec = transform.spec()
        if time_field in set(columns_in([spec["select"], spec["where"]])) or not _literals_fit(spec):
            return None
        select, where = spec["select"], spec["where"]
    low, high = vectorised_range(plan.event_time_range_ms)
    return {
        "low": low,
        "high": high,
        "beat_offset": marker_offset_ms(plan) or 0,
        "last_row_ms": LAST_ROW_MS,
        "keys": [[name, dtype.name] for name, dtype in plan.keys],
        "select": select,
        "where": where,
        "features": features,
    }


def jvm_spec(plans: Sequence[TransformPlan]) -> str | None:
    """``JsonPrepare``'s spec for the views of one source, or None when any of them runs Python per
    event (a row function, model stages) or uses what ``JsonPrepare`` does not decide; then every
    event takes the Python ``prepare``."""
    views = [_view_spec(plan) for plan in plans]
    if not views or any(view is None for view in views):
        return None
    fields: list[str] = []
    for plan in plans:
        for name in needed_fields(plan) or []:
            if name not in fields:
                fields.append(name)
    spec = {
        "time": plans[0].timestamp_field,
        "max_depth": MAX_JSON_DEPTH,
        "fields": fields,
        "views": views,
    }
    return json.dumps(spec, sort_keys=True)


def stage1_groups(plans: Sequence[TransformPlan]) -> list[tuple[list[int], str | None, str]]:
    """How the views of one source (``plans``, by position) share stage 1: the views decided in
    the JVM (with ``JsonPrepare``'s spec), then the rest (spec None: Python per event), each with
    the suffix of its stage 1's name. Without views of the first kind every view is in one
    Python stage 1 named as before; each stage 1 decodes and classifies every event once."""
    decided = [i for i, plan in enumerate(plans) if jvm_spec([plan]) is not None]
    rest = [i for i in range(len(plans)) if i not in decided]
    groups: list[tuple[list[int], str | None, str]] = []
    if decided:
        groups.append((decided, jvm_spec([plans[i] for i in decided]), "_jvm" if rest else ""))
    if rest:
        groups.append((rest, None, ""))
    return groups


def decided_type(plans: Sequence[TransformPlan]) -> Any:
    """``JsonPrepare``'s output row type: ``DECIDED``, then ``prepare``'s fields (every view
    decided here gives at most one row per event, as plain columns)."""
    from pyflink.common import Types

    types = [Types.STRING(), Types.LONG(), Types.INT(), Types.BOOLEAN(), Types.LONG()]
    for plan in plans:
        types += [type_info for type_info, _ in view_field_types(plan)]
    return Types.ROW_NAMED([*DECIDED, *outcome_fields(plans)], types)


def decided_sql(plans: Sequence[TransformPlan], decided: str, function: str) -> str:
    """Every event of ``decided`` with ``prepare``'s fields: ``JsonPrepare``'s where it decided
    the event, else the Python ``function``'s (only those events reach Python)."""
    fields = outcome_fields(plans)
    jvm = ", ".join(quote(name) for name in fields)
    python = ", ".join(f"p.{quote(name)} AS {quote(name)}" for name in fields)
    merged = ", ".join(MERGED)
    return (
        f"SELECT {merged}, {jvm} FROM {quote(decided)} WHERE NOT _py "
        f"UNION ALL SELECT {merged}, {python} FROM "
        f"(SELECT {merged}, {quote(function)}(_raw) AS p FROM {quote(decided)} WHERE _py)"
    )


def jvm_events(
    plans: Sequence[TransformPlan], spec: str, t_env: Any, raws: Sequence[Any], function: str, name: str
) -> str:
    """Register ``<name>_events`` (the columns of ``flink_stage1.events_sql``) over the raw events
    ``raws`` (a DataStream of text per partition), decided by ``JsonPrepare`` where it can and by
    the Python ``function`` otherwise, each partition in its own order; returns the view's name."""
    from pyflink.datastream import DataStream
    from pyflink.java_gateway import get_gateway
    from pyflink.table import Schema

    jvm = get_gateway().jvm
    row_type = decided_type(plans).get_java_type_info()
    streams = [
        DataStream(
            raw._j_data_stream.process(jvm.mlfs.flink.JsonPrepare(spec, part), row_type)
            .name(f"{name}-decode{part}")
            .uid(f"{name}-decode{part}")
            .setParallelism(1)
        )
        for part, raw in enumerate(raws)
    ]
    decided = streams[0].union(*streams[1:]) if len(streams) > 1 else streams[0]
    t_env.create_temporary_view(f"{name}_decided", t_env.from_data_stream(decided))
    merged = t_env.to_data_stream(t_env.sql_query(decided_sql(plans, f"{name}_decided", function)))
    j_merged = merged._j_data_stream
    ordered = (
        j_merged.keyBy(jvm.mlfs.flink.FieldKey(MERGED.index("_part")))
        .process(jvm.mlfs.flink.Resequence(MERGED.index("_pos"), j_merged.getType()), j_merged.getType())
        .name(f"{name}-in-order")
        .uid(f"{name}-in-order")
        .setParallelism(1)
    )
    schema = Schema.new_builder().column_by_expression("_pt", "PROCTIME()").build()
    t_env.create_temporary_view(f"{name}_ordered", t_env.from_data_stream(DataStream(ordered), schema))
    columns = ", ".join(quote(n) for n in ["_raw", *outcome_fields(plans), "_part", "_pt"])
    events = f"{name}_events"
    t_env.create_temporary_view(events, t_env.sql_query(f"SELECT {columns} FROM {quote(f'{name}_ordered')}"))
    return events
