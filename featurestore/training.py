"""Per-entity training (``mlfs train``): one scikit-learn model per key over a view's offline feature
rows, fitted on Spark (one group per key), saved with a version in the model directory and recorded
in the registry, so ``TrainedModels`` can score each key with its own model.

The rows used are those before ``end``; every model saved by the run is live from ``end``, so a
backfill that scores history uses, for each row, only a model trained on rows before it.
"""

from __future__ import annotations

import json
import pickle
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from featurestore.repo import FeatureRepo
from transforms.errors import MLFSError
from transforms.inference.trained import INDEX, ModelSetIndex, TrainedVersion
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP

ESTIMATORS = ("logistic", "linear")
TAG_KIND = "mlfs.kind"
TAG_MODEL = "mlfs.model"
MODEL_KIND = "trained_models"


@dataclass
class TrainingReport:
    """What a training run did: the version it saved, the keys it trained and those it skipped."""

    name: str
    version: str
    live_from: datetime
    directory: Path
    trained: dict[str, int] = field(default_factory=dict)  # key -> rows
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why
    seconds: float = 0.0

    def summary(self) -> str:
        return (
            f"{self.name} {self.version}: {len(self.trained)} model(s) trained "
            f"({sum(self.trained.values())} rows), {len(self.skipped)} key(s) skipped; "
            f"live from {self.live_from.isoformat()}; {self.directory}"
        )


def _fit(estimator: str, min_rows: int, features: list[str], label: str) -> Any:
    """The per-group function Spark runs: fit one model on a key's rows (pickled, as the Beam
    scikit-learn handler loads it) or say why not."""

    def fit(frame: Any) -> Any:
        import numpy as np
        import pandas as pd
        from sklearn.linear_model import LinearRegression, LogisticRegression

        key = str(frame["_key"].iloc[0])
        x = frame[features].to_numpy(dtype=float)
        y = frame[label].to_numpy(dtype=float)
        row: dict[str, Any] = {"key": key, "rows": len(frame), "model": None, "error": None}
        if len(frame) < min_rows:
            row["error"] = f"{len(frame)} rows, fewer than {min_rows}"
        elif estimator == "logistic":
            y = (y > 0).astype(int)
            if len(np.unique(y)) < 2:
                row["error"] = "every row has the same label"
            else:
                row["model"] = pickle.dumps(LogisticRegression(max_iter=1000).fit(x, y))
        else:
            row["model"] = pickle.dumps(LinearRegression().fit(x, y))
        return pd.DataFrame([row])

    return fit


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)[:80] or "_"


def train_per_key(
    repo: FeatureRepo,
    name: str,
    view_name: str,
    *,
    key: str,
    features: list[str],
    label: str,
    estimator: str = "logistic",
    end: datetime | None = None,
    model_dir: Path | None = None,
    spark_master: str | None = None,
    min_rows: int = 10,
) -> TrainingReport:
    """Train one model per value of ``key`` on ``view_name``'s offline rows before ``end``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from backfill.spark_session import DEFAULT_MASTER, spark_session
    from featurestore.offline.parquet import ParquetOfflineStore

    started = time.monotonic()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", name):
        raise MLFSError(f"model set name {name!r}: use letters, digits, '_', '.' and '-'")
    if estimator not in ESTIMATORS:
        raise MLFSError(f"unknown estimator {estimator!r} (choose from {', '.join(ESTIMATORS)})")
    view = repo.view(view_name)
    columns = [*view.plan.key_names, *(n for n, _ in view.plan.output_features)]
    unknown = [c for c in (key, label, *features) if c not in columns]
    if unknown:
        raise MLFSError(f"view {view_name!r} has no column {unknown[0]!r} (columns: {', '.join(columns)})")
    if not features:
        raise MLFSError("name at least one feature to train on")
    end = end or datetime.now(UTC)
    version = end.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    directory = (model_dir or repo.settings.work_path.parent / "models") / name
    offline_dir = ParquetOfflineStore(repo.settings.offline_path).view_path(view.name)
    if not any(offline_dir.rglob("*.parquet")):
        raise MLFSError(f"view {view_name!r} has no offline rows yet: run `mlfs backfill {view_name}` first")

    spark_settings = repo.settings.mlfs.get("spark") or {}
    spark = spark_session(spark_master or spark_settings.get("master") or DEFAULT_MASTER)
    rows = spark.read.option("basePath", str(offline_dir)).parquet(str(offline_dir))
    identity = [*view.plan.key_names, EVENT_TIMESTAMP]
    newest = Window.partitionBy(*identity).orderBy(F.col(CREATED_TIMESTAMP).desc())
    rows = (
        rows.filter(F.col(EVENT_TIMESTAMP) < F.lit(end))
        .withColumn("_rank", F.row_number().over(newest))
        .filter(F.col("_rank") == 1)
        .select(F.col(key).cast("string").alias("_key"), *features, label)
        .dropna()
    )
    schema = "key string, rows long, model binary, error string"
    fitted = rows.groupBy("_key").applyInPandas(_fit(estimator, min_rows, features, label), schema).collect()

    index = (
        ModelSetIndex.read(directory)
        if (directory / INDEX).is_file()
        else ModelSetIndex(name, view.name, key, list(features), label, estimator, {})
    )
    if (index.view, index.key, index.features, index.label) != (view.name, key, list(features), label):
        raise MLFSError(
            f"model set {name!r} was trained on view {index.view!r}, key {index.key!r}, features "
            f"{index.features} and label {index.label!r}; use another name for a different set"
        )
    report = TrainingReport(name, version, end, directory)
    for result in sorted(fitted, key=lambda r: r["key"]):
        if result["model"] is None:
            report.skipped[result["key"]] = result["error"]
            continue
        relative = Path(_safe(result["key"])) / version / "model.pkl"
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(result["model"])
        index.add(TrainedVersion(result["key"], version, end.isoformat(), str(relative), result["rows"]))
        report.trained[result["key"]] = result["rows"]
    index.write(directory)
    record_model_set(repo, index, directory)
    report.seconds = time.monotonic() - started
    return report


def record_model_set(repo: FeatureRepo, index: ModelSetIndex, directory: Path) -> None:
    """Record the model set in the Feast registry as a feature service over the features it was
    trained on (Feast's notion of what a model consumes), its versions in a tag."""
    from feast import FeatureService

    from featurestore.config import feast_store

    store = feast_store(repo.settings)
    feature_view = store.get_feature_view(index.view)
    service = FeatureService(
        name=index.name,
        features=[feature_view[[*index.features, index.label]]],
        description=f"{index.estimator} models per {index.key}, trained by mlfs train",
        tags={
            TAG_KIND: MODEL_KIND,
            TAG_MODEL: json.dumps({**index.to_json(), "directory": str(directory)}, sort_keys=True),
        },
    )
    store.apply([service])


def list_model_sets(store: Any) -> list[dict[str, Any]]:
    """Every model set ``mlfs train`` recorded in the registry (as stored; nothing is loaded)."""
    services = store.list_feature_services()
    return [
        json.loads(s.tags[TAG_MODEL])
        for s in sorted(services, key=lambda s: s.name)
        if s.tags.get(TAG_KIND) == MODEL_KIND
    ]
