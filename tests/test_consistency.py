"""``mlfs consistency``: a backfilled repository's online store agrees with its offline store on
every sampled key, and each planted fault is found with its cause."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import AS_OF
from repo_helpers import example_repo

from featurestore.cli import main
from featurestore.consistency import check_consistency
from featurestore.offline.parquet import PARTITION_PREFIX, ParquetOfflineStore
from featurestore.online import open_online_writer
from featurestore.repo import load_repo

VIEWS = ("user_payment_stats_7d", "merchant_amount_1h", "user_last_payment_fail")


@pytest.fixture(params=["sqlite", "redis"])
def backfilled(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if request.param == "redis":
        monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{request.getfixturevalue('redis_port')}")
        repo = example_repo(tmp_path / "repo", events=600, redis_env="MLFS_TEST_REDIS")
    else:
        repo = example_repo(tmp_path / "repo", events=600)
    assert main(["apply", "--repo", str(repo)]) == 0
    assert main(["backfill", "--end", AS_OF.isoformat(), "--repo", str(repo)]) == 0
    return repo


def test_a_backfilled_repository_has_no_mismatch(
    backfilled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = load_repo(backfilled)
    for view in VIEWS:
        report = check_consistency(repo, view, sample=1000)
        assert report.sampled > 0 and not report.mismatches, [m.line() for m in report.mismatches]
    capsys.readouterr()
    assert main(["consistency", "user_payment_stats_7d", "--sample", "20", "--repo", str(backfilled)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "user_payment_stats_7d: 20 key(s) sampled, 0 mismatch(es) (0.0%)"
    assert out[1].startswith("  (reference engine over 60") and " in 1 file(s)" in out[1] and len(out) == 2
    assert main(["consistency", "user_payment_stats_7d", "--no-reference", "--repo", str(backfilled)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert (
        main(["consistency", "user_payment_stats_7d", "--events", "nope.jsonl", "--repo", str(backfilled)])
        == 1
    )
    assert "no such events file: nope.jsonl" in capsys.readouterr().err


def test_planted_faults_are_found_with_their_causes(
    backfilled: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = load_repo(backfilled)
    view = repo.views["user_payment_stats_7d"]
    offline = ParquetOfflineStore(repo.settings.offline_path)
    latest = {
        r["user_id"]: r for r in sorted(offline.read(view).to_pylist(), key=lambda r: r["event_timestamp"])
    }

    # An online value overwritten: the same key and time, another amount (a same-time write replaces).
    changed = {**latest["u0001"], "amount_sum_7d": latest["u0001"]["amount_sum_7d"] + 1.0}
    changed.pop("created_timestamp")
    open_online_writer(repo.settings).write(view, [changed])
    # An offline partition removed: the day of another key's latest row.
    gone = latest["u0002"]["event_timestamp"].date()
    assert gone != latest["u0001"]["event_timestamp"].date()
    shutil.rmtree(offline.view_path(view.name) / f"{PARTITION_PREFIX}{gone.isoformat()}")
    # An online value older than the newest offline row: that row written offline only, later.
    newer = {**latest["u0003"], "event_timestamp": AS_OF + timedelta(hours=1)}
    newer.pop("created_timestamp")
    offline.append(view, [newer], AS_OF + timedelta(hours=2))

    report = check_consistency(repo, view.name, sample=1000)
    causes = {m.key[0]: m for m in report.mismatches}
    assert causes["u0001"].cause == "value differs" and "amount_sum_7d: online " in causes["u0001"].detail
    assert causes["u0002"].cause == "missing offline partition"
    assert causes["u0003"].cause == "stale online value"
    left = {r["user_id"] for r in offline.read(view).to_pylist()}  # a key only that day is not sampled
    on_that_day = {u for u, r in latest.items() if r["event_timestamp"].date() == gone and u in left}
    assert set(causes) == {"u0001", "u0003"} | on_that_day
    assert all(causes[u].cause == "missing offline partition" for u in on_that_day)

    capsys.readouterr()
    assert main(["consistency", view.name, "--sample", "1000", "--repo", str(backfilled)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{view.name}: {report.sampled} key(s) sampled, {len(causes)} mismatch(es)")
    assert "  u0001: value differs (amount_sum_7d: online " in "\n".join(out)


def test_serve_stream_samples_the_same_figure_for_its_metrics(backfilled: Path) -> None:
    """``serve-stream``'s sampler: each view's mismatch ratio, on a new seed each round, exported
    as ``mlfs_consistency_mismatch_ratio``."""
    from featurestore.stream.metrics import JobHealth, prometheus_text
    from featurestore.stream.service import ConsistencySampler

    repo = load_repo(backfilled)
    views = [repo.views[name] for name in VIEWS]
    sampler = ConsistencySampler(repo, views, sample=1000)
    sampler.sample_views()
    assert sampler.ratios == dict.fromkeys(VIEWS, 0.0)

    view = repo.views["merchant_amount_1h"]
    offline = ParquetOfflineStore(repo.settings.offline_path)
    last = offline.partitions(view.name)[-1]  # where the merchants' latest rows are
    shutil.rmtree(offline.view_path(view.name) / f"{PARTITION_PREFIX}{last.isoformat()}")
    sampler.sample_views()
    assert sampler.rounds == 2 and 0 < sampler.ratios["merchant_amount_1h"] <= 1
    text = prometheus_text([], JobHealth("RUNNING", consistency=sampler.ratios))
    ratio = sampler.ratios["merchant_amount_1h"]
    assert f'mlfs_consistency_mismatch_ratio{{view="merchant_amount_1h"}} {ratio:.4f}' in text.splitlines()
    assert 'mlfs_consistency_mismatch_ratio{view="user_payment_stats_7d"} 0.0000' in text.splitlines()


def test_the_reference_engine_names_late_events_and_finds_stores_that_agree_wrongly(tmp_path: Path) -> None:
    """With the source's events at hand: a key whose online value was made without a late event
    (the stream dropped it, the backfill counted it) is a ``late event``; an online and offline row
    that agree with each other but not with the reference is a ``value differs``."""
    repo_path = example_repo(tmp_path / "repo", events=600)
    assert main(["apply", "--repo", str(repo_path)]) == 0
    assert (
        main(["backfill", "user_payment_stats_7d", "--end", AS_OF.isoformat(), "--repo", str(repo_path)]) == 0
    )
    repo = load_repo(repo_path)
    view = repo.views["user_payment_stats_7d"]
    offline = ParquetOfflineStore(repo.settings.offline_path)
    rows = sorted(offline.read(view).to_pylist(), key=lambda r: r["event_timestamp"])
    latest = {r["user_id"]: r for r in rows}
    history_file = repo_path / "data" / "history" / "payments.parquet"
    history = pq.read_table(history_file)
    newest_event = pc.max(history.column("timestamp")).as_py()
    # A key whose newest row is an event's, an hour before the newest event at hand.
    user, row = next(
        (u, r)
        for u, r in latest.items()
        if r["event_timestamp"] <= newest_event - timedelta(hours=1)
        and r["event_timestamp"]
        in set(history.filter(pc.equal(history["user_id"], u))["timestamp"].to_pylist())
    )
    before = {k: v for k, v in row.items() if k != "created_timestamp"}

    # The late event: the key's, a minute before its newest row, last in arrival order; a backfill
    # counts it, the stream (serving ``before`` online) left it out.
    event = history.filter(pc.equal(history["user_id"], user)).slice(0, 1).to_pylist()[0]
    event.update(
        payment_id="late-1",
        amount=1000.0,
        status="succeeded",
        failure_reason=None,
        timestamp=row["event_timestamp"] - timedelta(minutes=1),
    )
    pq.write_table(pa.concat_tables([history, pa.Table.from_pylist([event], history.schema)]), history_file)
    assert (
        main(["backfill", "user_payment_stats_7d", "--end", AS_OF.isoformat(), "--repo", str(repo_path)]) == 0
    )
    assert check_consistency(repo, view.name, sample=1000, events=[history_file]).mismatches == []
    open_online_writer(repo.settings).write(view, [before])
    report = check_consistency(repo, view.name, sample=1000, events=[history_file])
    assert [(m.key, m.cause) for m in report.mismatches] == [((user,), "late event")]
    assert "1 event(s) of the key late on the stream" in report.mismatches[0].detail
    assert "1 late event(s) of sampled keys" in report.reference
    without = check_consistency(repo, view.name, sample=1000)  # the stores alone: a value differs
    assert [(m.key, m.cause) for m in without.mismatches] == [((user,), "value differs")]

    # Both stores agree on a value no event made: the reference finds it.
    other, other_row = next((u, r) for u, r in latest.items() if u != user)
    wrong = {k: v for k, v in other_row.items() if k != "created_timestamp"}
    wrong["payment_count_7d"] += 5
    open_online_writer(repo.settings).write(view, [wrong])
    offline.append(view, [wrong], datetime.now(UTC) + timedelta(days=1))  # created after the backfill
    report = check_consistency(repo, view.name, sample=1000, events=[history_file])
    found = {m.key[0]: m for m in report.mismatches}
    assert found[other].cause == "value differs"
    assert found[other].detail.startswith("online and offline agree, the reference engine")
    assert "payment_count_7d: online " in found[other].detail
    assert set(found) == {user, other}
