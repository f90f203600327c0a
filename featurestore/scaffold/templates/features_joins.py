"""Features from more than one stream (`mlfs init --with-joins`): a view enriched by another view
as of each payment, and payments joined with their refunds."""

from datetime import timedelta

from features import payments, user, user_payment_stats_7d

from featurestore import (
    Aggregations,
    Count,
    Field,
    FileStreamSource,
    Float64,
    Int64,
    IntervalJoin,
    Lookup,
    Max,
    Mean,
    Select,
    Sliding,
    String,
    Sum,
    UnifiedTransformer,
    col,
    stream_feature_view,
)

refunds = FileStreamSource(
    name="refunds",
    path="data/stream/refunds",
    history="data/history/refunds.parquet",
    timestamp_field="timestamp",
    max_out_of_orderness=timedelta(seconds=5),
    description="Refunds of payments: payment, amount, reason",
    owner="payments@example.com",
)


def amount_against_habit(event):
    """A payment's amount as a multiple of the user's mean payment in the 7 days before it."""
    count, total = event["habit_payment_count_7d"], event["habit_amount_sum_7d"]
    if not count or not total or event["amount"] is None:
        return None
    ratio = event["amount"] / (total / count)
    return {"user_id": event["user_id"], "amount_ratio": ratio, "unusual": 1 if ratio > 3 else 0}


@stream_feature_view(
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="amount_ratio_max_7d", dtype=Float64),
        Field(name="amount_ratio_mean_7d", dtype=Float64),
        Field(name="unusual_payments_7d", dtype=Int64),
    ],
    source=payments,
    tags={"team": "risk"},
    owner="risk@example.com",
)
def user_amount_vs_habit_7d(ctx, inputs):
    """How far each user's payments stray from their own habit: every payment is compared with
    user_payment_stats_7d as it stood just before the payment (an as-of lookup)."""
    return UnifiedTransformer(
        ctx,
        joins=[
            Lookup(
                user_payment_stats_7d,
                features=["payment_count_7d", "amount_sum_7d"],
                on={"user_id": "user_id"},
                prefix="habit_",
                exclusive=True,
            )
        ],
        event_transform=amount_against_habit,
        window=Sliding(size=timedelta(days=7)),
        aggregator=Aggregations(
            amount_ratio_max_7d=Max("amount_ratio"),
            amount_ratio_mean_7d=Mean("amount_ratio"),
            unusual_payments_7d=Sum("unusual"),
        ),
    ).run(inputs)


@stream_feature_view(
    entities=[user],
    ttl=timedelta(days=30),
    schema=[
        Field(name="user_id", dtype=String),
        Field(name="refunded_payments_30d", dtype=Int64),
        Field(name="refunded_amount_30d", dtype=Float64),
    ],
    source=payments,
    tags={"team": "risk"},
    owner="risk@example.com",
)
def user_refunds_30d(ctx, inputs):
    """Each user's payments refunded within a day, over 30 days: payments joined with refunds
    (a stream-stream interval join on the payment id)."""
    return UnifiedTransformer(
        ctx,
        joins=[
            IntervalJoin(
                refunds,
                on={"payment_id": "payment_id"},
                within=(timedelta(0), timedelta(days=1)),
                fields=["amount", "reason"],
                prefix="refund_",
            )
        ],
        event_transform=Select(user_id=col("user_id"), refund_amount=col("refund_amount")),
        window=Sliding(size=timedelta(days=30)),
        aggregator=Aggregations(
            refunded_payments_30d=Count(), refunded_amount_30d=Sum("refund_amount")
        ),
    ).run(inputs)
