"""The offline store: every emitted row as Parquet, partitioned by view and UTC date.

Layout: ``<root>/<view>/date=YYYY-MM-DD/data.parquet`` (or the ``data-*.parquet`` files a Spark
backfill's tasks wrote, moved in whole) with the join keys, the features,
``event_timestamp`` (the feature time) and ``created_timestamp``, the two columns Feast's
point-in-time join uses; a Feast ``FileSource`` on ``<root>/<view>`` reads it.

Writing the rows of a time range ``[start, end)`` rewrites each partition it touches: rows of the
range are replaced and rows outside it are kept, so re-running the same or an overlapping range
never duplicates rows. Each partition file is replaced atomically.

A stream appends a small file per batch (``stream-*.parquet``); ``compact`` merges them into
``compact-*.parquet`` files, so a partition holds a few files, not one per batch. A merged file's
inputs stay until a later compaction at least a grace period after, because a reader may have
listed them; until then their rows are there twice, which readers absorb as they absorb a replayed
row (they keep the newest created row of a key and time).

Rewrites and compactions of a view take turns on a lock file (``<view>/.lock``, any process on the
host): two compactions never merge the same files, and a compaction never writes back rows a
rewrite has just replaced. Appends need no lock: each adds a file of its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurestore.view import StreamFeatureView
from transforms.arrow_events import STORE_TIMESTAMP, arrow_type, same_as_previous
from transforms.plan import CREATED_TIMESTAMP, EVENT_TIMESTAMP

PARTITION_PREFIX = "date="
DATA_FILE = "data.parquet"
DATA_PREFIX = "data-"  # files a backfill moved in whole (``write_day_files``)
LOCK_FILE = ".lock"  # hidden: readers take only *.parquet files, and Arrow datasets skip dot files
STREAM_PREFIX = "stream-"
COMPACT_PREFIX = "compact-"
COMPACT_MIN_FILES = 16  # merge a partition's small files once it has this many
COMPACT_SMALL_BYTES = 64 << 20  # merged files under this size are merged again
COMPACT_GRACE_S = 60.0  # how long merged inputs stay for readers that listed them
STALE_TMP_S = 3600.0  # a hidden file being written this long ago belongs to a writer that died
WRITE_THREADS = 4  # partitions rewritten at once (each holds one day in memory)
_TS = STORE_TIMESTAMP
_MICROS_PER_DAY = 86_400_000_000
_EPOCH_DAY = date(1970, 1, 1)


def arrow_schema(view: StreamFeatureView) -> pa.Schema:
    """The offline table schema of a view."""
    fields = [pa.field(n, arrow_type(t)) for n, t in view.plan.keys]
    fields += [pa.field(name, arrow_type(dtype)) for name, dtype in view.plan.output_features]
    fields += [pa.field(EVENT_TIMESTAMP, _TS), pa.field(CREATED_TIMESTAMP, _TS)]
    return pa.schema(fields)


@dataclass
class OfflineWriteStats:
    rows: int = 0
    partitions: int = 0


@dataclass
class CompactionStats:
    """What one ``compact`` call did: files merged into new ones, and merged inputs removed;
    ``busy`` when another process was rewriting or compacting the view (nothing was done)."""

    merged: int = 0
    written: int = 0
    rows: int = 0
    removed: int = 0
    busy: bool = False


def _day(value: datetime) -> date:
    return value.astimezone(UTC).date()


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class ParquetOfflineStore:
    """Partitioned Parquet history of every view under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def view_path(self, view: str) -> Path:
        return self.root / view

    @contextlib.contextmanager
    def view_lock(self, view: str, wait: bool = True) -> Iterator[bool]:
        """Hold the view's rewrite lock (``fcntl.flock``, so a process that dies lets go of it);
        yields False, holding nothing, where ``wait`` is off and another holder has it."""
        directory = self.view_path(view)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / LOCK_FILE).open("a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def partitions(self, view: str) -> list[date]:
        base = self.view_path(view)
        if not base.is_dir():
            return []
        days = []
        for child in base.iterdir():
            if child.is_dir() and child.name.startswith(PARTITION_PREFIX):
                days.append(date.fromisoformat(child.name[len(PARTITION_PREFIX) :]))
        return sorted(days)

    def write(
        self,
        view: StreamFeatureView,
        rows: Sequence[dict[str, Any]],
        created: datetime,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> OfflineWriteStats:
        """Replace the view's rows with event time in ``[start, end)`` by ``rows``."""
        schema = arrow_schema(view)
        by_day: dict[date, list[dict[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(_day(row[EVENT_TIMESTAMP]), []).append({**row, CREATED_TIMESTAMP: created})
        return self.replace(
            view,
            set(by_day),
            lambda day: pa.Table.from_pylist(by_day.get(day, []), schema=schema),
            start,
            end,
        )

    def append(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]], created: datetime) -> int:
        """Add rows as new files beside the partitions' data (the streaming path); ``read`` and
        Feast keep the newest created row of a key and time, so a replayed row never duplicates."""
        schema = arrow_schema(view)
        # Column by column: a table from per-row dicts costs more than the file write itself.
        data = {name: [row.get(name) for row in rows] for name in schema.names if name != CREATED_TIMESTAMP}
        without_created = schema.remove(schema.get_field_index(CREATED_TIMESTAMP))
        return self.append_table(view, pa.Table.from_pydict(data, schema=without_created), created)

    def append_table(self, view: StreamFeatureView, table: pa.Table, created: datetime) -> int:
        """``append`` of a table of feature rows (the view's columns but ``created_timestamp``)."""
        schema = arrow_schema(view)
        created_type = schema.field(CREATED_TIMESTAMP).type
        table = table.append_column(CREATED_TIMESTAMP, pa.array([created] * table.num_rows, created_type))
        table = table.select(schema.names).cast(schema)
        name = f"{STREAM_PREFIX}{created.strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}.parquet"
        for day, part in day_slices(table):
            directory = self._partition_dir(view.name, day)
            directory.mkdir(parents=True, exist_ok=True)
            tmp = directory / f".{name}.tmp"
            pq.write_table(part, tmp)
            tmp.replace(directory / name)
        return table.num_rows

    def compact(
        self,
        view: StreamFeatureView,
        min_files: int = COMPACT_MIN_FILES,
        grace_s: float = COMPACT_GRACE_S,
    ) -> CompactionStats:
        """Merge each partition's streamed files (and merged files still small) into one file once
        there are ``min_files`` of them; remove the inputs of earlier merges older than
        ``grace_s``, and hidden files left by writers that died. Safe beside running writers and
        readers: files appear and go atomically. Skipped (``busy``) while another rewrite or
        compaction of the view holds its lock."""
        if not self.view_path(view.name).is_dir():
            return CompactionStats()  # nothing written yet (and no lock file to make)
        with self.view_lock(view.name, wait=False) as held:
            return self._compact(view, min_files, grace_s) if held else CompactionStats(busy=True)

    def _compact(self, view: StreamFeatureView, min_files: int, grace_s: float) -> CompactionStats:
        stats = CompactionStats()
        schema = arrow_schema(view)
        order = [(c, "ascending") for c in (*view.plan.key_names, EVENT_TIMESTAMP)]
        for day in self.partitions(view.name):
            directory = self._partition_dir(view.name, day)
            pending: set[str] = set()  # inputs and files of merges within their grace period
            for manifest in sorted(directory.glob(f".{COMPACT_PREFIX}*.json")):
                merge = json.loads(manifest.read_text())
                target = directory / merge["target"]
                if target.exists():
                    if time.time() - target.stat().st_mtime < grace_s:
                        pending.update([*merge["inputs"], merge["target"]])
                        continue
                    for name in merge["inputs"]:
                        (directory / name).unlink(missing_ok=True)
                        stats.removed += 1
                manifest.unlink()  # done, or its merge never finished (its inputs stay)
            for tmp in directory.glob(".*.tmp"):
                if time.time() - tmp.stat().st_mtime > STALE_TMP_S:
                    tmp.unlink(missing_ok=True)
            inputs = sorted(
                f
                for f in directory.glob("*.parquet")
                if f.name not in pending
                and (
                    f.name.startswith(STREAM_PREFIX)
                    or (f.name.startswith(COMPACT_PREFIX) and f.stat().st_size < COMPACT_SMALL_BYTES)
                )
            )
            if len(inputs) < min_files:
                continue
            name = f"{COMPACT_PREFIX}{datetime.now(UTC).strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
            table = pa.concat_tables([pq.read_table(f, schema=schema) for f in inputs]).sort_by(order)
            # The manifest first: a merge cut off before its file is in place leaves its inputs as they
            # were, and the next compaction removes the manifest (and later the hidden partial file).
            manifest = directory / f".{name}.json"
            merge = {"target": f"{name}.parquet", "inputs": [f.name for f in inputs]}
            tmp = directory / f".{name}.json.tmp"
            tmp.write_text(json.dumps(merge))
            tmp.replace(manifest)
            tmp = directory / f".{name}.parquet.tmp"
            pq.write_table(table, tmp)
            tmp.replace(directory / f"{name}.parquet")
            stats.merged += len(inputs)
            stats.written += 1
            stats.rows += table.num_rows
        return stats

    def write_day_files(
        self,
        view: StreamFeatureView,
        days: dict[date, list[Path]],
        start: datetime | None,
        end: datetime | None,
    ) -> OfflineWriteStats:
        """Like ``write``, from Parquet files that each hold one UTC day's rows (with
        ``created_timestamp``), as Spark's workers write them: the files become the partitions'
        data as they are (moved, not rewritten); rows of an old partition outside ``[start, end)``
        stay, in a file of their own. A reader sees each partition's new files before its old ones
        go, and keeps the newest created row of a key and time, as it does for a rewrite."""
        with self.view_lock(view.name):
            schema = arrow_schema(view)
            batch = uuid.uuid4().hex[:8]

            def commit(day: date) -> int:
                files = self._partition_files(view.name, day)
                kept = self._kept(files, schema, day, start, end)
                directory = self._partition_dir(view.name, day)
                new = days.get(day, [])
                if new or kept.num_rows:
                    directory.mkdir(parents=True, exist_ok=True)
                if kept.num_rows:
                    tmp = directory / f".{batch}-kept.parquet.tmp"
                    pq.write_table(kept, tmp)
                    os.replace(tmp, directory / f"{DATA_PREFIX}{batch}-kept.parquet")
                rows = 0
                for i, file in enumerate(new):
                    rows += pq.ParquetFile(file).metadata.num_rows
                    tmp = directory / f".{batch}-{i}.parquet.tmp"
                    shutil.move(file, tmp)  # a rename where both are on one file system
                    os.replace(tmp, directory / f"{DATA_PREFIX}{batch}-{i}.parquet")
                for old in files:
                    old.unlink(missing_ok=True)  # a compaction may have removed a merged input
                with contextlib.suppress(OSError):  # gone, or holding files that landed meanwhile
                    directory.rmdir()
                return rows

            touched = self._touched(view.name, set(days), start, end)
            with ThreadPoolExecutor(max_workers=min(WRITE_THREADS, os.cpu_count() or 1)) as pool:
                written = list(pool.map(commit, sorted(touched)))
            return OfflineWriteStats(rows=sum(written), partitions=len(written))

    def replace(
        self,
        view: StreamFeatureView,
        new_days: set[date],
        day_rows: Callable[[date], pa.Table],
        start: datetime | None,
        end: datetime | None,
        ordered: bool = False,
    ) -> OfflineWriteStats:
        """Rewrite every partition that ``[start, end)`` touches or that gets new rows: rows of the
        range come from ``day_rows(day)`` (called from worker threads; ``ordered``: in key and time
        order already), rows outside it are kept. Waits for a compaction of the view to finish, and
        holds compactions off until it is done."""
        with self.view_lock(view.name):
            schema = arrow_schema(view)

            def rewrite(day: date) -> int:
                # Only the files read here are replaced: a streaming job's or a compaction's file that
                # lands meanwhile stays, and readers keep the newest created row of a key and time.
                files = self._partition_files(view.name, day)
                kept = self._kept(files, schema, day, start, end)
                new = day_rows(day)
                table = pa.concat_tables([kept, new]) if kept.num_rows else new
                self._replace_partition(view, day, table, files, ordered and not kept.num_rows)
                return new.num_rows

            touched = self._touched(view.name, new_days, start, end)
            # Arrow reads, sorts and writes without the GIL: a few days at a time use every core.
            with ThreadPoolExecutor(max_workers=min(WRITE_THREADS, os.cpu_count() or 1)) as pool:
                written = list(pool.map(rewrite, sorted(touched)))
            return OfflineWriteStats(rows=sum(written), partitions=len(written))

    def _touched(
        self, view: str, new_days: set[date], start: datetime | None, end: datetime | None
    ) -> set[date]:
        """The partitions a write of ``[start, end)`` with rows on ``new_days`` rewrites."""
        touched = set(new_days)
        for day in self.partitions(view):
            if (start is None or _day_start(day) + timedelta(days=1) > start) and (
                end is None or _day_start(day) < end
            ):
                touched.add(day)
        return touched

    def _kept(
        self, files: list[Path], schema: pa.Schema, day: date, start: datetime | None, end: datetime | None
    ) -> pa.Table:
        """The rows of a partition's ``files`` outside ``[start, end)`` (none to read where the
        range holds the whole day)."""
        first = _day_start(day)
        if (start is None or start <= first) and (end is None or end >= first + timedelta(days=1)):
            return schema.empty_table()
        return self._outside(self._read_files(files, schema), start, end)

    def current_files(self, view: str) -> list[Path]:
        """A view's data files less the inputs of merges whose merged file is in place (they stay a
        grace period for readers that listed them): the files that hold each written row once."""
        files: list[Path] = []
        for day in self.partitions(view):
            directory = self._partition_dir(view, day)
            merged: set[str] = set()
            for manifest in directory.glob(f".{COMPACT_PREFIX}*.json"):
                with contextlib.suppress(FileNotFoundError):  # a compaction removed it meanwhile
                    merge = json.loads(manifest.read_text())
                    if (directory / merge["target"]).exists():
                        merged.update(merge["inputs"])
            files += [f for f in sorted(directory.glob("*.parquet")) if f.name not in merged]
        return files

    def read(self, view: StreamFeatureView) -> pa.Table:
        """All rows of a view; where a row was re-emitted, only the newest created one."""
        table = self.read_written(view)
        if table.num_rows == 0:
            return table
        identity = [*view.plan.key_names, EVENT_TIMESTAMP]
        order = [(c, "ascending") for c in identity] + [(CREATED_TIMESTAMP, "descending")]
        table = table.sort_by(order)
        return table.filter(~same_as_previous(table, identity))

    def read_written(self, view: StreamFeatureView) -> pa.Table:
        """Every row written for a view and still held, re-emitted rows included (``read`` keeps the
        newest created row of a key and time)."""
        return self._read_files(self.current_files(view.name), arrow_schema(view))

    def _partition_dir(self, view: str, day: date) -> Path:
        return self.view_path(view) / f"{PARTITION_PREFIX}{day.isoformat()}"

    def _partition_files(self, view: str, day: date) -> list[Path]:
        directory = self._partition_dir(view, day)
        return sorted(directory.glob("*.parquet")) if directory.is_dir() else []

    @staticmethod
    def _read_files(files: list[Path], schema: pa.Schema) -> pa.Table:
        if not files:
            return schema.empty_table()
        return pa.concat_tables([pq.read_table(f, schema=schema) for f in files])

    @staticmethod
    def _outside(table: pa.Table, start: datetime | None, end: datetime | None) -> pa.Table:
        if start is None and end is None:
            return table.slice(0, 0)
        if table.num_rows == 0:
            return table
        ts = table.column(EVENT_TIMESTAMP)
        inside = None
        if start is not None:
            inside = pc.greater_equal(ts, pa.scalar(start, type=_TS))
        if end is not None:
            before_end = pc.less(ts, pa.scalar(end, type=_TS))
            inside = before_end if inside is None else pc.and_(inside, before_end)
        return table.filter(pc.invert(inside))

    def _replace_partition(
        self, view: StreamFeatureView, day: date, table: pa.Table, replaced: list[Path], ordered: bool = False
    ) -> None:
        """Make ``table`` the partition's data file, in key and time order, in place of the
        ``replaced`` files."""
        directory = self._partition_dir(view.name, day)
        if table.num_rows:
            directory.mkdir(parents=True, exist_ok=True)
            if not ordered:
                table = table.sort_by([(c, "ascending") for c in (*view.plan.key_names, EVENT_TIMESTAMP)])
            tmp = directory / f".{DATA_FILE}.tmp"
            pq.write_table(table, tmp)
            os.replace(tmp, directory / DATA_FILE)
        for old in replaced:
            if old.name != DATA_FILE or not table.num_rows:
                old.unlink(missing_ok=True)  # a compaction may have removed a merged input
        with contextlib.suppress(OSError):  # gone, or holding files that landed meanwhile
            directory.rmdir()


def partition_order_sql(view: StreamFeatureView) -> list[str]:
    """The SQL ``ORDER BY`` (DuckDB, over the offline columns) that gives rows in partition order:
    by UTC day, then in each partition's key and time order. Rows in this order need no sorting in
    ``day_slices`` or in a partition rewrite (``replace(..., ordered=True)``)."""
    quoted = [f'"{c}"' for c in (*view.plan.key_names, EVENT_TIMESTAMP)]
    return [f'CAST("{EVENT_TIMESTAMP}" AS DATE)', *quoted]


def day_slices(table: pa.Table) -> list[tuple[date, pa.Table]]:
    """``table``'s rows split by the UTC day of ``event_timestamp``, each day's rows in their order
    in ``table`` (zero-copy slices of one stable sort; none where the rows are in day order)."""
    day_numbers = np.floor_divide(table.column(EVENT_TIMESTAMP).cast(pa.int64()).to_numpy(), _MICROS_PER_DAY)
    if len(day_numbers) and np.any(day_numbers[1:] < day_numbers[:-1]):
        first = day_numbers.min()
        small = day_numbers.max() - first < np.iinfo(np.int16).max
        # numpy's stable sort of 16-bit integers is a radix sort: linear, not n log n
        order = np.argsort((day_numbers - first).astype(np.int16) if small else day_numbers, kind="stable")
        table, day_numbers = table.take(pa.array(order)), day_numbers[order]
    starts = [0, *(np.flatnonzero(np.diff(day_numbers)) + 1).tolist()]
    ends = [*starts[1:], len(day_numbers)]
    return [
        (_EPOCH_DAY + timedelta(days=int(day_numbers[a])), table.slice(a, b - a))
        for a, b in zip(starts, ends, strict=True)
        if b > a
    ]
