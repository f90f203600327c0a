"""A view with model stages on both sides of aggregation, shared by the engine tests and the Beam
job they run in a process of its own."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from conformance import split_and_drop
from conftest import EVENTS, USER
from inference_models import sklearn_model, torch_model

from featurestore import (
    Aggregations,
    Count,
    Field,
    Float64,
    Int64,
    Latest,
    Max,
    Sliding,
    String,
    Sum,
    UnifiedTransformer,
    stream_feature_view,
)
from transforms.inference import Batching, Enrich, KeyedModels


def risk_inputs(row: dict[str, Any]) -> torch.Tensor:
    if row.get("tag") == "e" and row.get("i") is None:
        raise ValueError("no input for tag e without i")
    v = row.get("v")
    i = row.get("i")
    return torch.tensor(
        [0.0 if v is None else v / 100, 0.0 if i is None else i / 50, len(row.get("tag") or "")],
        dtype=torch.float64,
    )


def label_inputs(row: dict[str, Any]) -> list[float]:
    return [float(row["n"]), row["risk_sum"] or 0.0]


def scored_view(tmp: Path) -> Any:
    segments = {tag: torch_model(tmp, f"seg-{tag}", seed=n) for n, tag in enumerate("abc", start=1)}
    fallback = torch_model(tmp, "fallback", seed=7)
    label = sklearn_model(tmp, "label", seed=5, version="2")

    def model_scores(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(
            ctx,
            event_transform=split_and_drop,
            enrich_events=Enrich(
                "risk",
                KeyedModels("tag", segments, max_loaded=1, default=fallback),
                inputs=risk_inputs,
                outputs="risk",
                batching=Batching(max_batch_size=8),
            ),
            window=Sliding(timedelta(seconds=10)),
            aggregator=Aggregations(
                n=Count(), risk_sum=Sum("risk"), risk_max=Max("risk"), risk_model=Latest("risk_model_id")
            ),
            enrich_rows=Enrich("label", label, inputs=label_inputs, outputs="label", batching=Batching(5)),
        ).run(inputs)

    schema = [
        Field("user_id", String),
        Field("n", Int64),
        Field("risk_sum", Float64),
        Field("risk_max", Float64),
        Field("risk_model", String),
        Field("label", Int64),
        Field("label_model_id", String),
        Field("label_model_version", String),
    ]
    return stream_feature_view(entities=[USER], schema=schema, source=EVENTS)(model_scores)
