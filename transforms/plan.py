"""The engine-independent plan of a view: what every engine compiles.

A ``TransformPlan`` is built once from a view's declaration (``ViewInfo``) and its
``UnifiedTransformer``; it holds no engine objects, so the same plan is compiled by the reference,
Spark, Flink and Beam engines, and ``spec()`` describes it as JSON for the registry.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from transforms.aggregations import Aggregation
from transforms.dtypes import DType
from transforms.errors import DefinitionError
from transforms.expressions import Select
from transforms.inference.stage import Enrich
from transforms.joins import IntervalJoin, Join, Lookup
from transforms.timeutil import EVENT_TIME_RANGE_MS
from transforms.windows import Lifetime, Window

EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"
RESERVED_COLUMNS = frozenset({EVENT_TIMESTAMP, CREATED_TIMESTAMP})

EventTransform = Callable[[dict[str, Any]], Any]


class Runner(StrEnum):
    """Which engine runs a view; ``PLAN`` is the symbolic run that captures the definition."""

    PLAN = "plan"
    REFERENCE = "reference"
    EMBEDDED = "embedded"
    SPARK = "spark"
    FLINK = "flink"
    BEAM = "beam"


@dataclass(frozen=True)
class ViewInfo:
    """What a view declares about its output: name, keys, time field and feature types."""

    name: str
    keys: tuple[tuple[str, DType], ...]
    timestamp_field: str
    features: tuple[tuple[str, DType], ...]
    event_time_range_ms: tuple[int, int] = EVENT_TIME_RANGE_MS  # its source's


@dataclass
class FeatureContext:
    """Passed to a view function as ``ctx``: which engine runs, and for which view."""

    runner: Runner
    view: ViewInfo
    options: dict[str, Any] = field(default_factory=dict)


FeastContext = FeatureContext  # the seed's name


@dataclass(frozen=True)
class FeatureSpec:
    """One output feature: its type, its aggregation and the type its inputs are coerced to."""

    name: str
    dtype: DType
    aggregation: Aggregation
    input_dtype: DType | None


@dataclass(frozen=True)
class TransformPlan:
    """A view's complete, engine-independent transformation."""

    view: str
    keys: tuple[tuple[str, DType], ...]
    timestamp_field: str
    window: Window
    features: tuple[FeatureSpec, ...]
    event_transform: EventTransform | None
    event_stages: tuple[Enrich, ...] = ()  # model stages on each event row, before aggregation
    row_stages: tuple[Enrich, ...] = ()  # model stages on each feature row, after aggregation
    row_outputs: tuple[tuple[str, DType], ...] = ()  # schema fields the row stages produce
    event_time_range_ms: tuple[int, int] = EVENT_TIME_RANGE_MS  # outside it: bad_time
    joins: tuple[Join, ...] = ()  # DESIGN §2b, applied in order before the event transform

    def out_of_range(self, features: list[FeatureSpec], detail: str) -> DefinitionError:
        """The error of feature values that do not fit their declared type (an integer sum past
        its type's range): the view's definition must declare a wider type."""
        names = ", ".join(f"{f.name!r} ({f.aggregation.describe()}, {f.dtype})" for f in features)
        wider = "Float64" if all(f.dtype.name == "Int64" for f in features) else "Int64 or Float64"
        return DefinitionError(
            self.view, f"a value of feature {names} does not fit its type ({detail}); declare it {wider}"
        )

    def integer_features(self) -> list[FeatureSpec]:
        """The features whose values may pass their integer type's range (sums)."""
        integers = ("Int32", "Int64")
        return [f for f in self.features if f.dtype.name in integers and f.aggregation.kind == "sum"]

    @property
    def lookups(self) -> tuple[Lookup, ...]:
        return tuple(j for j in self.joins if isinstance(j, Lookup))

    @property
    def interval_joins(self) -> tuple[IntervalJoin, ...]:
        return tuple(j for j in self.joins if isinstance(j, IntervalJoin))

    @property
    def key_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.keys)

    @property
    def output_features(self) -> tuple[tuple[str, DType], ...]:
        """Every feature a row carries: the aggregated ones, then those the row stages add."""
        return tuple((f.name, f.dtype) for f in self.features) + self.row_outputs

    @property
    def has_inference(self) -> bool:
        return bool(self.event_stages or self.row_stages)

    @property
    def one_row_per_event(self) -> bool:
        """Each event gives at most one row: no event transform, or a declarative ``Select``."""
        return self.event_transform is None or isinstance(self.event_transform, Select)

    @property
    def declarative_events(self) -> bool:
        """The per-event stage runs no Python (one row per event, no model stages), so engines may
        evaluate it vectorised."""
        return self.one_row_per_event and not self.event_stages

    def spec(self) -> dict[str, Any]:
        """The plan as JSON-able data; code is referenced by name and source hash, never stored."""
        return {
            "view": self.view,
            "keys": [{"name": n, "dtype": str(t)} for n, t in self.keys],
            "timestamp_field": self.timestamp_field,
            "window": self.window.spec(),
            "features": [
                {"name": f.name, "dtype": str(f.dtype), "aggregation": f.aggregation.spec()}
                for f in self.features
            ],
            "event_transform": code_reference(self.event_transform),
            "inference": {
                "before_aggregation": [stage.spec() for stage in self.event_stages],
                "after_aggregation": [stage.spec() for stage in self.row_stages],
            },
            **({"joins": [join.spec() for join in self.joins]} if self.joins else {}),
            # Only where a source narrows or widens it, so that other views' specs stay as they were.
            **(
                {"event_time_range_ms": list(self.event_time_range_ms)}
                if self.event_time_range_ms != EVENT_TIME_RANGE_MS
                else {}
            ),
        }


def code_reference(fn: Callable[..., Any] | None) -> dict[str, str] | None:
    """``module:qualname`` and a SHA-256 of the source of a function (None for no function); a
    declarative ``Select`` is recorded as its expression."""
    if fn is None:
        return None
    if isinstance(fn, Select):
        return fn.reference()
    target = fn if inspect.isfunction(fn) or inspect.ismethod(fn) else type(fn)
    module = getattr(target, "__module__", "?")
    qualname = getattr(target, "__qualname__", repr(target))
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError):
        source = f"{module}:{qualname}"
    return {
        "ref": f"{module}:{qualname}",
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
    }


def build_plan(
    info: ViewInfo,
    window: Window | None,
    event_transform: EventTransform | None,
    aggregations: dict[str, Aggregation],
    event_stages: tuple[Enrich, ...] = (),
    row_stages: tuple[Enrich, ...] = (),
    joins: tuple[Join, ...] = (),
) -> TransformPlan:
    """Check a transformer's parts against the view's declaration and bind them into a plan."""
    view = info.name
    if window is None:
        window = Lifetime()
    if not isinstance(window, Window):
        raise DefinitionError(
            view,
            f"window must be Sliding(...), Tumbling(...) or None, got {window!r:.80}",
        )
    if event_transform is not None and not callable(event_transform):
        raise DefinitionError(view, f"event_transform must be callable, got {event_transform!r:.80}")
    declared = dict(info.features)
    stage_names = [stage.name for stage in (*event_stages, *row_stages)]
    repeated = sorted({n for n in stage_names if stage_names.count(n) > 1})
    if repeated:
        raise DefinitionError(view, f"two inference stages are named {repeated[0]!r}")
    row_fields: dict[str, str] = {}  # field -> the row stage that adds it
    for stage in row_stages:
        for name in stage.output_fields:
            if name in row_fields or name in aggregations:
                raise DefinitionError(
                    view,
                    f"field {name!r} of stage {stage.name!r} is also made by another stage or aggregation",
                )
            if name not in declared:
                raise DefinitionError(
                    view,
                    f"stage {stage.name!r} adds field {name!r} after aggregation but the schema does not "
                    f"declare it (declare: {', '.join(f for f in stage.output_fields if f not in declared)})",
                )
            row_fields[name] = stage.name
    unknown = [name for name in aggregations if name not in declared]
    if unknown:
        raise DefinitionError(
            view,
            f"unknown field {unknown[0]!r}: the aggregator defines it but the schema does not "
            f"(schema features: {', '.join(declared) or 'none'})",
        )
    missing = [name for name in declared if name not in aggregations and name not in row_fields]
    if missing:
        raise DefinitionError(
            view, f"schema field {missing[0]!r} is not produced by any aggregation or inference stage"
        )
    features = []
    for name, dtype in info.features:
        if name in row_fields:
            continue
        agg = aggregations[name]
        if not isinstance(agg, Aggregation):
            raise DefinitionError(view, f"feature {name!r}: {agg!r:.80} is not an aggregation")
        problem = agg.check_output(dtype)
        if problem:
            raise DefinitionError(view, f"feature {name!r}: {problem}")
        features.append(FeatureSpec(name, dtype, agg, agg.input_dtype(dtype)))
    return TransformPlan(
        view=view,
        keys=info.keys,
        timestamp_field=info.timestamp_field,
        window=window,
        features=tuple(features),
        event_transform=event_transform,
        event_stages=event_stages,
        row_stages=row_stages,
        row_outputs=tuple((name, dtype) for name, dtype in info.features if name in row_fields),
        event_time_range_ms=info.event_time_range_ms,
        joins=joins,
    )


def spec_hash(spec: dict[str, Any]) -> str:
    """A stable hash of a JSON-able spec (for change detection)."""
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
