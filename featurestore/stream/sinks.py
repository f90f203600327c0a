"""What a streaming job writes, from Flink's Python workers: feature rows to the online and offline
stores, dead letters to the dead-letter directory, and status files the service reads for metrics.

Rows arrive in batches (``transforms.engines.flink.row_sink_function``). Online writes
are newer-wins and a re-emitted row replaces one with the same time, so a row written twice (after
a restart) changes nothing; offline reads keep the newest created row per key and time.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from featurestore.online.base import latest_table
from featurestore.runstatus import read_json, write_json
from featurestore.view import StreamFeatureView
from transforms.engines.flink_stage1 import SEQ_PARTITION_BITS
from transforms.events import DeadLetter, EventCounts
from transforms.plan import EVENT_TIMESTAMP


@dataclass
class SinkStatus:
    """What one row-sink instance has written."""

    rows_out: int = 0
    online_written: int = 0
    online_skipped_older: int = 0
    offline_rows: int = 0
    rows_dead_lettered: int = 0
    last_write: float = 0.0
    freshness_ms: float | None = None  # write time minus the newest written row's feature time


class DeadLetterLog:
    """A file of JSON-line dead letters of one view, opened on the first letter (one file per
    writer instance, so parallel and restarted instances never share a file)."""

    def __init__(self, dead_letter_dir: str, view: str, prefix: str) -> None:
        self.directory = Path(dead_letter_dir) / view
        self.prefix = prefix
        self._file: Any = None

    def append(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
            self._file = (self.directory / f"{self.prefix}-{stamp}-{uuid.uuid4().hex[:12]}.jsonl").open("a")
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class LiveOutcomes:
    """Stage 1's dead letters (appended as JSON lines) and counts (a status file, rewritten with
    each new total, which stage 1 emits about once a second while events arrive).

    Each letter carries ``seq``, its event's source partition and position there
    (``seq_partition``), which Flink's checkpoints keep. A job restored from a checkpoint (or
    restarted by Flink) replays the events after it, so letters written since would come again:
    the files of one ``lineage`` (the runs that carry on from one fresh start) and ``part`` are
    written by one instance at a time, each partition's in ``seq`` order, so a new instance skips
    each partition's letters up to the highest ``seq`` they hold of it; with ``ordered=False``
    (letters in event-time order: a joined view's joins) it skips every ``seq`` they hold.

    ``part`` names what writes: ``stage1`` (a view's own source), ``joins`` (a joined view's joins,
    whose counts add to stage 1's) or ``source-<name>`` (an interval join's other source, counted
    on its own)."""

    def __init__(
        self,
        view: str,
        dead_letter_dir: str,
        status_dir: str,
        lineage: str = "",
        part: str = "stage1",
        ordered: bool = True,
    ) -> None:
        self.view = view
        self.status_dir = Path(status_dir)
        self.part = part
        name = "stream" if part == "stage1" else f"stream-{part}"
        prefix = f"{name}-{lineage}" if lineage else name
        self._letters = DeadLetterLog(dead_letter_dir, view, prefix)
        self._ordered = ordered
        self._written: dict[int, int] = {}  # the highest ``seq`` written, by partition
        self._seen: set[int] = set()
        if lineage and ordered:
            self._written = highest_seqs(self._letters.directory, prefix)
        elif lineage:
            self._seen = written_seqs(self._letters.directory, prefix)

    def dead(self, letter: DeadLetter, late: bool, seq: int) -> None:
        if seq <= self._written.get(seq_partition(seq), -1) or seq in self._seen:
            return  # written before a restart, and replayed since
        if not self._ordered:
            self._seen.add(seq)
        self._letters.append({"seq": seq, **json.loads(letter.to_json())})

    def update(self, counts: EventCounts, max_event_ms: int | None) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        status = {"counts": asdict(counts), "max_event_ms": max_event_ms}
        # Each part runs as one instance: a restarted one replaces its predecessor's status.
        write_json(self.status_dir / status_file_name(self.view, self.part), status)

    def close(self) -> None:
        self._letters.close()


def status_file_name(view: str, part: str) -> str:
    """The counts file of a view's ``LiveOutcomes`` part: ``<view>.stage1.<n>.json`` for the counts
    that add up to the view's, ``<view>.source.<name>.json`` for a joined source's."""
    if part.startswith("source-"):
        return f"{view}.source.{part.removeprefix('source-')}.json"
    return f"{view}.stage1.{'0' if part == 'stage1' else part}.json"


def seq_partition(seq: int) -> int:
    """The source partition of a dead letter's ``seq`` (``flink_stage1.SEQ_PARTITION_BITS``)."""
    return seq >> SEQ_PARTITION_BITS


def highest_seqs(directory: Path, prefix: str) -> dict[int, int]:
    """The highest ``seq`` of each source partition among the dead letters of the files
    ``<prefix>-*.jsonl`` (a line cut off by a crash is skipped)."""
    highest: dict[int, int] = {}
    for seq in written_seqs(directory, prefix):
        partition = seq_partition(seq)
        highest[partition] = max(seq, highest.get(partition, seq))
    return highest


def written_seqs(directory: Path, prefix: str) -> set[int]:
    """Every ``seq`` among the dead letters of the files ``<prefix>-*.jsonl``."""
    return {seq for seq in _letter_fields(directory, prefix, "seq") if isinstance(seq, int)}


def _letter_fields(directory: Path, prefix: str, name: str) -> Iterator[Any]:
    """Field ``name`` of each dead letter in the files ``<prefix>-*.jsonl`` (a line cut off by a
    crash, or without the field, is skipped)."""
    for path in directory.glob(f"{prefix}-*.jsonl"):
        with path.open() as f:
            for line in f:
                try:
                    yield json.loads(line)[name]
                except (ValueError, KeyError, TypeError):
                    continue


def _row_identity(raw: str) -> bytes:
    return hashlib.blake2b(raw.encode(), digest_size=12).digest()


def dead_rows(directory: Path, prefix: str) -> set[bytes]:
    """The identities of the feature rows dead-lettered in the files ``<prefix>-*.jsonl``. Kept
    as 12-byte digests: a model that fails every row can leave many letters."""
    return {_row_identity(raw) for raw in _letter_fields(directory, prefix, "raw") if isinstance(raw, str)}


class StoreRows:
    """The row writer of ``mlfs serve-stream``: a view's feature rows to the repository's online
    and offline stores (opened on the Flink worker), with a status file for the service."""

    def __init__(
        self,
        view: StreamFeatureView,
        repo_path: str,
        status_dir: str,
        dead_letter_dir: str,
        lineage: str = "",
    ) -> None:
        from featurestore.config import load_settings
        from featurestore.offline.parquet import ParquetOfflineStore
        from featurestore.online import open_online_writer

        # The view comes with the job (its code by reference, as for stage 1): loading the
        # repository here would import its modules a second time on a cluster's workers.
        settings = load_settings(repo_path)
        self.view = view
        view_name = view.name
        self.writer = open_online_writer(settings) if self.view.online else None
        self.offline = ParquetOfflineStore(settings.offline_path) if self.view.offline else None
        self.status = SinkStatus()
        prefix = f"stream-rows-{lineage}" if lineage else "stream-rows"
        self.letters = DeadLetterLog(dead_letter_dir, view_name, prefix)
        self._lineage = lineage
        self._dead_rows: set[bytes] | None = None  # its lineage's dead-lettered rows, read when needed
        # One file per sink instance (the service clears them when it starts).
        self.status_file = Path(status_dir) / f"{view_name}.sink.{uuid.uuid4().hex[:12]}.json"
        self.status_file.parent.mkdir(parents=True, exist_ok=True)

    def dead(self, letters: list[DeadLetter]) -> None:
        """Feature rows an after-aggregation model stage could not score. Rows after the last
        checkpoint come again after a restart; a row its lineage already dead-lettered is skipped
        (a row is its key and time, so its text identifies it)."""
        if self._dead_rows is None:
            known = self._lineage and dead_rows(self.letters.directory, self.letters.prefix)
            self._dead_rows = known or set()
        for letter in letters:
            identity = _row_identity(letter.raw)
            if identity in self._dead_rows:
                continue
            self._dead_rows.add(identity)
            self.letters.append(json.loads(letter.to_json()))
            self.status.rows_dead_lettered += 1
        write_json(self.status_file, asdict(self.status))

    def write(self, rows: list[dict[str, Any]]) -> None:
        status = self.status
        if self.writer is not None:
            stats = self.writer.write(self.view, rows)
            status.online_written += stats.written
            status.online_skipped_older += stats.skipped_older
        if self.offline is not None:
            status.offline_rows += self.offline.append(self.view, rows, datetime.now(UTC))
        status.rows_out += len(rows)
        status.last_write = time.time()
        newest = max(r["event_timestamp"] for r in rows).timestamp()
        status.freshness_ms = (status.last_write - newest) * 1000
        write_json(self.status_file, asdict(status))

    def write_table(self, table: pa.Table) -> None:
        """``write`` of a table of feature rows (the row sink's batches of plain columns)."""
        status = self.status
        if self.writer is not None:
            stats = self.writer.write_table(self.view, latest_table(self.view, table))
            status.online_written += stats.written
            status.online_skipped_older += stats.skipped_older
        if self.offline is not None:
            status.offline_rows += self.offline.append_table(self.view, table, datetime.now(UTC))
        status.rows_out += table.num_rows
        status.last_write = time.time()
        newest = pc.max(table.column(EVENT_TIMESTAMP)).as_py().timestamp()
        status.freshness_ms = (status.last_write - newest) * 1000
        write_json(self.status_file, asdict(status))

    def close(self) -> None:
        self.letters.close()
        if self.writer is not None:
            self.writer.close()


@dataclass
class StreamStatus:
    """A view's summed status over its running instances."""

    counts: EventCounts
    sink: SinkStatus
    max_event_ms: int | None = None  # the latest event time seen (the watermark's base)
    source_counts: dict[str, EventCounts] = field(default_factory=dict)  # joined sources, by name


def read_status(status_dir: Path, view: str) -> StreamStatus:
    """The summed stage-1 counts and sink status of a view's running instances."""
    status = StreamStatus(EventCounts(), SinkStatus())
    if not status_dir.is_dir():
        return status
    for path in status_dir.glob(f"{view}.stage1.*.json"):
        data = read_json(path)
        if data:
            status.counts.add(EventCounts(**data["counts"]))
            seen = data.get("max_event_ms")
            if seen is not None and (status.max_event_ms is None or seen > status.max_event_ms):
                status.max_event_ms = seen
    for path in status_dir.glob(f"{view}.source.*.json"):
        data = read_json(path)
        if data:
            name = path.name.removeprefix(f"{view}.source.").removesuffix(".json")
            status.source_counts[name] = EventCounts(**data["counts"])
    sink = status.sink
    for path in status_dir.glob(f"{view}.sink.*.json"):
        data = read_json(path)
        if not data:
            continue
        part = SinkStatus(**data)
        sink.rows_out += part.rows_out
        sink.online_written += part.online_written
        sink.online_skipped_older += part.online_skipped_older
        sink.offline_rows += part.offline_rows
        sink.rows_dead_lettered += part.rows_dead_lettered
        if part.last_write >= sink.last_write:
            sink.last_write = part.last_write
            sink.freshness_ms = part.freshness_ms
    return status


def clear_status(status_dir: Path, keep_counts: bool = False) -> None:
    """Remove the status files of the run before. With ``keep_counts`` (a job restoring its state)
    stage 1's counts stay: they are what the restored job starts from (or, if the run before got
    further than its last checkpoint, what its replay reaches again), so metrics do not drop to zero
    while the restored job starts."""
    if status_dir.is_dir():
        for path in status_dir.glob("*.json"):
            if not (keep_counts and (".stage1." in path.name or ".source." in path.name)):
                os.unlink(path)
