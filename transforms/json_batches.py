"""JSON-lines events as typed Arrow batches, for the vectorised event stage (``arrow_events``).

A streaming source delivers text. ``decode_lines`` decodes a batch of lines with the same
``parse_json`` and ``parse_event_time`` the row path uses, once for every view of the source.
``typed_batch`` keeps in a view's Arrow batch only the events whose every needed field has one
JSON type per column (string, integer within int64, float, boolean, or null/absent) and whose
time is 1970 or later. The other events are
returned by position, for the row path, which gives them their exact outcome (often a dead letter).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from transforms.events import parse_json
from transforms.expressions import Select
from transforms.plan import TransformPlan
from transforms.timeutil import parse_event_time

_SIMPLE = {str: "str", float: "float", bool: "bool"}  # types whose every value makes a column
_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}


@dataclass
class TypedBatch:
    """The events ``typed_batch`` could type: the batch, their positions among the lines given
    (ascending), and the positions of the rest."""

    batch: pa.RecordBatch
    positions: list[int]
    rest: list[int]


def needed_fields(plan: TransformPlan) -> list[str] | None:
    """The event fields the per-event stage reads (the time field first), or None when it runs
    Python code (a row function, model stages), which may read anything."""
    if not plan.declarative_events:
        return None
    transform = plan.event_transform
    names = [plan.timestamp_field]
    if isinstance(transform, Select):
        spec = transform.spec()
        wanted: list[str | None] = list(columns_in([spec["select"], spec["where"]]))
    else:  # no event transform
        wanted = [*plan.key_names, *(f.aggregation.column for f in plan.features)]
    for name in wanted:
        if name is not None and name not in names:
            names.append(name)
    return names


def columns_in(spec: Any) -> Iterator[str]:
    """The names ``col(...)`` reads anywhere in an expression's ``spec()``."""
    if isinstance(spec, dict):
        for value in spec.values():
            yield from columns_in(value)
    elif isinstance(spec, list):
        if len(spec) == 2 and spec[0] == "col" and isinstance(spec[1], str):
            yield spec[1]
        else:
            for item in spec:
                yield from columns_in(item)


def _kind(value: Any) -> str | None:
    """The JSON type of a decoded value as a column kind (None: null; ``other``: no column)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if -(2**63) <= value < 2**63 else "other"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    return "other"


@dataclass
class DecodedLines:
    """A batch of JSON lines decoded once (``decode_lines``), for the typed batches of every view
    reading the same source: the objects with a usable time, their times and positions (ascending),
    and the positions of the rest."""

    events: list[dict[str, Any]]
    times: list[int]
    positions: list[int]
    rest: list[int]


def decode_lines(time_field: str, texts: Sequence[str]) -> DecodedLines:
    """Decode ``texts`` (one JSON object each) and their ``time_field`` in UTC milliseconds."""
    decoded = DecodedLines([], [], [], [])
    for i, text in enumerate(texts):
        try:
            event = parse_json(text)
            time_ms = parse_event_time(event.get(time_field)) if isinstance(event, dict) else -1
        except Exception:  # the row path gives this event its exact outcome
            decoded.rest.append(i)
            continue
        if time_ms < 0:  # before 1970, truncating to the millisecond would not floor
            decoded.rest.append(i)
            continue
        decoded.events.append(event)
        decoded.times.append(time_ms)
        decoded.positions.append(i)
    return decoded


def typed_batch(fields: Sequence[str], lines: Sequence[str] | DecodedLines) -> TypedBatch:
    """A batch of ``fields`` from JSON lines (text, or decoded by ``decode_lines`` with the first
    field as the time); the time field becomes a UTC timestamp column in milliseconds."""
    time_field, *value_fields = fields
    decoded = lines if isinstance(lines, DecodedLines) else decode_lines(time_field, lines)
    events, times = decoded.events, decoded.times
    positions, rest = decoded.positions, decoded.rest
    # Each column takes its most common type; an event with another type in any column leaves the batch.
    columns: dict[str, list[Any]] = {}
    kinds: dict[str, str | None] = {}
    keep = [True] * len(events)
    for name in value_fields:
        values = [event.get(name) for event in events]
        columns[name] = values
        types = set(map(type, values)) - {type(None)}
        if len(types) == 1 and (kind := _SIMPLE.get(types.pop())) is not None:
            kinds[name] = kind  # one JSON type throughout: no event to check
            continue
        found = [_kind(v) for v in values]
        counted = Counter(k for k in found if k is not None and k != "other")
        kinds[name] = counted.most_common(1)[0][0] if counted else None
        for j, k in enumerate(found):
            if k is not None and k != kinds[name]:
                keep[j] = False
    if not all(keep):
        rest = sorted(rest + [p for p, kept in zip(positions, keep, strict=True) if not kept])
        positions = [p for p, kept in zip(positions, keep, strict=True) if kept]
        times = [t for t, kept in zip(times, keep, strict=True) if kept]
        columns = {
            name: [v for v, kept in zip(values, keep, strict=True) if kept]
            for name, values in columns.items()
        }
    arrays = [pa.array(times, pa.timestamp("ms", tz="UTC"))]
    for name in value_fields:
        kind = kinds[name]
        arrays.append(pa.nulls(len(times)) if kind is None else pa.array(columns[name], _ARROW[kind]))
    return TypedBatch(pa.RecordBatch.from_arrays(arrays, names=[time_field, *value_fields]), positions, rest)
