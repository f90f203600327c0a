"""``UnifiedTransformer``: one definition of window, event transform and aggregations for every engine."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transforms.aggregations import Aggregation, Latest
from transforms.errors import DefinitionError
from transforms.inference.stage import StageList, flatten_stages
from transforms.joins import Join, check_joins
from transforms.plan import (
    EventTransform,
    FeatureContext,
    Runner,
    TransformPlan,
    ViewInfo,
    build_plan,
)
from transforms.windows import Window


class Aggregations:
    """Named aggregations: ``Aggregations(fail_count_7d=Count(), last_fail=Latest("timestamp"))``."""

    def __init__(self, **features: Aggregation) -> None:
        if not features:
            raise ValueError("Aggregations(...) needs at least one named aggregation")
        self.features = features

    def resolve(self, info: ViewInfo) -> dict[str, Aggregation]:
        return dict(self.features)


class LatestFeatureAggregator:
    """The seed's aggregator: every schema feature is the latest non-null value of its own column.

    ``order_by`` must be the view's timestamp field; values are ordered by event time (ties by value).
    """

    def __init__(self, ctx: FeatureContext | None, order_by: str) -> None:
        self.order_by = order_by

    def resolve(self, info: ViewInfo) -> dict[str, Aggregation]:
        if self.order_by != info.timestamp_field:
            raise DefinitionError(
                info.name,
                f"LatestFeatureAggregator orders by {self.order_by!r} but the view's "
                f"timestamp_field is {info.timestamp_field!r}",
            )
        return {name: Latest(name) for name, _ in info.features}


Aggregator = Aggregations | LatestFeatureAggregator


class UnifiedTransformer:
    """A view's transformation: joins (``Lookup``, ``IntervalJoin``; DESIGN §2b), an optional event
    transform, model stages on event rows (``enrich_events``, before aggregation), window,
    aggregator, and model stages on feature rows (``enrich_rows``, after aggregation).

    ``run(inputs)`` hands the plan to the engine named by ``ctx.runner`` (the reference engine takes
    raw events, Spark a DataFrame, Flink a table or stream, Beam a PCollection). Under the symbolic
    ``Runner.PLAN`` it returns itself, which is how ``@stream_feature_view`` captures a definition.
    """

    def __init__(
        self,
        ctx: FeatureContext | None = None,
        *,
        aggregator: Aggregator,
        event_transform: EventTransform | None = None,
        window: Window | None = None,
        enrich_events: StageList = None,
        enrich_rows: StageList = None,
        joins: Sequence[Join] = (),
        feast_context: FeatureContext | None = None,
    ) -> None:
        context = ctx if ctx is not None else feast_context
        if not isinstance(context, FeatureContext):
            raise TypeError("UnifiedTransformer needs the view's ctx as its first argument")
        self.ctx = context
        self._aggregator = aggregator
        self._event_transform = event_transform
        self._window = window
        self._enrich_events = enrich_events
        self._enrich_rows = enrich_rows
        self._joins = tuple(joins)

    @property
    def window(self) -> Window | None:
        return self._window

    @property
    def event_transform(self) -> EventTransform | None:
        return self._event_transform

    @property
    def aggregator(self) -> Aggregator:
        return self._aggregator

    def plan(self) -> TransformPlan:
        """Bind the parts to the view's declaration, checking them."""
        info = self.ctx.view
        if not isinstance(self._aggregator, (Aggregations, LatestFeatureAggregator)):
            raise DefinitionError(
                info.name,
                "aggregator must be Aggregations(...) or LatestFeatureAggregator(ctx, field), "
                f"got {self._aggregator!r:.80}",
            )
        aggregations = self._aggregator.resolve(info)
        try:
            event_stages = flatten_stages(self._enrich_events)
            row_stages = flatten_stages(self._enrich_rows)
        except TypeError as err:
            raise DefinitionError(info.name, str(err)) from None
        joins = check_joins(info.name, self._joins, info.timestamp_field)
        return build_plan(
            info, self._window, self._event_transform, aggregations, event_stages, row_stages, joins
        )

    def run(self, inputs: Any) -> Any:
        if self.ctx.runner is Runner.PLAN:
            return self
        from transforms.engines import get_engine

        return get_engine(self.ctx.runner).run(self.plan(), inputs, self.ctx)
