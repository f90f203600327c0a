"""After `mlfs backfill`, the stock Feast SDK serves exactly the reference engine's values."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import AS_OF, start_redis, stop_redis
from repo_helpers import example_repo

from backfill.history import history_path, read_history
from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import load_repo
from transforms.compare import same_value
from transforms.plan import EVENT_TIMESTAMP

pytestmark = pytest.mark.slow


def reference_rows(repo: Any, view_name: str) -> list[dict[str, Any]]:
    view = repo.views[view_name]
    rows = view.run(read_history(history_path(repo, view))).rows
    return [r for r in rows if r[EVENT_TIMESTAMP] < AS_OF]


def latest(rows: list[dict[str, Any]], key: str) -> dict[Any, dict[str, Any]]:
    out: dict[Any, dict[str, Any]] = {}
    for r in sorted(rows, key=lambda r: r[EVENT_TIMESTAMP]):
        out[r[key]] = r
    return out


def same_features(got: dict[str, Any], want: dict[str, Any]) -> bool:
    """Feature values equal under the float contract (``transforms.compare``: 1e-9 relative)."""

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, float) and type(b) is int:  # pandas holds integers beside nulls as floats
            return a == b
        return same_value(a, b)

    return got.keys() == want.keys() and all(same(normalise(got[f]), want[f]) for f in want)


def normalise(value: Any) -> Any:
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


@pytest.fixture(
    scope="module",
    # Spark's SQLite writes are checked by test_spark_backfill; here Spark writes to Redis, the
    # embedded engine (the default) to SQLite.
    params=[("sqlite", "reference"), ("sqlite", "embedded"), ("redis", "reference"), ("redis", "spark")],
    ids=lambda p: "-".join(p),
)
def backfilled_with(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, str]]:
    """One backfilled example repository per store and engine (with that engine's name), shared by
    the tests that read it."""
    online, engine = request.param
    base = tmp_path_factory.mktemp(f"{online}-{engine}")
    with pytest.MonkeyPatch.context() as env:
        redis_env, proc = None, None
        if online == "redis":
            port, proc = start_redis(base)
            env.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{port}")
            redis_env = "MLFS_TEST_REDIS"
        repo = example_repo(base / "repo", events=2000, redis_env=redis_env)
        assert main(["apply", "--repo", str(repo)]) == 0
        assert main(["backfill", "--end", AS_OF.isoformat(), "--engine", engine, "--repo", str(repo)]) == 0
        yield repo, engine
        if proc is not None:
            stop_redis(proc)


@pytest.fixture
def backfilled(backfilled_with: tuple[Path, str]) -> Path:
    return backfilled_with[0]


def test_online_values_equal_reference(backfilled: Path) -> None:
    repo = load_repo(backfilled)
    store = feast_store(repo.settings)
    for view_name, key in [
        ("user_payment_stats_7d", "user_id"),
        ("user_last_payment_fail", "user_id"),
        ("merchant_amount_1h", "merchant_id"),
    ]:
        expected = latest(reference_rows(repo, view_name), key)
        assert len(expected) > 10
        features = [f.name for f in repo.views[view_name].feature_fields]
        entity_rows = [{key: k} for k in sorted(expected)]
        got = store.get_online_features(
            features=[f"{view_name}:{f}" for f in features], entity_rows=entity_rows
        ).to_dict()
        for i, entity in enumerate(entity_rows):
            want = expected[entity[key]]
            values = {f: got[f][i] for f in features}
            assert same_features(values, {f: want[f] for f in features}), (entity, values)


def test_historical_values_are_point_in_time_correct(backfilled: Path) -> None:
    repo = load_repo(backfilled)
    store = feast_store(repo.settings)
    rows = reference_rows(repo, "user_payment_stats_7d")
    rng = random.Random(11)
    sample = rng.sample(rows, 60)
    probes = []
    for r in sample:  # exactly at a row's time, just before it, and somewhere after it
        for delta in (timedelta(0), timedelta(milliseconds=-1), timedelta(minutes=rng.randrange(600))):
            probes.append((r["user_id"], r[EVENT_TIMESTAMP] + delta))
    first_rows: dict[str, Any] = {}
    for r in rows:  # 1 ms before a user's first row there is no value yet
        if r["user_id"] not in first_rows or r[EVENT_TIMESTAMP] < first_rows[r["user_id"]]:
            first_rows[r["user_id"]] = r[EVENT_TIMESTAMP]
    probes += [(u, t - timedelta(milliseconds=1)) for u, t in sorted(first_rows.items())[:5]]
    probes += [("nobody", AS_OF - timedelta(days=1))]
    probes = sorted({(u, t) for u, t in probes if t < AS_OF})
    entity_df = pd.DataFrame({"user_id": [u for u, _ in probes], "event_timestamp": [t for _, t in probes]})
    features = ["payment_count_7d", "amount_sum_7d", "fail_count_7d"]
    got = store.get_historical_features(
        entity_df=entity_df, features=[f"user_payment_stats_7d:{f}" for f in features]
    ).to_df()
    by_user: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r[EVENT_TIMESTAMP]):
        by_user.setdefault(r["user_id"], []).append(r)
    checked = 0
    for rec in got.to_dict("records"):
        t = rec["event_timestamp"].to_pydatetime()
        before = [r for r in by_user.get(rec["user_id"], []) if r[EVENT_TIMESTAMP] <= t]
        want = {f: before[-1][f] for f in features} if before else dict.fromkeys(features)
        assert same_features({f: rec[f] for f in features}, want), (rec["user_id"], t, rec)
        checked += 1
    assert checked == len(probes)


def test_rerun_is_idempotent_and_bad_rows_are_dead_lettered(backfilled_with: tuple[Path, str]) -> None:
    backfilled, engine = backfilled_with
    repo = load_repo(backfilled)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    view = repo.views["user_payment_stats_7d"]
    before = offline.read(view).num_rows
    assert before == len(reference_rows(repo, view.name))
    assert (
        main(
            [
                "backfill",
                "user_payment_stats_7d",
                "--end",
                AS_OF.isoformat(),
                "--engine",
                engine,
                "--repo",
                str(backfilled),
            ]
        )
        == 0
    )
    assert offline.read(view).num_rows == before
    letters = list((repo.settings.dead_letter_path / view.name).glob("*.jsonl"))
    assert len(letters) == 1
    reasons = sorted(json.loads(line)["reason"] for line in letters[0].read_text().splitlines())
    assert reasons == ["missing_key", "missing_time"]


def test_backfill_refuses_unapplied_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = example_repo(tmp_path / "repo", events=300)
    assert main(["apply", "--repo", str(repo)]) == 0
    features = repo / "features.py"
    features.write_text(features.read_text().replace("timedelta(days=7)", "timedelta(days=3)"))
    capsys.readouterr()
    assert main(["backfill", "--engine", "reference", "--repo", str(repo)]) == 1
    assert "changed since the last `mlfs apply`" in capsys.readouterr().err


def test_offline_history_of_every_view_equals_reference(backfilled: Path) -> None:
    """Every row of every view, across chunk boundaries (hopping lookback, lifetime prefix)."""
    from conformance import assert_same_rows

    repo = load_repo(backfilled)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    for name, view in repo.views.items():
        stored = [
            {k: v for k, v in r.items() if k != "created_timestamp"} for r in offline.read(view).to_pylist()
        ]
        assert_same_rows(view, reference_rows(repo, name), stored)
