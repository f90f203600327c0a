"""`mlfs verify`: the same sample on every engine, a readable diff, exit 1 on any difference."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import AS_OF
from repo_helpers import example_repo

from featurestore.cli import main
from featurestore.repo import load_repo
from featurestore.verify import EngineRun, report_lines
from transforms.compare import diff_rows
from transforms.plan import EVENT_TIMESTAMP


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return example_repo(tmp_path_factory.mktemp("verify") / "repo", events=600)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_every_engine_agrees_on_the_example(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["verify", "user_payment_stats_7d", "--sample", "400", "--repo", str(repo)])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = out.splitlines()
    assert [line.split()[2] for line in lines] == ["reference", "embedded", "spark", "flink"]
    assert all(line.split()[6] == "identical" for line in lines[1:]), out


def test_events_file_and_bad_arguments(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = tmp_path / "events.jsonl"
    stamp = (AS_OF + timedelta(minutes=5)).isoformat()
    events.write_text(
        json.dumps({"user_id": "u1", "merchant_id": "m1", "amount": 3.5, "timestamp": stamp}) + "\n"
    )
    code = main(
        [
            "verify",
            "merchant_amount_1h",
            "--events",
            str(events),
            "--engines",
            "reference,embedded",
            "--repo",
            str(repo),
        ]
    )
    # one event: its window, then the emptied window
    out = capsys.readouterr().out
    assert code == 0 and "merchant_amount_1h on reference        2 rows" in out, out
    assert "merchant_amount_1h on embedded         2 rows" in out, out

    assert main(["verify", "merchant_amount_1h", "--engines", "duckdb", "--repo", str(repo)]) == 1
    assert "unknown engine 'duckdb'" in capsys.readouterr().err
    assert (
        main(["verify", "merchant_amount_1h", "--events", str(tmp_path / "nope.jsonl"), "--repo", str(repo)])
        == 1
    )
    assert "no such events file" in capsys.readouterr().err


def test_diff_is_readable_and_complete(repo: Path) -> None:
    plan = load_repo(repo).view("merchant_amount_1h").plan
    row = {
        "merchant_id": "m1",
        EVENT_TIMESTAMP: AS_OF,
        "amount_mean_1h": 2.0,
        "amount_max_1h": 3.0,
        "payment_count_1h": 2,
    }
    assert diff_rows(plan, [row], [dict(row)]) == []
    assert diff_rows(plan, [row], [{**row, "amount_mean_1h": 2.0 + 1e-12}]) == []  # within 1e-9 relative
    problems = diff_rows(
        plan, [row, {**row, EVENT_TIMESTAMP: AS_OF + timedelta(hours=1)}], [{**row, "payment_count_1h": 3}]
    )
    assert problems == [
        "missing row m1 @ 2026-11-22T21:00:00+00:00",
        "m1 @ 2026-11-22T20:00:00+00:00 payment_count_1h: expected 2, got 3",
    ]
    lines = report_lines("v", [EngineRun("flink", 1, 1.0, "1 events", problems)])
    assert "DIFFERS" in lines[0] and lines[1].strip() == problems[0]
