"""Per-entity training: `mlfs train` fits one model per user on Spark over the example's offline
rows, saves versions and records them in the registry; a view then scores each row with its user's
model in the version live at the row's time, identically on the reference engine and Flink."""

from __future__ import annotations

import json
import pickle
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import AS_OF
from repo_helpers import example_repo

from backfill.history import read_history
from featurestore import (
    Aggregations,
    Count,
    Entity,
    Field,
    FileStreamSource,
    Float64,
    Int64,
    Runner,
    Sliding,
    String,
    Sum,
    TrainedModels,
    UnifiedTransformer,
    stream_feature_view,
)
from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from featurestore.training import list_model_sets
from registry.catalog import load_catalog
from registry.lineage import lineage
from transforms.compare import diff_rows
from transforms.events import Lateness
from transforms.inference import Enrich
from transforms.inference.trained import ModelSetIndex
from transforms.plan import EVENT_TIMESTAMP
from transforms.timeutil import datetime_to_ms

pytestmark = pytest.mark.slow

T1 = AS_OF - timedelta(days=15)
T2 = AS_OF - timedelta(days=8)
FEATURES = ["payment_count_7d", "amount_sum_7d"]


def train(repo: Path, end: Any) -> int:
    return main(
        [
            "train", "fails_by_user", "--repo", str(repo), "--view", "user_payment_stats_7d",
            "--key", "user_id", "--features", ",".join(FEATURES), "--label", "fail_count_7d",
            "--end", end.isoformat(), "--min-rows", "5", "--spark-master", "local[2]",
        ]
    )  # fmt: skip


def scoring_view(model_dir: Path) -> Any:
    user = Entity(name="user", join_keys=["user_id"])
    payments = FileStreamSource(name="payments", path="stream", history="history.parquet")

    def user_fail_risk(ctx: Any, inputs: Any) -> Any:
        return UnifiedTransformer(
            ctx,
            window=Sliding(timedelta(days=7)),
            aggregator=Aggregations(payment_count_7d=Count(), amount_sum_7d=Sum("amount")),
            enrich_rows=Enrich(
                "fail",
                TrainedModels("fails_by_user", model_dir, max_loaded=3),
                inputs=lambda row: [float(row["payment_count_7d"]), row["amount_sum_7d"]],
                outputs="fails_expected",
            ),
        ).run(inputs)

    schema = [
        Field("user_id", String),
        Field("payment_count_7d", Int64),
        Field("amount_sum_7d", Float64),
        Field("fails_expected", Int64),
        Field("fail_model_id", String),
        Field("fail_model_version", String),
    ]
    return stream_feature_view(entities=[user], schema=schema, source=payments)(user_fail_risk)


def test_train_per_user_then_score_with_point_in_time_versions(tmp_path: Path) -> None:
    repo = example_repo(tmp_path / "repo", events=3000)
    assert main(["apply", "--repo", str(repo)]) == 0
    assert main(["backfill", "user_payment_stats_7d", "--repo", str(repo), "--engine", "reference"]) == 0
    assert train(repo, T1) == 0
    assert train(repo, T2) == 0
    assert train(repo, T2) == 0  # a re-run replaces its own version

    settings = load_repo(repo).settings
    model_dir = settings.work_path.parent / "models"
    index = ModelSetIndex.read(model_dir / "fails_by_user")
    assert (index.view, index.key, index.features, index.estimator) == (
        "user_payment_stats_7d", "user_id", FEATURES, "logistic",
    )  # fmt: skip
    assert len(index.versions) > 50
    assert Counter(len(v) for v in index.versions.values()).most_common(1)[0][0] == 2

    # A model is fitted on exactly its user's offline rows before the run's end.
    view = load_repo(repo).view("user_payment_stats_7d")
    offline = ParquetOfflineStore(settings.offline_path).read(view).to_pylist()
    user = sorted(index.versions)[0]
    first = index.versions[user][0]
    rows = [r for r in offline if r["user_id"] == user and r[EVENT_TIMESTAMP] < T1]
    assert first.rows == len(rows) and first.live_from == T1.isoformat()
    with (model_dir / "fails_by_user" / first.path).open("rb") as f:
        model = pickle.load(f)
    from sklearn.linear_model import LogisticRegression

    x = np.array([[r[c] for c in FEATURES] for r in rows], dtype=float)
    y = np.array([r["fail_count_7d"] > 0 for r in rows], dtype=int)
    refit = LogisticRegression(max_iter=1000).fit(x, y)
    assert np.allclose(model.coef_, refit.coef_, rtol=1e-3, atol=1e-4)

    (recorded,) = list_model_sets(feast_store(settings))
    assert (
        recorded["name"] == "fails_by_user"
        and recorded["versions"] == json.loads(json.dumps(index.to_json()))["versions"]
    )
    catalog = load_catalog(feast_store(settings))  # the registry's lookups know the model set
    model_set = catalog.model("fails_by_user")
    assert model_set.kind == "model_set" and model_set.trained_from == "user_payment_stats_7d"
    assert model_set.summary()["keys"] == len(index.versions)
    edge = ("view:user_payment_stats_7d", "model:fails_by_user", "trained on")
    assert edge in lineage(catalog, "user_payment_stats_7d").edges

    # Scoring: each row by its user's model live at the row's time.
    scorer = scoring_view(model_dir)
    history = list(read_history(repo / "data" / "history" / "payments.parquet"))
    result = scorer.run(history)
    by_version = Counter(r["fail_model_version"] for r in result.rows)
    assert len(by_version) == 2 and all(n > 100 for n in by_version.values())
    for row in result.rows:
        when = row[EVENT_TIMESTAMP]
        live = [v for v in index.versions[row["user_id"]] if datetime.fromisoformat(v.live_from) <= when]
        assert live and row["fail_model_version"] == live[-1].version  # versions are kept in time order
    refused = [d for d in result.dead_letters if d.reason.startswith("inference:")]
    assert {d.reason for d in refused} == {"inference:no_model"}  # rows before their user's first model
    assert any(d.event_time is not None and d.event_time < T1 for d in refused)
    sample = next(r for r in result.rows if r[EVENT_TIMESTAMP] >= T2)
    version = index.versions[sample["user_id"]][-1]
    with (model_dir / "fails_by_user" / version.path).open("rb") as f:
        expected = pickle.load(f).predict(np.array([[sample["payment_count_7d"], sample["amount_sum_7d"]]]))
    assert sample["fails_expected"] == int(expected[0])

    # A stream of the last days, scored on Flink as on the reference engine.
    recent = [
        e for e in history if e["timestamp"] is not None and e["timestamp"] >= AS_OF - timedelta(days=6)
    ]
    recent.sort(key=lambda e: datetime_to_ms(e["timestamp"]))
    lateness = Lateness(60_000, 0)
    expected_stream = scorer.run(recent, lateness=lateness)
    streamed = scorer.run(recent, Runner.FLINK, lateness=lateness)
    assert not diff_rows(scorer.plan, expected_stream.rows, streamed.rows)
    assert streamed.counts == expected_stream.counts
