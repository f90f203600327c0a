"""Online stores (Redis and SQLite in Feast's layouts) and the Parquet offline store."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
import yaml
from conftest import AS_OF
from hypothesis import given, settings
from hypothesis import strategies as st
from repo_helpers import example_repo
from test_backfill_e2e import latest, reference_rows, same_features

from featurestore.cli import main
from featurestore.config import ConfigError, feast_store, load_settings
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.online import open_online_writer
from featurestore.online.base import value_blobs
from featurestore.online.redis_writer import field_id
from featurestore.repo import load_repo
from registry.apply import apply_repo
from transforms.arrow_events import row_dicts
from transforms.dtypes import SCALARS
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP

VIEW = "user_payment_stats_7d"
FEATURES = [f"{VIEW}:payment_count_7d", f"{VIEW}:amount_sum_7d", f"{VIEW}:fail_count_7d"]


def row(user: str, ts: datetime, count: int, amount: float, fails: int) -> dict[str, Any]:
    return {
        "user_id": user,
        "payment_count_7d": count,
        "amount_sum_7d": amount,
        "fail_count_7d": fails,
        EVENT_TIMESTAMP: ts,
    }


def online(store: Any, user: str) -> tuple[Any, ...]:
    got = store.get_online_features(features=FEATURES, entity_rows=[{"user_id": user}]).to_dict()
    return (got["payment_count_7d"][0], got["amount_sum_7d"][0], got["fail_count_7d"][0])


@pytest.fixture(params=["sqlite", "redis"])
def applied_repo(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    if request.param == "redis":
        port = request.getfixturevalue("redis_port")
        monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{port}")
        repo = example_repo(tmp_path / "repo", events=300, redis_env="MLFS_TEST_REDIS")
    else:
        repo = example_repo(tmp_path / "repo", events=300)
    apply_repo(load_repo(repo))
    return repo


def test_online_writes_are_newer_wins_and_readable_by_feast(applied_repo: Path) -> None:
    repo = load_repo(applied_repo)
    view = repo.views[VIEW]
    store = feast_store(repo.settings)
    writer = open_online_writer(repo.settings, store)
    t1 = AS_OF - timedelta(hours=1)

    stats = writer.write(view, [row("u1", t1, 3, 30.5, 1), row("u2", t1, 1, 2.0, 0)])
    assert (stats.written, stats.skipped_older) == (2, 0)
    assert online(store, "u1") == (3, 30.5, 1)

    stats = writer.write(view, [row("u1", t1 - timedelta(milliseconds=1), 9, 9.0, 9)])
    assert (stats.written, stats.skipped_older) == (0, 1)  # older: kept the newer value
    assert online(store, "u1") == (3, 30.5, 1)

    writer.write(view, [row("u1", t1, 4, 31.5, 1)])  # same timestamp: a correction replaces
    assert online(store, "u1") == (4, 31.5, 1)

    # within one batch the newest row per key is the one written
    writer.write(
        view,
        [row("u1", t1 + timedelta(seconds=2), 6, 60.0, 0), row("u1", t1 + timedelta(seconds=1), 5, 50.0, 0)],
    )
    assert online(store, "u1") == (6, 60.0, 0)
    assert online(store, "u2") == (1, 2.0, 0)
    assert online(store, "nobody") == (None, None, None)
    writer.close()


def test_sqlite_bulk_writes_are_feasts_layout(tmp_path: Path) -> None:
    """The bulk SQLite writer fills exactly the rows Feast's own writer does, its newer-wins check
    works over rows Feast wrote (whole seconds) and orders its own rows to the microsecond."""
    import sqlite3

    from featurestore.online.feast_writer import FeastOnlineWriter
    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget

    tables = []
    whole = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
    rows = [row("u1", whole, 2, 1.25, 0), row("u2", whole + timedelta(microseconds=1500), 1, -0.5, 1)]

    def bulk_writer(store: Any) -> Any:
        return SqliteOnlineWriter(SqliteTarget.of_feast(store.config))

    for name, make in (("bulk", bulk_writer), ("feast", FeastOnlineWriter)):
        repo = load_repo(example_repo(tmp_path / name, events=300))
        apply_repo(repo)
        store = feast_store(repo.settings)
        writer = make(store)
        assert type(writer).__name__ == ("FeastOnlineWriter" if name == "feast" else "SqliteOnlineWriter")
        writer.write(repo.views[VIEW], rows)
        with sqlite3.connect(tmp_path / name / "data" / "online_store.db") as conn:
            table = f"{repo.settings.project}_{VIEW}"
            tables.append(
                sorted(
                    conn.execute(
                        f'SELECT entity_key, feature_name, value, value_text, event_ts FROM "{table}"'
                    )
                )
            )
    assert tables[0] == tables[1] and len(tables[0]) == 6

    # Feast's writer held u1 at a whole second: a bulk row a microsecond older is skipped, a newer taken
    bulk = SqliteOnlineWriter(SqliteTarget.of_feast(store.config))
    stats = bulk.write(repo.views[VIEW], [row("u1", whole - timedelta(microseconds=1), 9, 9.0, 9)])
    assert (stats.written, stats.skipped_older) == (0, 1)
    stats = bulk.write(repo.views[VIEW], [row("u2", whole + timedelta(microseconds=1501), 7, 7.0, 7)])
    assert (stats.written, stats.skipped_older) == (1, 0)
    assert online(store, "u1") == (2, 1.25, 0) and online(store, "u2") == (7, 7.0, 7)
    # Feast keeps whole seconds; the bulk writer still orders rows within one second
    late = whole + timedelta(milliseconds=900)
    bulk.write(repo.views[VIEW], [row("u3", late, 3, 3.0, 3)])
    stats = bulk.write(repo.views[VIEW], [row("u3", late - timedelta(milliseconds=400), 1, 1.0, 1)])
    assert (stats.written, stats.skipped_older) == (0, 1)
    assert online(store, "u3") == (3, 3.0, 3)
    bulk.close()


def test_sqlite_writers_of_one_process_take_turns(tmp_path: Path) -> None:
    """Writers in threads of one process (a job's sink instances) share one lock per database
    file instead of SQLite's sleeping busy handler; what they write is still newer-wins per key."""
    import threading

    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    apply_repo(repo)
    store = feast_store(repo.settings)
    writers = [SqliteOnlineWriter(SqliteTarget.of_feast(store.config)) for _ in range(4)]
    assert len({id(w.lock) for w in writers}) == 1
    start = datetime(2026, 5, 1, tzinfo=UTC)

    def write(w: int) -> None:  # writer w holds every 4th step of each user's history
        for step in range(w, 40, 4):
            when = start + timedelta(seconds=step)
            writers[w].write(repo.views[VIEW], [row(f"u{u}", when, step, float(u), w) for u in range(50)])

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for writer in writers:
        writer.close()
    assert [online(store, f"u{u}") for u in (0, 49)] == [(39, 0.0, 3), (39, 49.0, 3)]


def test_sqlite_batches_go_in_several_multi_row_statements(tmp_path: Path) -> None:
    """A batch larger than one statement is split into statements of power-of-two sizes; every
    row is written, newer-wins per key as one row at a time would be."""
    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget, statement_sizes

    for rows, largest in ((0, 8), (7, 8), (8, 8), (159, 8), (1000, 256)):
        sizes = statement_sizes(rows, largest)
        assert sum(sizes) == rows and all(s & (s - 1) == 0 and s <= largest for s in sizes)
        assert len(set(sizes)) <= largest.bit_length()

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    apply_repo(repo)
    store = feast_store(repo.settings)
    writer = SqliteOnlineWriter(SqliteTarget.of_feast(store.config))
    assert writer.rows_per_statement == 256  # SQLite's limit of 32766 variables allows it
    writer.rows_per_statement = 8
    view, start = repo.views[VIEW], datetime(2026, 5, 1, tzinfo=UTC)
    first = writer.write(view, [row(f"u{u}", start, u, float(u), 0) for u in range(53)])
    assert (first.written, first.skipped_older) == (53, 0)  # 159 upserts: 19 of 8 rows, then 4, 2, 1
    # odd users get an older row (skipped), even users a newer one
    later = [row(f"u{u}", start + timedelta(seconds=1 if u % 2 == 0 else -1), -u, -1.0, 1) for u in range(53)]
    second = writer.write(view, later)
    assert (second.written, second.skipped_older) == (27, 26)
    writer.close()
    assert [online(store, f"u{u}") for u in (0, 1, 51, 52)] == [
        (0, -1.0, 1),
        (1, 1.0, 0),
        (51, 51.0, 0),
        (-52, -1.0, 1),
    ]


def test_redis_layout_is_feasts(tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.infra.online_stores.helpers import _mmh3
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value
    from google.protobuf.timestamp_pb2 import Timestamp

    monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{redis_port}")
    repo = load_repo(example_repo(tmp_path / "repo", events=300, redis_env="MLFS_TEST_REDIS"))
    apply_repo(repo)
    ts = datetime(2026, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    open_online_writer(repo.settings).write(repo.views[VIEW], [row("u7", ts, 2, 1.25, 0)])

    key = (
        serialize_entity_key(EntityKey(join_keys=["user_id"], entity_values=[Value(string_val="u7")]), 3)
        + repo.settings.project.encode()
    )
    stored = redis.Redis(port=redis_port).hgetall(key)
    assert set(stored) == {f"_ts:{VIEW}".encode()} | {
        _mmh3(f"{VIEW}:{name}") for name in ("payment_count_7d", "amount_sum_7d", "fail_count_7d")
    }
    stamp = Timestamp()
    stamp.ParseFromString(stored[f"_ts:{VIEW}".encode()])
    assert stamp.ToDatetime(tzinfo=UTC) == ts
    value = Value()
    value.ParseFromString(stored[_mmh3(f"{VIEW}:amount_sum_7d")])
    assert value.double_val == 1.25


def test_redis_writes_a_table_of_latest_rows_as_its_rows(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Redis writer's ``write_table`` (a backfill's newest rows, encoded by columns) stores
    exactly the hashes ``write`` of the same rows stores, nulls included."""

    when = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    rows = [row("u1", when, 2, 1.25, 0), row("u2", when - timedelta(days=400), 1, -0.5, 1)]
    rows.append({**row("u3", when, 0, 0.0, 0), "amount_sum_7d": None, "payment_count_7d": None})
    dumps = []
    for db, how in enumerate(("rows", "table")):
        monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{redis_port},db={db + 3}")
        repo = load_repo(example_repo(tmp_path / how, events=100, redis_env="MLFS_TEST_REDIS"))
        apply_repo(repo)
        view = repo.views[VIEW]
        names = [*view.plan.key_names, *(n for n, _ in view.plan.output_features), EVENT_TIMESTAMP]
        table = pa.Table.from_pylist(rows).select(names)
        assert row_dicts(table) == rows
        writer = open_online_writer(repo.settings)
        done = writer.write(view, rows) if how == "rows" else writer.write_table(view, table)
        writer.close()
        assert (done.written, done.skipped_older) == (3, 0)
        client = redis.Redis(port=redis_port, db=db + 3)
        project = repo.settings.project.encode()  # the directory's name
        dumps.append({key.removesuffix(project): client.hgetall(key) for key in client.keys()})
    assert dumps[0] == dumps[1] and len(dumps[0]) == 3


def test_redis_writes_many_keys_newer_wins_with_expiry_after_the_server_lost_its_scripts(
    tmp_path: Path, redis_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches larger than one script call are written whole, newer-wins per key; every key
    written or skipped gets the store's expiry; a server that lost its scripts (a restart, a
    ``SCRIPT FLUSH``) is given the script again."""
    from featurestore.online.redis_writer import KEYS_PER_CALL, RedisOnlineWriter, redis_client

    monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{redis_port},db=5")
    repo = load_repo(example_repo(tmp_path / "repo", events=100, redis_env="MLFS_TEST_REDIS"))
    view = repo.views[VIEW]
    writer = RedisOnlineWriter(redis_client(f"127.0.0.1:{redis_port},db=5"), "p", key_ttl_seconds=3600)
    n = 2 * KEYS_PER_CALL + 7
    t1 = datetime(2026, 5, 1, 12, tzinfo=UTC)
    first = writer.write(view, [row(f"u{i}", t1, i, float(i), 0) for i in range(n)])
    assert (first.written, first.skipped_older) == (n, 0)
    client = redis.Redis(port=redis_port, db=5)
    reader = RedisOnlineWriter(redis_client(f"127.0.0.1:{redis_port},db=5"), "p")
    keys = {i: reader.keys.serialize(view, [{"user_id": f"u{i}"}])[0] + b"p" for i in (0, 1, n - 2, n - 1)}
    client.script_flush()
    assert client.persist(keys[0]) and client.persist(keys[1]) and client.ttl(keys[0]) == -1
    # Even keys get an older row (skipped), odd keys a newer one.
    rows = [row(f"u{i}", t1 + timedelta(seconds=1 if i % 2 else -1), 10 * i, 0.5, 1) for i in range(n)]
    second = writer.write(view, rows)
    assert (second.written, second.skipped_older) == (n // 2, n - n // 2)
    for i, key in keys.items():
        stored = client.hgetall(key)
        assert 0 < client.ttl(key) <= 3600
        count = stored[field_id(f"{VIEW}:payment_count_7d")]
        assert count == value_blobs(SCALARS["Int64"], [10 * i if i % 2 else i])[0], i
    writer.close()
    reader.close()


def write_offline(
    store: ParquetOfflineStore,
    view: Any,
    rows: list[dict[str, Any]],
    created: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
    how: str = "rows",
) -> Any:
    """``store.write``, or (``how="files"``) ``write_day_files`` from two files per day, as Spark's
    tasks write them; the files are moved in, none is left where it was written."""
    if how == "rows":
        return store.write(view, rows, created, start, end)
    from featurestore.offline.parquet import arrow_schema

    staged = store.root.parent / f"staged-{uuid.uuid4().hex[:6]}"
    days: dict[Any, list[Path]] = {}
    for day in sorted({r[EVENT_TIMESTAMP].date() for r in rows}):
        of_day = [{**r, CREATED_TIMESTAMP: created} for r in rows if r[EVENT_TIMESTAMP].date() == day]
        for part, half in enumerate((of_day[::2], of_day[1::2])):
            path = staged / day.isoformat() / f"part-{part}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(half, schema=arrow_schema(view)), path)
            days.setdefault(day, []).append(path)
    stats = store.write_day_files(view, days, start, end)
    assert not any(p.exists() for paths in days.values() for p in paths)
    return stats


@pytest.mark.parametrize("how", ["rows", "files"])
def test_offline_partitions_are_idempotent(tmp_path: Path, how: str) -> None:
    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    view = repo.views[VIEW]
    store = ParquetOfflineStore(tmp_path / "offline")
    day1, day2 = datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)
    rows = [row("a", day1 + timedelta(hours=h), h, float(h), 0) for h in range(0, 48, 6)]
    first = datetime(2026, 4, 1, tzinfo=UTC)
    assert write_offline(store, view, rows, first, how=how).partitions == 2
    assert store.partitions(VIEW) == [day1.date(), day2.date()]
    assert write_offline(store, view, rows, first + timedelta(days=1), how=how).rows == len(rows)
    table = store.read_written(view)
    assert table.num_rows == len(rows)  # a re-run replaced, never appended

    # an overlapping range [day1 12:00, day2 12:00) replaces only the rows inside it
    start, end = day1 + timedelta(hours=12), day2 + timedelta(hours=12)
    newer = [row("a", day1 + timedelta(hours=18), 100, 1.0, 1)]
    write_offline(store, view, newer, first + timedelta(days=2), start, end, how)
    got = [(r[EVENT_TIMESTAMP], r["payment_count_7d"]) for r in store.read_written(view).to_pylist()]
    expected = {
        (r[EVENT_TIMESTAMP], r["payment_count_7d"]) for r in rows if not start <= r[EVENT_TIMESTAMP] < end
    }
    expected.add((day1 + timedelta(hours=18), 100))
    assert sorted(got) == sorted(expected)  # each row once

    files = sorted((tmp_path / "offline" / VIEW).rglob("*.parquet"))
    assert {f.parent.name for f in files} == {"date=2026-03-01", "date=2026-03-02"}
    assert pq.read_schema(files[0]).names == [
        "user_id",
        "payment_count_7d",
        "amount_sum_7d",
        "fail_count_7d",
        EVENT_TIMESTAMP,
        CREATED_TIMESTAMP,
    ]


def test_streamed_files_are_compacted_without_changing_what_readers_see(tmp_path: Path) -> None:
    """A stream's small files per batch are merged per partition; the merged inputs stay for a
    grace period (readers that listed them can still read them), then go; readers see the same rows
    throughout, replays included, and a merge cut off before its file was written leaves its inputs."""
    import json

    import pyarrow.dataset as ds

    from featurestore.offline.parquet import COMPACT_PREFIX, STREAM_PREFIX

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    view = repo.views[VIEW]
    store = ParquetOfflineStore(tmp_path / "offline")
    day = datetime(2026, 3, 1, 20, tzinfo=UTC)
    created = datetime(2026, 4, 1, tzinfo=UTC)
    batches = [[row(f"u{b}", day + timedelta(hours=h), b, float(h), h) for h in range(3)] for b in range(18)]
    for b, rows in enumerate(batches):  # 20:00 to 22:00 of one day
        store.append(view, rows, created + timedelta(seconds=b))
    store.append(view, batches[0], created + timedelta(hours=1))  # a replayed batch
    # One batch over two days: a file in each partition.
    store.append(view, [row("u0", day + timedelta(hours=5), 9, 9.0, 9), row("u9", day, 1, 1.0, 1)], created)
    before = store.read(view).sort_by("user_id").to_pylist()
    partition = tmp_path / "offline" / VIEW / "date=2026-03-01"

    def names(prefix: str) -> list[str]:
        return sorted(f.name for f in partition.glob(f"{prefix}*.parquet"))

    def dataset_rows() -> int:  # what Feast's FileSource reads: hidden files ignored
        return ds.dataset(tmp_path / "offline" / VIEW, format="parquet", partitioning="hive").count_rows()

    streamed = names(STREAM_PREFIX)
    assert len(streamed) == 20
    stats = store.compact(view, min_files=16, grace_s=3600)
    assert (stats.merged, stats.written, stats.rows, stats.removed) == (20, 1, 58, 0)
    assert names(STREAM_PREFIX) == streamed and len(names(COMPACT_PREFIX)) == 1  # inputs still there
    assert store.read(view).sort_by("user_id").to_pylist() == before
    assert dataset_rows() == 2 * 58 + 1
    # Every row written is held once in the current files: the merged file, not its inputs.
    assert store.read_written(view).num_rows == 58 + 1
    assert [f.name for f in store.current_files(VIEW) if f.parent == partition] == names(COMPACT_PREFIX)
    assert store.compact(view, min_files=16, grace_s=3600).merged == 0  # a pending merge's files wait

    stats = store.compact(view, min_files=16, grace_s=0)
    assert (stats.merged, stats.removed) == (0, 20)
    assert names(STREAM_PREFIX) == [] and len(names(COMPACT_PREFIX)) == 1
    assert not list(partition.glob(".*"))  # no manifest left
    assert store.read(view).sort_by("user_id").to_pylist() == before
    assert dataset_rows() == 58 + 1

    # A merge cut off after its manifest: the manifest goes, its inputs stay; so does its partial
    # file, until it is an hour old.
    store.append(view, batches[1], created + timedelta(hours=2))
    partial, old_partial = partition / f".{COMPACT_PREFIX}cut.parquet.tmp", partition / ".old.parquet.tmp"
    partial.write_bytes(b"PAR1")
    old_partial.write_bytes(b"PAR1")
    os.utime(old_partial, (time.time() - 7200, time.time() - 7200))
    (partition / f".{COMPACT_PREFIX}cut.json").write_text(
        json.dumps({"target": f"{COMPACT_PREFIX}cut.parquet", "inputs": names(STREAM_PREFIX)})
    )
    stats = store.compact(view, min_files=2, grace_s=0)
    assert not (partition / f".{COMPACT_PREFIX}cut.json").exists()
    assert partial.exists() and not old_partial.exists()
    partial.unlink()
    # Nothing was removed; the streamed file is merged with the small merged file.
    assert (stats.removed, stats.merged) == (0, 2)
    assert store.compact(view, min_files=2, grace_s=0).removed == 2
    assert names(STREAM_PREFIX) == [] and len(names(COMPACT_PREFIX)) == 1
    assert store.read(view).sort_by("user_id").to_pylist() == [
        r if r["user_id"] != "u1" else {**r, CREATED_TIMESTAMP: created + timedelta(hours=2)} for r in before
    ]


def test_a_backfill_keeps_rows_streamed_while_it_rewrites(tmp_path: Path) -> None:
    """A partition rewrite replaces the files it read, not files a streaming job appends meanwhile:
    the streamed rows stay readable, beside the backfill's (newest created wins), even where the
    rewrite leaves the partition otherwise empty."""
    import pyarrow as pa

    from featurestore.offline.parquet import STREAM_PREFIX, arrow_schema

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    view = repo.views[VIEW]
    store = ParquetOfflineStore(tmp_path / "offline")
    day = datetime(2026, 3, 1, tzinfo=UTC)
    created = datetime(2026, 4, 1, tzinfo=UTC)
    store.write(view, [row("a", day + timedelta(hours=h), h, 1.0, 0) for h in (1, 2)], created)
    store.append(view, [row("b", day + timedelta(hours=3), 7, 7.0, 0)], created + timedelta(minutes=1))
    streamed = row("c", day + timedelta(hours=4), 8, 8.0, 1)
    backfilled = row("a", day + timedelta(hours=2), 20, 2.0, 0)

    def backfill_rows(rows: list[dict[str, Any]]) -> Any:
        def day_rows(_: Any) -> pa.Table:
            # The streaming job writes while the backfill computes the day.
            store.append(view, [streamed], created + timedelta(minutes=2))
            backfill_created = created + timedelta(minutes=3)
            return pa.Table.from_pylist(
                [{**r, CREATED_TIMESTAMP: backfill_created} for r in rows], schema=arrow_schema(view)
            )

        return day_rows

    # Backfill [02:00, 04:00): a's 01:00 row is kept, its 02:00 row and b's 03:00 row are replaced.
    store.replace(
        view, {day.date()}, backfill_rows([backfilled]), day + timedelta(hours=2), day + timedelta(hours=4)
    )
    got = {(r["user_id"], r[EVENT_TIMESTAMP], r["payment_count_7d"]) for r in store.read(view).to_pylist()}
    assert got == {
        ("a", day + timedelta(hours=1), 1),
        ("a", day + timedelta(hours=2), 20),
        ("c", day + timedelta(hours=4), 8),
    }
    partition = tmp_path / "offline" / VIEW / "date=2026-03-01"
    assert len(list(partition.glob(f"{STREAM_PREFIX}*.parquet"))) == 1  # b's file went, c's stayed

    # A rewrite that leaves nothing of the day but what was streamed meanwhile keeps the partition.
    streamed = row("d", day + timedelta(hours=5), 9, 9.0, 0)
    store.replace(view, {day.date()}, backfill_rows([]), None, None)
    assert [(r["user_id"], r["payment_count_7d"]) for r in store.read(view).to_pylist()] == [("d", 9)]


def test_rewrites_and_compactions_of_a_view_take_turns(tmp_path: Path) -> None:
    """A compaction skips a view another process is rewriting or compacting (so no two merge the
    same files), and a rewrite waits for a compaction to finish."""
    import threading

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    view = repo.views[VIEW]
    store = ParquetOfflineStore(tmp_path / "offline")
    day = datetime(2026, 3, 1, tzinfo=UTC)
    created = datetime(2026, 4, 1, tzinfo=UTC)
    for b in range(3):
        store.append(view, [row(f"u{b}", day + timedelta(hours=b), b, 1.0, 0)], created)
    other = ParquetOfflineStore(tmp_path / "offline")  # its lock is a file: any holder counts

    with other.view_lock(VIEW) as held:
        assert held
        assert store.compact(view, min_files=2).busy
        rewrite = threading.Thread(target=store.write, args=(view, [], created, day, day + timedelta(days=1)))
        rewrite.start()
        rewrite.join(timeout=1.0)
        assert rewrite.is_alive()  # waiting for the lock
        assert store.read(view).num_rows == 3
    rewrite.join()
    assert store.read(view).num_rows == 0  # the rewrite of the day, once the lock was free

    for b in range(3):
        store.append(view, [row(f"u{b}", day + timedelta(hours=b), b, 1.0, 0)], created)
    stats = store.compact(view, min_files=2)
    assert (stats.busy, stats.merged) == (False, 3)


def test_settings_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = example_repo(tmp_path / "repo", events=300, redis_env="MLFS_SECRET_REDIS")
    monkeypatch.setenv("MLFS_SECRET_REDIS", "cache.internal:6380,password=s3cret")
    settings = load_settings(repo)
    assert settings.online_store["connection_string"] == "cache.internal:6380,password=s3cret"
    assert "s3cret" not in (repo / "feature_store.yaml").read_text()


HOURS_8 = timedelta(hours=8)
SCALAR_VALUES = {
    "Int32": st.integers(-(2**31), 2**31 - 1),
    "Int64": st.integers(-(2**63), 2**63 - 1),
    "Float32": st.floats(width=32),
    "Float64": st.floats(),
    "String": st.text(),
    "Bool": st.booleans(),
    "Bytes": st.binary(),
    "UnixTimestamp": st.datetimes(
        min_value=datetime(1, 1, 2),
        max_value=datetime(9999, 12, 30),
        timezones=st.sampled_from([None, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-HOURS_8)]),
    ),
}


@settings(deadline=None)  # the first example imports Feast
@given(st.data())
def test_value_protos_are_feasts(data: st.DataObject) -> None:
    """The writers' own conversion of scalar features gives the bytes Feast's
    ``python_values_to_proto_values`` gives, nulls and NaN included."""
    from feast.type_map import python_values_to_proto_values

    from featurestore.feast_types import value_type
    from featurestore.online.base import feature_value_protos, value_blobs
    from transforms.dtypes import SCALARS

    names = sorted(SCALAR_VALUES)
    columns = {n: data.draw(st.lists(st.none() | SCALAR_VALUES[n], max_size=8), label=n) for n in names}
    size = min(len(c) for c in columns.values())
    rows = [{n: columns[n][i] for n in names} for i in range(size)]
    plan = SimpleNamespace(output_features=tuple((n, SCALARS[n]) for n in names))
    ours = feature_value_protos(SimpleNamespace(plan=plan), rows)  # type: ignore[arg-type]
    for n in names:
        feasts = python_values_to_proto_values([r[n] for r in rows], value_type(SCALARS[n]))
        want = [p.SerializeToString() for p in feasts]
        assert [r[n].SerializeToString() for r in ours] == want, n
        assert value_blobs(SCALARS[n], [r[n] for r in rows]) == want, n  # written without protos


ARROW_TYPES = {
    "Int32": pa.int32(),
    "Int64": pa.int64(),
    "Float32": pa.float32(),
    "Float64": pa.float64(),
    "String": pa.string(),
    "Bool": pa.bool_(),
}


@given(st.data())
def test_value_blobs_of_a_column_are_the_per_value_ones(data: st.DataObject) -> None:
    """A whole Arrow column's serialised ``Value``s (a backfill's newest rows) are exactly
    ``value_blobs`` of its values, nulls and NaN included, over chunks and slices; a column of
    another type is left to ``value_blobs``."""
    from featurestore.online.arrow_blobs import value_blob_column
    from featurestore.online.base import value_blobs
    from transforms.dtypes import SCALARS

    name = data.draw(st.sampled_from(sorted(ARROW_TYPES)))
    values = data.draw(st.lists(st.none() | SCALAR_VALUES[name], max_size=12))
    cut = data.draw(st.integers(0, len(values)))
    column = pa.chunked_array(
        [pa.array(values[:cut], ARROW_TYPES[name]), pa.array(values[cut:], ARROW_TYPES[name])]
    )
    assert value_blob_column(SCALARS[name], column) == value_blobs(SCALARS[name], values)
    assert value_blob_column(SCALARS[name], pa.array(values, ARROW_TYPES[name])[cut:]) == value_blobs(
        SCALARS[name], values[cut:]
    )
    other = "Int32" if name == "Int64" else "Int64"
    assert value_blob_column(SCALARS[name], pa.array([], ARROW_TYPES[other])) is None


@given(st.lists(st.integers(0, 253402300799999999), max_size=10))
def test_timestamp_blobs_are_protobufs(micros: list[int]) -> None:
    """The Redis writer's ``_ts`` fields, encoded by columns, are protobuf's own ``Timestamp``s."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from featurestore.online.arrow_blobs import timestamp_blobs

    want = [Timestamp(seconds=m // 10**6, nanos=m % 10**6 * 1000).SerializeToString() for m in micros]
    assert timestamp_blobs(micros) == want


@given(
    st.lists(
        st.tuples(st.none() | st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.integers(0, 9)),
        max_size=12,
    )
)
def test_the_latest_rows_of_a_table_are_latest_per_key(given_rows: list[tuple[Any, int, int]]) -> None:
    """``latest_table`` (the row sink's batches by columns) keeps the rows ``latest_per_key`` keeps:
    each key's newest, the last given among equal times, a null key as one key."""
    from featurestore.online.base import latest_per_key, latest_table

    plan = SimpleNamespace(key_names=("user_id",))
    view: Any = SimpleNamespace(plan=plan)
    start = datetime(2026, 5, 1, tzinfo=UTC)
    rows = [row(k, start + timedelta(minutes=t), n, 0.5, 0) for k, t, n in given_rows]
    schema = pa.schema(
        [
            ("user_id", pa.string()),
            ("payment_count_7d", pa.int64()),
            ("amount_sum_7d", pa.float64()),
            ("fail_count_7d", pa.int64()),
            (EVENT_TIMESTAMP, pa.timestamp("us", "UTC")),
        ]
    )
    got = row_dicts(latest_table(view, pa.Table.from_pylist(rows, schema=schema)))
    assert sorted(got, key=repr) == sorted(latest_per_key(view, rows), key=repr)


@settings(deadline=None)  # the first example imports Feast
@given(st.data())
def test_value_blobs_leave_odd_values_to_protobuf(data: st.DataObject) -> None:
    """Values a column's own encoder does not take (out of range, of another Python type, text
    that is not UTF-8) get exactly what protobuf makes of them, an error included."""
    from featurestore.online.base import value_blobs, value_protos
    from transforms.dtypes import SCALARS

    names = ["Int32", "Int64", "Float32", "Float64", "String", "Bool", "UnixTimestamp"]
    name = data.draw(st.sampled_from(names))
    text = st.text(st.characters(exclude_categories=()))  # lone surrogates too
    odd = st.integers(-(2**70), 2**70) | st.floats() | st.booleans() | text | st.none()
    values = data.draw(st.lists(odd, max_size=4))
    try:
        want: Any = [p.SerializeToString() for p in value_protos(SCALARS[name], values)]
    except Exception as err:  # whatever protobuf raises, value_blobs must raise too
        want = type(err)
    try:
        got: Any = value_blobs(SCALARS[name], values)
    except Exception as err:
        got = type(err)
    assert got == want


@settings(deadline=None)  # the first example imports Feast
@given(st.data())
def test_value_texts_are_feasts(data: st.DataObject) -> None:
    """The ``value_text`` the SQLite writer keeps beside each value is what Feast's
    ``extract_text_and_num`` gives for that value's proto."""
    from feast.infra.online_stores.helpers import extract_text_and_num

    from featurestore.online.base import value_protos, value_texts
    from transforms.dtypes import SCALARS

    name = data.draw(st.sampled_from(sorted(SCALAR_VALUES)))
    values = data.draw(st.lists(st.none() | SCALAR_VALUES[name], max_size=8))
    want = [extract_text_and_num(p, False)[0] for p in value_protos(SCALARS[name], values)]
    assert value_texts(SCALARS[name], values) == want


def test_entity_keys_are_feasts_and_bounded(tmp_path: Path) -> None:
    from feast.infra.key_encoding_utils import serialize_entity_key

    from featurestore.online.base import EntityKeys, entity_key_protos

    repo = load_repo(example_repo(tmp_path / "repo", events=300))
    view = repo.views[VIEW]
    keys = EntityKeys(3, limit=4)
    for batch in (["u1", "u2", "u1"], ["u2", "u3", "u4", "u5", "u6"], ["u1"]):
        rows = [row(u, AS_OF, 1, 1.0, 0) for u in batch]
        want = [serialize_entity_key(p, 3) for p in entity_key_protos(view, rows)]
        assert keys.serialize(view, rows) == want
        assert len(keys._known) <= max(4, len(set(batch)))


def test_redis_connection_strings_take_redis_options_and_refuse_others() -> None:
    from featurestore.online.redis_writer import redis_client, redis_options
    from transforms.errors import MLFSError

    host, port, options = redis_options(
        "cache:6380,password=p%2Cw,db=2,ssl=true,ssl_ca_certs=/etc/ca.pem,socket_timeout=1.5"
    )
    assert (host, port) == ("cache", 6380)
    assert options == {
        "password": "p,w",
        "db": 2,
        "ssl": True,
        "ssl_ca_certs": "/etc/ca.pem",
        "socket_timeout": 1.5,
    }
    kwargs = redis_client("cache:6380").connection_pool.connection_kwargs
    assert kwargs["socket_connect_timeout"] == 5.0 and kwargs["socket_timeout"] == 10.0  # never forever
    for bad, message in [
        ("cache:6380,sssl=true", "unknown option 'sssl'"),
        ("cache:6380,timeout", "unknown option 'timeout'"),
        ("cache", "must start with host:port"),
        ("cache:port", "is not a number"),
    ]:
        with pytest.raises(MLFSError, match=message):
            redis_options(bad)
    with pytest.raises(MLFSError) as raised:
        redis_options("password=s3cret,cache:1")
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("connection", "error"),
    [
        (",ssl=true,socket_timeout=2,socket_connect_timeout=2", "online store redis at 127.0.0.1:"),
        (",password=wrong", "AuthenticationError"),
    ],
)
def test_a_redis_that_does_not_answer_or_refuses_is_a_one_line_error(
    tmp_path: Path,
    redis_port: int,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    connection: str,
    error: str,
) -> None:
    # TLS against a server without it (hung for minutes without timeouts), and a wrong password.
    from featurestore.cli import main

    redis.Redis(port=redis_port).config_set("requirepass", "right")
    repo = example_repo(tmp_path / "repo", events=300, redis_env="MLFS_TEST_REDIS")
    monkeypatch.setenv("MLFS_TEST_REDIS", f"127.0.0.1:{redis_port}{connection}")
    assert main(["apply", "--repo", str(repo)]) == 0
    capsys.readouterr()
    started = time.monotonic()
    code = main(["backfill", "--engine", "reference", "--end", AS_OF.isoformat(), "--repo", str(repo)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and time.monotonic() - started < 30
    assert len(err) == 1 and err[0].startswith("mlfs: error: online store redis at 127.0.0.1:"), err
    assert error in err[0] and "right" not in err[0]
    assert not (repo / "data" / "offline").exists()  # nothing written before the store was reached


@settings(deadline=None)  # the first example imports Feast
@given(st.data())
def test_entity_keys_are_feasts(data: st.DataObject) -> None:
    """Keys written without protos (string and integer join keys, one or several, in any name
    order) are byte for byte Feast's ``serialize_entity_key``; other values go through Feast."""
    from feast.infra.key_encoding_utils import serialize_entity_key

    from featurestore.online.arrow_blobs import entity_key_column
    from featurestore.online.base import EntityKeys, entity_key_protos
    from transforms.dtypes import SCALARS

    strategies = {
        "String": st.text(),
        "Int32": st.integers(-(2**31), 2**31 - 1),
        "Int64": st.integers(-(2**63), 2**63 - 1),
    }
    names = data.draw(st.lists(st.sampled_from(["b", "a", "user_id", "z_key"]), min_size=1, unique=True))
    types = {n: data.draw(st.sampled_from(sorted(strategies)), label=n) for n in names}
    rows = data.draw(
        st.lists(st.fixed_dictionaries({n: strategies[types[n]] for n in names}), min_size=1, max_size=6)
    )
    plan = SimpleNamespace(keys=tuple((n, SCALARS[types[n]]) for n in names), key_names=tuple(names))
    view: Any = SimpleNamespace(name="v", plan=plan)
    want = [
        serialize_entity_key(p, entity_key_serialization_version=3) for p in entity_key_protos(view, rows)
    ]
    assert EntityKeys(3).serialize(view, rows) == want
    assert EntityKeys(3)._direct(view, [tuple(r[n] for n in names) for r in rows]) == want
    arrow_types = {"String": pa.string(), "Int32": pa.int32(), "Int64": pa.int64()}
    columns = {n: pa.array([r[n] for r in rows], arrow_types[types[n]]) for n in names}
    dtypes = {n: SCALARS[types[n]] for n in names}
    assert entity_key_column(names, dtypes, columns, 3) == want  # a backfill's keys, by columns
    assert entity_key_column(names, dtypes, columns, 2) is None
    with_null = {**columns, names[0]: pa.array([None] * len(rows), arrow_types[types[names[0]]])}
    assert entity_key_column(names, dtypes, with_null, 3) is None


def test_the_backfill_reads_the_registry_and_writes_sqlite_without_importing_feast(tmp_path: Path) -> None:
    """``mlfs backfill`` on a file registry and the SQLite store reads the registry and writes the
    store without ``import feast`` (seconds of it); what it reads is what Feast reads, and Feast
    imports normally in the same process after."""
    repo = example_repo(tmp_path / "repo", events=300)
    assert main(["apply", "--repo", str(repo)]) == 0
    script = f"""
import sys
from featurestore.cli import main
assert main(["backfill", "--repo", {str(repo)!r}, "--end", {AS_OF.isoformat()!r}]) == 0
assert "feast.feature_store" not in sys.modules and "feast" not in sys.modules, sorted(sys.modules)
from feast import FeatureStore
from featurestore.config import load_settings
from featurestore.online.sqlite_writer import SqliteTarget
from registry.catalog import load_catalog, read_catalog
settings = load_settings({str(repo)!r})
store = FeatureStore(repo_path={str(repo)!r})
ours, feasts = read_catalog(settings), load_catalog(store)
assert [v.name for v in ours.list_views()] == [v.name for v in feasts.list_views()]
assert [v.spec_hash for v in ours.list_views()] == [v.spec_hash for v in feasts.list_views()]
assert ours.sources == feasts.sources and ours.entities == feasts.entities
assert SqliteTarget.of_settings(settings) == SqliteTarget.of_feast(store.config)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
    expected = latest(reference_rows(load_repo(repo), VIEW), "user_id")
    store = feast_store(load_settings(repo))
    for user in sorted(expected)[:5]:
        got = dict(
            zip(["payment_count_7d", "amount_sum_7d", "fail_count_7d"], online(store, user), strict=True)
        )
        assert same_features(got, {k: expected[user][k] for k in got}), (user, got)


def test_a_store_layout_mlfs_does_not_write_itself_goes_through_feast(tmp_path: Path) -> None:
    from featurestore.online.sqlite_writer import SqliteTarget

    repo = example_repo(tmp_path / "repo", events=100)
    config_file = repo / "feature_store.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["entity_key_serialization_version"] = 3
    config["online_store"]["path"] = str(tmp_path / "elsewhere.db")
    config_file.write_text(yaml.safe_dump(config))
    target = SqliteTarget.of_settings(load_settings(repo))
    assert target == SqliteTarget(config["project"], tmp_path / "elsewhere.db", 3)
    config["online_store"]["vector_enabled"] = True
    config_file.write_text(yaml.safe_dump(config))
    assert SqliteTarget.of_settings(load_settings(repo)) is None
    config["entity_key_serialization_version"] = "three"
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="entity_key_serialization_version must be an integer"):
        load_settings(repo)


COLUMNS = "entity_key, feature_name, value, value_text, event_ts, mlfs_event_us"


def test_a_table_of_latest_rows_is_written_as_its_rows_would_be(tmp_path: Path) -> None:
    """``write_table`` (a backfill's newest rows, by columns) fills exactly the rows ``write`` of the
    same rows as dicts does: zoned timestamps, nulls, and timestamp features included."""
    import sqlite3

    import pyarrow as pa

    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget

    when = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    stats = [row("u1", when, 2, 1.25, 0), row("u2", when - timedelta(days=400), 1, -0.5, 1)]
    stats.append({**row("u3", when, 0, 0.0, 0), "amount_sum_7d": None})
    moon = datetime(1969, 7, 20, 20, 17, 40, 500000, tzinfo=UTC)
    fails = [
        {
            "user_id": "u1",
            "latest_payment_fail": when,
            "latest_payment_fail_ach_nsf": None,
            EVENT_TIMESTAMP: when,
        },
        {
            "user_id": "u2",
            "latest_payment_fail": moon,
            "latest_payment_fail_ach_nsf": when,
            EVENT_TIMESTAMP: moon,
        },
    ]
    dumps = []
    for how in ("rows", "table"):
        repo = load_repo(example_repo(tmp_path / how, events=100))
        apply_repo(repo)
        writer = SqliteOnlineWriter(SqliteTarget.of_settings(repo.settings))  # type: ignore[arg-type]
        for name, rows in ((VIEW, stats), ("user_last_payment_fail", fails)):
            view = repo.views[name]
            names = [*view.plan.key_names, *(n for n, _ in view.plan.output_features), EVENT_TIMESTAMP]
            table = pa.Table.from_pylist(rows).select(names)
            assert row_dicts(table) == rows
            done = writer.write(view, rows) if how == "rows" else writer.write_table(view, table)
            assert (done.written, done.skipped_older) == (len(rows), 0)
        writer.close()
        with sqlite3.connect(tmp_path / how / "data" / "online_store.db") as conn:
            dumps.append(
                [
                    sorted(conn.execute(f'SELECT {COLUMNS} FROM "{repo.settings.project}_{name}"'))
                    for name in (VIEW, "user_last_payment_fail")
                ]
            )
    assert dumps[0] == dumps[1] and len(dumps[0][0]) == 9 and len(dumps[0][1]) == 4
