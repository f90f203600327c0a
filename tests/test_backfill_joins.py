"""`mlfs backfill` of the example's views with joins (`mlfs init --with-joins`): every backfill
engine writes the reference's rows, computed with the views they look up and the source they join;
stock Feast reads them online and point in time; `serve-stream` refuses them in one line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conformance import assert_same_rows
from conftest import AS_OF
from repo_helpers import example_repo
from test_backfill_e2e import normalise, same_features

from backfill.history import history_path, read_history
from backfill.joins import history_table, source_files
from featurestore.cli import main
from featurestore.config import feast_store
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.repo import FeatureRepo, load_repo
from transforms.joining import JoinInputs, LookupTable
from transforms.plan import EVENT_TIMESTAMP

JOINED = ("user_amount_vs_habit_7d", "user_refunds_30d")


def reference_rows(repo: FeatureRepo, name: str) -> list[dict[str, Any]]:
    """The view's rows on the reference engine, given what its joins read, computed here."""
    view = repo.views[name]
    inputs = JoinInputs()
    for lookup in view.plan.lookups:
        target = repo.views[lookup.view]
        inputs.lookups[lookup.view] = LookupTable.of(target.plan, reference_rows(repo, lookup.view))
    for join in view.plan.interval_joins:
        inputs.sources[join.source_name] = history_table(source_files(repo, join.source))
    rows = view.run(read_history(history_path(repo, view)), joins=inputs).rows
    return [r for r in rows if r[EVENT_TIMESTAMP] < AS_OF]


@pytest.fixture(
    scope="module", params=["embedded", "reference", pytest.param("spark", marks=pytest.mark.slow)]
)
def backfilled(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = example_repo(tmp_path_factory.mktemp(request.param) / "repo", events=3000, with_joins=True)
    assert main(["apply", "--repo", str(repo)]) == 0
    # Only the views with joins: the views they look up are computed with them, not read back.
    args = ["backfill", *JOINED, "--end", AS_OF.isoformat(), "--engine", request.param, "--repo", str(repo)]
    assert main(args) == 0
    return repo


def test_offline_rows_of_joined_views_equal_reference(backfilled: Path) -> None:
    repo = load_repo(backfilled)
    offline = ParquetOfflineStore(repo.settings.offline_path)
    for name in JOINED:
        expected = reference_rows(repo, name)
        assert len(expected) > 50
        stored = [
            {k: v for k, v in r.items() if k != "created_timestamp"}
            for r in offline.read(repo.views[name]).to_pylist()
        ]
        assert_same_rows(repo.views[name], expected, stored)
    assert not offline.read(repo.views["user_payment_stats_7d"]).num_rows  # looked up, not backfilled


def test_feast_reads_joined_views_online_and_point_in_time(backfilled: Path) -> None:
    repo = load_repo(backfilled)
    store = feast_store(repo.settings)
    for name in JOINED:
        rows = sorted(reference_rows(repo, name), key=lambda r: r[EVENT_TIMESTAMP])
        features = [f.name for f in repo.views[name].feature_fields]
        latest = {r["user_id"]: r for r in rows}
        users = sorted(latest)[:25]
        online = store.get_online_features(
            features=[f"{name}:{f}" for f in features], entity_rows=[{"user_id": u} for u in users]
        ).to_dict()
        for i, user in enumerate(users):
            got = {f: online[f][i] for f in features}
            assert same_features(got, {f: latest[user][f] for f in features}), (name, user, got)
        assert_point_in_time_reads(store, name, features, rows)


def assert_point_in_time_reads(
    store: Any, name: str, features: list[str], rows: list[dict[str, Any]]
) -> None:
    """Stock Feast's point-in-time reads of a view, at the times of about 40 of ``rows`` (its
    expected rows, in time order), give each user's latest row at or before that time."""
    probes = [(r["user_id"], r[EVENT_TIMESTAMP]) for r in rows[:: max(1, len(rows) // 40)]]
    entity_df = pd.DataFrame({"user_id": [u for u, _ in probes], "event_timestamp": [t for _, t in probes]})
    history = store.get_historical_features(
        entity_df=entity_df, features=[f"{name}:{f}" for f in features]
    ).to_df()
    assert len(history) == len(probes)
    for record in history.to_dict("records"):
        t = record["event_timestamp"].to_pydatetime()
        before = [r for r in rows if r["user_id"] == record["user_id"] and r[EVENT_TIMESTAMP] <= t]
        want = {f: before[-1][f] for f in features}
        assert same_features({f: normalise(record[f]) for f in features}, want), (name, record)


def test_serve_stream_streams_the_views_a_named_view_looks_up_first(tmp_path: Path) -> None:
    """One job runs the whole graph: a named view's looked-up views join it, ahead of it."""
    from featurestore.repo import load_repo
    from featurestore.stream.service import stream_views

    repo = example_repo(tmp_path / "repo", events=200, with_joins=True)
    said: list[str] = []
    views = stream_views(load_repo(repo), ["user_amount_vs_habit_7d", "user_refunds_30d"], said.append)
    assert [v.name for v in views] == ["user_payment_stats_7d", "user_amount_vs_habit_7d", "user_refunds_30d"]
    assert said == ["also streaming user_payment_stats_7d: looked up by the views named"]
    everything = stream_views(load_repo(repo), [], said.append)
    names = [v.name for v in everything]
    assert names.index("user_payment_stats_7d") < names.index("user_amount_vs_habit_7d")
    assert len(said) == 1


def test_verify_runs_a_joined_view_with_what_each_engine_computes_of_the_view_it_looks_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = example_repo(tmp_path / "repo", events=600, with_joins=True)
    capsys.readouterr()
    args = ["verify", "user_amount_vs_habit_7d", "--engines", "embedded", "--repo", str(repo)]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[2] for line in lines if " on " in line] == ["reference", "embedded"]
    assert "identical" in lines[1], lines
