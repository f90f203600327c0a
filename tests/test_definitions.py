"""The definition API: the decorator captures the plan and rejects bad definitions clearly."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from conftest import EVENTS, USER, make_view

from featurestore import (
    Aggregations,
    Count,
    Entity,
    Field,
    Float64,
    Int64,
    LatestFeatureAggregator,
    Sliding,
    String,
    Sum,
    UnifiedTransformer,
    UnixTimestamp,
    stream_feature_view,
)
from transforms.errors import DefinitionError


def test_decorator_captures_plan_without_running() -> None:
    calls: list[Any] = []

    def transform(event: dict[str, Any]) -> dict[str, Any]:
        calls.append(event)
        return event

    view = make_view(
        {"n": (Int64, Count()), "s": (Float64, Sum("amount"))},
        window=Sliding(timedelta(days=7)),
        transform=transform,
    )
    assert calls == []  # capturing never runs the transform
    assert view.plan.window.spec() == {"kind": "continuous", "size_ms": 7 * 86_400_000}
    assert [(f.name, f.aggregation.spec()) for f in view.plan.features] == [
        ("n", {"kind": "count", "column": None}),
        ("s", {"kind": "sum", "column": "amount"}),
    ]
    spec = view.spec()
    assert spec["plan"]["event_transform"]["ref"].endswith("transform")
    assert len(spec["plan"]["event_transform"]["source_sha256"]) == 64


def test_seed_style_latest_feature_aggregator() -> None:
    @stream_feature_view(
        entities=[USER],
        ttl=timedelta(days=0),
        schema=[
            Field("user_id", String),
            Field("timestamp", UnixTimestamp),
            Field("latest_payment_fail", UnixTimestamp),
        ],
        online=True,
        source=EVENTS,
        timestamp_field="timestamp",
        tags={},
        mode="flink",
    )
    def user_last_payment_fail(feast_context: Any, inputs: Any) -> Any:
        transformer = UnifiedTransformer(
            feast_context=feast_context,
            aggregator=LatestFeatureAggregator(feast_context, "timestamp"),
            event_transform=lambda e: {**e, "latest_payment_fail": e["timestamp"]},
        )
        return transformer.run(inputs)

    plan = user_last_payment_fail.plan
    assert [(f.name, f.aggregation.kind, f.aggregation.column) for f in plan.features] == [
        ("latest_payment_fail", "latest", "latest_payment_fail")
    ]
    rows = user_last_payment_fail.run(
        [
            {"user_id": "u", "timestamp": "2026-01-01T00:00:00Z"},
            {"user_id": "u", "timestamp": "2026-01-02T00:00:00Z"},
        ]
    ).rows
    assert rows[-1]["latest_payment_fail"].isoformat() == "2026-01-02T00:00:00+00:00"


def _define(
    schema: list[Field], aggregator: Any, window: Any = None, entities: Any = None, **kwargs: Any
) -> Any:
    def bad_view(ctx: Any, inputs: Any) -> Any:
        built = window() if callable(window) else window  # windows are built inside the function
        return UnifiedTransformer(ctx, aggregator=aggregator, window=built).run(inputs)

    return stream_feature_view(
        entities=[USER] if entities is None else entities, schema=schema, source=EVENTS, **kwargs
    )(bad_view)


KEY = Field("user_id", String)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: _define([KEY, Field("n", Int64)], Aggregations(n=Count(), extra=Count())),
            "unknown field 'extra'",
        ),
        (
            lambda: _define([KEY, Field("n", Int64), Field("m", Int64)], Aggregations(n=Count())),
            "schema field 'm' is not produced",
        ),
        (
            lambda: _define([KEY, Field("n", String)], Aggregations(n=Count())),
            "count() produces Int64, not String",
        ),
        (lambda: _define([KEY, Field("n", Int64)], Aggregations(n=Count()), window="7d"), "window must be"),
        (
            lambda: _define(
                [KEY, Field("n", Int64)],
                Aggregations(n=Count()),
                window=lambda: Sliding(timedelta(days=7), timedelta(days=5)),
            ),
            "not a multiple of its hop",
        ),
        (lambda: _define([KEY, Field("n", Int64)], Aggregations(n=Count()), entities=[]), "missing entity"),
        (lambda: _define([Field("n", Int64)], Aggregations(n=Count())), "missing entity join key 'user_id'"),
        (
            lambda: _define([KEY, Field("n", Int64), Field("n", Int64)], Aggregations(n=Count())),
            "declared twice",
        ),
        (lambda: _define([KEY, Field("n", Int64)], LatestFeatureAggregator(None, "ts")), "orders by 'ts'"),
        (
            lambda: _define([KEY, Field("n", Int64)], Aggregations(n=Count()), mode="storm"),
            "mode must be one of",
        ),
        (
            lambda: _define([KEY, Field("n", Int64)], Aggregations(n=Count()), timestamp_field="created"),
            "differs from source",
        ),
    ],
)
def test_bad_definitions_name_the_view_and_problem(build: Any, message: str) -> None:
    with pytest.raises(DefinitionError) as err:
        build()
    assert err.value.view == "bad_view"
    assert message in str(err.value)


def test_view_function_that_touches_inputs_is_rejected() -> None:
    with pytest.raises(DefinitionError, match=r"used inputs\.filter"):

        @stream_feature_view(entities=[USER], schema=[KEY, Field("n", Int64)], source=EVENTS)
        def eager(ctx: Any, inputs: Any) -> Any:
            return UnifiedTransformer(ctx, aggregator=Aggregations(n=Count())).run(inputs.filter("x"))


def test_entity_defaults_join_key_to_name() -> None:
    assert Entity(name="user_id").join_keys == ("user_id",)
