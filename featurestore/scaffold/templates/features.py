"""Payment features: one definition per view, run identically by every MLFS engine."""

from datetime import timedelta

from featurestore import (
    Aggregations,
    Count,
    Entity,
    Field,
    FileStreamSource,
    Float64,
    Int64,
    LatestFeatureAggregator,
    Max,
    Mean,
    Select,
    Sliding,
    String,
    Sum,
    Tumbling,
    UnifiedTransformer,
    UnixTimestamp,
    col,
    stream_feature_view,
    when,
)

user = Entity(name="user", join_keys=["user_id"], description="A customer who pays")
merchant = Entity(name="merchant", join_keys=["merchant_id"], description="A store that is paid")

payments = FileStreamSource(
    name="payments",
    path="data/stream/payments",            # JSON-lines files, watched by `mlfs serve-stream`
    history="data/history/payments.parquet",  # the same events in the past, read by `mlfs backfill`
    timestamp_field="timestamp",
    max_out_of_orderness=timedelta(seconds=5),
    description="Payment attempts: user, merchant, amount, status, failure reason",
    owner="payments@example.com",
)


def extract_payment_fail_data(event):
    """Failed payments only; the ACH NSF column is set only for that failure reason."""
    if event["status"] != "failed":
        return None
    return {
        "user_id": event["user_id"],
        "latest_payment_fail": event["timestamp"],
        "latest_payment_fail_ach_nsf": (
            event["timestamp"] if event.get("failure_reason") == "ach_nsf" else None
        ),
    }


@stream_feature_view(
    entities=[user],
    ttl=timedelta(days=0),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="timestamp", dtype=UnixTimestamp),
        Field(name="latest_payment_fail", dtype=UnixTimestamp),
        Field(name="latest_payment_fail_ach_nsf", dtype=UnixTimestamp),
    ],
    online=True,
    source=payments,
    timestamp_field="timestamp",
    tags={"team": "risk"},
    owner="risk@example.com",
    mode="flink",
)
def user_last_payment_fail(feast_context, inputs):
    """When each user last failed a payment, and last failed one for insufficient funds (ACH)."""
    transformer = UnifiedTransformer(
        feast_context=feast_context,
        aggregator=LatestFeatureAggregator(feast_context, "timestamp"),
        event_transform=extract_payment_fail_data,
    )
    return transformer.run(inputs)


# A declarative event transform: the same semantics as a row function, but every engine evaluates
# it vectorised (Arrow kernels on Spark, SQL on Flink) instead of calling Python once per event.
payment_amounts = Select(
    user_id=col("user_id"),
    amount=col("amount"),
    failed=when(col("status") == "failed", 1).otherwise(0),
)


@stream_feature_view(
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="payment_count_7d", dtype=Int64),
        Field(name="amount_sum_7d", dtype=Float64),
        Field(name="fail_count_7d", dtype=Int64),
    ],
    source=payments,
    tags={"team": "risk"},
    owner="risk@example.com",
)
def user_payment_stats_7d(ctx, inputs):
    """Payments, amount and failures per user over the last 7 days (continuous window)."""
    return UnifiedTransformer(
        ctx,
        event_transform=payment_amounts,
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(
            payment_count_7d=Count(),
            amount_sum_7d=Sum("amount"),
            fail_count_7d=Sum("failed"),
        ),
    ).run(inputs)


@stream_feature_view(
    entities=[merchant],
    ttl=timedelta(days=30),
    schema=[
        Field(name="merchant_id", dtype=String),
        Field(name="amount_mean_1h", dtype=Float64),
        Field(name="amount_max_1h", dtype=Float64),
        Field(name="payment_count_1h", dtype=Int64),
    ],
    source=payments,
    tags={"team": "merchant-risk"},
    owner="merchants@example.com",
)
def merchant_amount_1h(ctx, inputs):
    """Mean and largest payment per merchant in each clock hour (tumbling window)."""
    return UnifiedTransformer(
        ctx,
        window=Tumbling(size=timedelta(hours=1)),
        aggregator=Aggregations(
            amount_mean_1h=Mean("amount"),
            amount_max_1h=Max("amount"),
            payment_count_1h=Count(),
        ),
    ).run(inputs)
