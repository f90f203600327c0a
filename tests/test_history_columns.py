"""A declarative view's Parquet history read with only the columns it reads
(``backfill.history.ParquetHistory``): stage 1 gives exactly the rows, counts and dead letters (each
with the whole raw event) that reading every column gives, over files of several row-group sizes,
a column only one file has, hot keys, ties and bad events spread through every batch."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from repo_helpers import example_repo

from backfill.history import ParquetHistory, arrow_batches, history_batches
from featurestore.repo import load_repo
from featurestore.scaffold import HISTORY_SCHEMA
from transforms.engines.embedded import load_prepared, made_ahead
from transforms.events import DeadLetter, EventCounts

START = datetime(2026, 3, 1, tzinfo=UTC)
BATCH = 64


def payment(rng: random.Random, i: int) -> dict[str, Any]:
    hot = rng.random() < 0.5
    return {
        "payment_id": f"p{i}",
        "user_id": "u-hot" if hot else f"u{rng.randrange(40)}",
        "merchant_id": "m-hot" if hot else f"m{rng.randrange(10)}",
        "amount": round(rng.uniform(-5, 500), 2) if rng.random() > 0.05 else None,
        "status": rng.choice(["succeeded", "failed", None]),
        "failure_reason": rng.choice([None, "insufficient_funds"]),
        # minute resolution: many events of a key at one time
        "timestamp": START + timedelta(minutes=rng.randrange(3 * 24 * 60)),
    }


def spoil(rng: random.Random, event: dict[str, Any]) -> dict[str, Any]:
    """One of the ways an event goes to the row path or the dead letter."""
    how = rng.randrange(6)
    if how == 0:
        return {**event, "user_id": None, "merchant_id": None}
    if how == 1:
        return {**event, "timestamp": None}
    if how == 2:
        return {**event, "amount": float("inf")}
    if how == 3:
        return {**event, "amount": float("-inf"), "status": "failed"}
    if how == 4:
        return {**event, "timestamp": datetime(1960, 1, 1, tzinfo=UTC)}
    return {**event, "amount": float("nan")}


def write_history(folder: Path, rng: random.Random) -> list[Path]:
    folder.mkdir()
    files = []
    for n, (events, group_rows) in enumerate([(700, 37), (900, 1000), (500, None)]):
        rows = [payment(rng, n * 1000 + i) for i in range(events)]
        rows = [spoil(rng, r) if rng.random() < 0.08 else r for r in rows]
        table = pa.Table.from_pylist(rows, schema=HISTORY_SCHEMA)
        if n == 1:  # a column the first file (and so the dataset's schema) does not have
            table = table.append_column("note", pa.array([f"n{i}" for i in range(events)]))
        path = folder / f"part-{n}.parquet"
        pq.write_table(table, path, row_group_size=group_rows)
        files.append(path)
    return files


def stage1(view: Any, batches: Any, whole_rows: Any) -> tuple[EventCounts, list[DeadLetter], list[Any]]:
    con = duckdb.connect()
    counts, letters = load_prepared(con, view.plan, view.name, batches, whole_rows=whole_rows)
    rows = sorted(con.sql("SELECT * FROM prepared").fetchall(), key=repr)
    con.close()
    return counts, letters, rows


@pytest.mark.parametrize("view_name", ["user_payment_stats_7d", "merchant_amount_1h"])
def test_pruned_history_gives_what_the_whole_history_gives(tmp_path: Path, view_name: str) -> None:
    repo = load_repo(example_repo(tmp_path / "repo", events=100))
    view = repo.views[view_name]
    files = write_history(tmp_path / "history", random.Random(view_name))
    history = ParquetHistory(files, ["timestamp", "user_id", "merchant_id", "amount", "status"])
    assert "payment_id" not in history.columns and "note" not in history.columns

    whole = stage1(view, arrow_batches(files, BATCH), None)
    pruned = stage1(view, history.batches(BATCH), history.whole_rows)
    assert pruned[0] == whole[0]
    assert pruned[1] == whole[1]
    assert pruned[2] == whole[2]
    counts = whole[0]
    assert counts.dead_lettered > 50 and counts.rows > 1500, counts
    assert all("payment_id" in letter.raw for letter in pruned[1])


def test_only_declarative_views_without_joins_read_fewer_columns(tmp_path: Path) -> None:
    repo = load_repo(example_repo(tmp_path / "repo", events=100, with_joins=True))
    files = write_history(tmp_path / "history", random.Random(3))
    readers = {name: history_batches(view, files)[1] is not None for name, view in repo.views.items()}
    assert readers["user_payment_stats_7d"] and readers["merchant_amount_1h"]
    assert not readers["user_last_payment_fail"]  # a Python row function may read any field
    assert not readers["user_amount_vs_habit_7d"] and not readers["user_refunds_30d"]  # joins


def test_whole_rows_reads_each_row_group_it_needs(tmp_path: Path) -> None:
    files = write_history(tmp_path / "history", random.Random(5))
    history = ParquetHistory(files, ["timestamp"])
    everything = [row for batch in arrow_batches(files, BATCH) for row in batch.to_pylist()]
    ids = [0, 1, 36, 37, 38, 699, 700, 1599, 1600, 2099]
    assert history.whole_rows(ids) == [everything[i] for i in ids]
    assert history.whole_rows([]) == []


def test_batches_made_ahead_keep_order_raise_the_makers_error_and_stop_when_closed() -> None:
    assert list(made_ahead(iter(range(100)), depth=3)) == list(range(100))

    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for item in made_ahead(failing()):
            got.append(item)
    assert got == [1]

    made = []

    def endless() -> Iterator[int]:
        n = 0
        while True:
            made.append(n)
            yield n
            n += 1

    ahead = made_ahead(endless(), depth=2)
    assert next(ahead) == 0
    ahead.close()  # joins the thread: it stops making
    stopped_at = len(made)
    time.sleep(0.3)
    assert len(made) == stopped_at <= 5
    assert not [t for t in threading.enumerate() if t.name == "mlfs-stage1" and t.is_alive()]
