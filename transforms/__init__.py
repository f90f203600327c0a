"""MLFS transformation core: windows, aggregations, event stage, plans and engine compilers."""

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
from transforms.joins import IntervalJoin, Lookup
from transforms.plan import FeastContext, FeatureContext, Runner, TransformPlan
from transforms.transformer import Aggregations, LatestFeatureAggregator, UnifiedTransformer
from transforms.windows import Lifetime, Sliding, Tumbling, Window

__all__ = [
    "Aggregation",
    "Aggregations",
    "Count",
    "CountDistinct",
    "FeastContext",
    "FeatureContext",
    "First",
    "IntervalJoin",
    "LastK",
    "Latest",
    "LatestFeatureAggregator",
    "Lifetime",
    "Lookup",
    "Max",
    "Mean",
    "Min",
    "Runner",
    "Sliding",
    "Stddev",
    "Sum",
    "TransformPlan",
    "Tumbling",
    "UnifiedTransformer",
    "Variance",
    "Window",
]
