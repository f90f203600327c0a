"""MLFS public API: define features once, run them on every engine, serve them through Feast."""

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
from transforms.plan import FeastContext, FeatureContext, Runner
from transforms.transformer import Aggregations, LatestFeatureAggregator, UnifiedTransformer
from transforms.windows import Lifetime, Sliding, Tumbling

__all__ = [
    "Aggregations",
    "Array",
    "Bool",
    "Bytes",
    "Count",
    "CountDistinct",
    "DefinitionError",
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
    "KafkaStreamSource",
    "LastK",
    "Latest",
    "LatestFeatureAggregator",
    "Lifetime",
    "MLFSError",
    "Max",
    "Mean",
    "Min",
    "Runner",
    "Select",
    "Sliding",
    "Stddev",
    "StreamFeatureView",
    "StreamSource",
    "String",
    "Sum",
    "Tumbling",
    "UnifiedTransformer",
    "UnixTimestamp",
    "Variance",
    "col",
    "lit",
    "stream_feature_view",
    "when",
]
