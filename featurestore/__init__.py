"""MLFS public API: define features once, run them on every engine, serve them through Feast."""

from typing import Any

from featurestore.definitions import (
    Entity,
    Field,
    FileStreamSource,
    KafkaStreamSource,
    StreamSource,
)
from featurestore.view import StreamFeatureView, stream_feature_view
from transforms.aggregations import (
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
from transforms.dtypes import (
    Array,
    Bool,
    Bytes,
    Float32,
    Float64,
    Int32,
    Int64,
    String,
    UnixTimestamp,
)
from transforms.errors import DefinitionError, MLFSError
from transforms.expressions import Select, col, lit, when
from transforms.inference import ABTest, Batching, Cascade, Enrich, KeyedModels, Model, Shadow
from transforms.inference.trained import TrainedModels
from transforms.joins import IntervalJoin, Lookup
from transforms.plan import FeastContext, FeatureContext, Runner
from transforms.transformer import Aggregations, LatestFeatureAggregator, UnifiedTransformer
from transforms.windows import Lifetime, Sliding, Tumbling

__all__ = [
    "ABTest",
    "Aggregations",
    "Array",
    "Batching",
    "Bool",
    "Bytes",
    "Cascade",
    "Count",
    "CountDistinct",
    "DefinitionError",
    "Enrich",
    "Entity",
    "FeastContext",
    "FeatureContext",
    "Field",
    "FileStreamSource",
    "First",
    "Float32",
    "Float64",
    "Int32",
    "Int64",
    "IntervalJoin",
    "KafkaStreamSource",
    "KeyedModels",
    "LastK",
    "Latest",
    "LatestFeatureAggregator",
    "Lifetime",
    "Lookup",
    "MLFSError",
    "Max",
    "Mean",
    "Min",
    "Model",
    "Runner",
    "Select",
    "SentenceEmbeddingHandler",
    "Shadow",
    "Sliding",
    "Stddev",
    "StreamFeatureView",
    "StreamSource",
    "String",
    "Sum",
    "TrainedModels",
    "Tumbling",
    "UnifiedTransformer",
    "UnixTimestamp",
    "Variance",
    "col",
    "lit",
    "stream_feature_view",
    "when",
]


def __getattr__(name: str) -> Any:
    # Imported on first use: it needs Apache Beam, which a plain ``import featurestore`` should not load.
    if name == "SentenceEmbeddingHandler":
        from transforms.inference.handlers import SentenceEmbeddingHandler

        return SentenceEmbeddingHandler
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
