"""What both backfill engines share about a run: its name, its manifest (what is done, for resuming
after a kill), its chunks, how far back a chunk's values reach, and the newest row per key."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa

from backfill.history import count_events
from featurestore.offline.parquet import ParquetOfflineStore
from featurestore.online.base import OnlineWriter
from featurestore.view import StreamFeatureView
from transforms.joining import JoinInputs
from transforms.plan import EVENT_TIMESTAMP, spec_hash
from transforms.timeutil import DAY_MS, datetime_to_ms, ms_to_datetime

MANIFEST = "manifest.json"
CHUNK_ROWS = 20_000_000  # stage-1 rows whose feature rows one chunk computes at most (by default)
log = logging.getLogger(__name__)


@dataclass
class ViewBackfill:
    """What a backfill engine is asked to do for one view: every engine's ``backfill_view`` takes it."""

    view: StreamFeatureView
    files: list[Path]
    start: datetime | None
    end: datetime
    offline: ParquetOfflineStore
    writer: OnlineWriter
    work_root: Path  # each run keeps its manifest and files under work_root/view/run_key
    dead_letter_file: Callable[[datetime], Path]  # the file for a range ending at the given time
    restart: bool = False  # discard an interrupted run's progress
    tick: Callable[[int], None] | None = None  # progress: events (embedded, reference) or chunks (Spark)
    end_given: bool = True  # False: ``end`` is "now", so a resumed run keeps its own end
    chunk_rows: int = CHUNK_ROWS
    chunk_days: int | None = None  # Spark: calendar chunks of this many days
    spark_master: str | None = None
    # What the view's joins read (``backfill.joins``), computed when the engine asks: Spark computes
    # the looked-up views' rows on its own session.
    join_inputs: Callable[[], JoinInputs | None] = lambda: None
    join_files: list[Path] = field(default_factory=list)  # the histories behind ``joins``

    def events_at_most(self, n: int) -> bool:
        """Whether the history holds at most ``n`` events (JSON lines are not counted ahead: no)."""
        total = count_events(self.files)
        return total is not None and total <= n


@dataclass
class Manifest:
    """What a run has finished; saved after every step."""

    created: str
    end: str = ""
    prepared: bool = False
    counts: dict[str, int] = field(default_factory=dict)
    first_ms: int | None = None
    row_days: list[int] = field(default_factory=list)  # the UTC days (since 1970) with rows, sorted
    day_rows: dict[str, int] = field(default_factory=dict)  # UTC day -> stage-1 rows (volume chunks)
    chunks_done: list[int] = field(default_factory=list)
    chunking: str = ""  # how the range was cut into the chunks ``chunks_done`` counts
    rows_dead_lettered: dict[str, int] = field(default_factory=dict)  # chunk -> rows a model stage refused

    @staticmethod
    def load(path: Path, created: datetime) -> Manifest:
        if path.is_file():
            return Manifest(**json.loads(path.read_text()))
        return Manifest(created=created.isoformat())

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self), sort_keys=True))
        tmp.replace(path)


@dataclass(frozen=True)
class Chunk:
    index: int
    start: datetime
    end: datetime


def run_key(view: StreamFeatureView, files: list[Path], start: datetime | None) -> str:
    """Names a run: the same view definition, start and input files (its joins' included) resume
    the same run (its end is in the manifest)."""
    parts = [spec_hash(view.spec()), str(start)]
    for f in files:
        stat = f.stat()
        parts.append(f"{f}:{stat.st_size}:{stat.st_mtime_ns}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def open_run(job: ViewBackfill) -> tuple[Path, Manifest, datetime]:
    """The run's work directory, its manifest and its end: an interrupted run with the same inputs
    resumes (keeping its own end unless the caller gave one; another end starts over)."""
    end = job.end
    work = job.work_root / job.view.name / run_key(job.view, job.files + job.join_files, job.start)
    manifest = Manifest.load(work / MANIFEST, datetime.now(UTC))
    restart = job.restart
    if manifest.end and manifest.end != end.isoformat():
        if job.end_given:
            restart = True  # an explicit, different end is a different run
        else:
            end = datetime.fromisoformat(manifest.end)
            log.warning("%s: resuming the interrupted backfill up to %s", job.view.name, manifest.end)
    if restart:
        shutil.rmtree(work, ignore_errors=True)
        manifest = Manifest(created=datetime.now(UTC).isoformat())
    work.mkdir(parents=True, exist_ok=True)
    manifest.end = end.isoformat()
    return work, manifest, end


def chunks(first: datetime, end: datetime, start: datetime | None, days: int) -> list[Chunk]:
    """Day-aligned chunks of ``days`` days covering ``[start or first, end)``."""
    begin = start or first
    cursor = datetime(begin.year, begin.month, begin.day, tzinfo=UTC)
    out: list[Chunk] = []
    while cursor < end:
        stop = min(cursor + timedelta(days=days), end)
        out.append(Chunk(len(out), max(cursor, begin), stop))
        cursor = stop
    return out


def volume_chunks(
    day_rows: dict[int, int], end: datetime, start: datetime | None, max_rows: int = CHUNK_ROWS
) -> list[Chunk]:
    """Day-aligned chunks covering ``[start or the first row's day, end)``, each holding at most
    ``max_rows`` rows of its own days (a day is never split)."""
    if not day_rows:
        return []
    first = ms_to_datetime(min(day_rows) * DAY_MS)
    begin = max(start, first) if start is not None else first
    begin_day = datetime_to_ms(begin) // DAY_MS
    end_day = (datetime_to_ms(end) - 1) // DAY_MS
    out: list[Chunk] = []
    cursor = begin
    held = 0
    for day in range(begin_day, end_day + 1):
        rows = day_rows.get(day, 0)
        if held and held + rows > max_rows:
            stop = ms_to_datetime(day * DAY_MS)
            out.append(Chunk(len(out), cursor, stop))
            cursor, held = stop, 0
        held += rows
        if day > begin_day + 400_000:  # pragma: no cover - a range beyond any calendar
            break
    out.append(Chunk(len(out), cursor, end))
    return [c for c in out if c.start < c.end]


def has_rows(chunk: Chunk, row_days: list[int], reach: int | None) -> bool:
    """Whether any row that a chunk's values depend on lies on one of ``row_days`` (a chunk of an
    empty stretch of history has nothing to compute: no Spark job for it)."""
    c0, c1 = datetime_to_ms(chunk.start), datetime_to_ms(chunk.end)
    first_day = (c0 - (reach or 0)) // DAY_MS
    last_day = (c1 - 1) // DAY_MS
    i = bisect_left(row_days, first_day)
    return i < len(row_days) and row_days[i] <= last_day


def lookback_ms(view: StreamFeatureView) -> int | None:
    """How far before a chunk its rows can depend on events (None: all of history)."""
    return view.plan.window.lookback_ms()


def newest_per_key(table: pa.Table, keys: list[str]) -> pa.Table:
    """The rows of ``table`` that are their key's newest (feature rows are unique per key and time)."""
    # Joined on keys, time and row number only: Arrow's join carries no list columns.
    narrow = table.select([*keys, EVENT_TIMESTAMP]).append_column("_row", pa.array(np.arange(table.num_rows)))
    newest = narrow.group_by(keys).aggregate([(EVENT_TIMESTAMP, "max")])
    kept = narrow.join(
        newest,
        keys=[*keys, EVENT_TIMESTAMP],
        right_keys=[*keys, f"{EVENT_TIMESTAMP}_max"],
        join_type="left semi",
    )
    return table.take(kept.column("_row"))
