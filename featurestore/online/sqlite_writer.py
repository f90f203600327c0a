"""Online writes to Feast's SQLite online store, in Feast's own table layout, in bulk.

Feast's SQLite store writes one ``INSERT`` per key and feature from Python, overwrites
unconditionally, and keeps timestamps as whole epoch seconds. This writer fills the same table
(``<project>_<view>``: entity key as Feast serialises it, feature name, serialised ``Value``,
``value_text``, event and created timestamps as Feast stores them) with multi-row upserts, plus one
column of its own, ``mlfs_event_us`` (the exact event time, in epoch microseconds), which Feast's
reads ignore. The newer-wins check compares that column inside the upsert, so a row never
replaces a newer one, even one newer by less than a second or written by another writer at the
same moment. The stock Feast SDK reads what it writes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from featurestore.online.base import (
    EntityKeys,
    WriteStats,
    column_blobs,
    epoch_us,
    latest_per_key,
    retry_while_locked,
    value_blobs,
    value_texts,
)
from featurestore.view import StreamFeatureView
from transforms.arrow_events import column_values
from transforms.errors import MLFSError
from transforms.plan import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from featurestore.config import RepoSettings

BUSY_TIMEOUT_S = 120.0
EXACT_COLUMN = "mlfs_event_us"
# One lock per database file for the writers of a process (a job's sink instances, which all run
# in one Python process on a local mini-cluster). Waiting on it ends the moment the writer before
# commits; SQLite's own busy handler, which writers in other processes still meet, sleeps in steps
# of up to 100 ms.
_WRITE_LOCKS: dict[Path, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _write_lock(path: Path) -> threading.Lock:
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(path.resolve(), threading.Lock())


# Rows go to SQLite as multi-row upserts, not ``executemany``: Python's sqlite3 gives up the
# interpreter lock for every statement it steps and must take it back, and while a job's other
# Python functions hold it, each row of an ``executemany`` waited for it.
MAX_ROWS_PER_STATEMENT = 256


def statement_sizes(rows: int, largest: int) -> list[int]:
    """Statement sizes (rows each) adding up to ``rows``: ``largest`` (a power of two) while it
    fits, then the powers of two of the rest, so a writer prepares few distinct statements."""
    sizes = [largest] * (rows // largest)
    rest = rows % largest
    while rest:
        size = 1 << (rest.bit_length() - 1)
        sizes.append(size)
        rest -= size
    return sizes


@dataclass(frozen=True)
class SqliteTarget:
    """What this writer needs of a repository's Feast SQLite online store: the project, the database
    file and the entity key serialisation version."""

    project: str
    path: Path
    key_version: int

    @classmethod
    def of_settings(cls, settings: RepoSettings) -> SqliteTarget | None:
        """The repository's store read from ``feature_store.yaml`` alone (no Feast import); None where
        Feast's layout is not the plain one this writer fills (vector or numeric-value columns,
        versioned tables)."""
        online = settings.online_store
        if (
            online.get("vector_enabled")
            or online.get("enable_openai_compatible_store")
            or settings.registry_options.get("enable_online_feature_view_versioning")
        ):
            return None
        path = Path(str(online.get("path", "data/online_store.db")))
        path = path if path.is_absolute() else settings.repo_path / path
        return cls(settings.project, path, settings.entity_key_version)

    @classmethod
    def of_feast(cls, config: Any) -> SqliteTarget:
        """The same from Feast's ``RepoConfig``."""
        path = Path(config.online_store.path)
        if config.repo_path and not path.is_absolute():
            path = Path(config.repo_path) / path
        return cls(config.project, path, config.entity_key_serialization_version)


def _feast_seconds(value: datetime) -> int:
    """A timestamp as Feast's SQLite store holds it (its ``datetime`` adapter over naive UTC)."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return int(value.timestamp())


class SqliteOnlineWriter:
    """Newer-wins bulk writes of a view's latest rows into Feast's SQLite online store."""

    def __init__(self, target: SqliteTarget) -> None:
        self.project = target.project
        self.keys = EntityKeys(target.key_version)
        path = target.path
        self.conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        self.lock = _write_lock(path)
        retry_while_locked(lambda: self.conn.execute("PRAGMA journal_mode=WAL"))
        self.ready_tables: set[str] = set()
        variables = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self.rows_per_statement = 1 << (max(1, min(MAX_ROWS_PER_STATEMENT, variables // 7)).bit_length() - 1)
        self._statements: dict[tuple[str, int], str] = {}

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats:
        latest = latest_per_key(view, rows)
        names = view.plan.key_names
        times = [row[EVENT_TIMESTAMP] for row in latest]
        values = {name: [row[name] for row in latest] for name, _ in view.plan.output_features}
        return self._write(
            view,
            self.keys.serialize_keys(view, [tuple(row[k] for k in names) for row in latest]),
            ([_feast_seconds(t) for t in times], [epoch_us(t) for t in times]),
            {
                name: (value_blobs(dtype, values[name]), values[name])
                for name, dtype in view.plan.output_features
            },
        )

    def write_table(self, view: StreamFeatureView, table: pa.Table) -> WriteStats:
        if not table.num_rows:
            return WriteStats()
        times = table.column(EVENT_TIMESTAMP)
        utc = times.cast(pa.timestamp(times.type.unit))  # naive UTC, as ``_feast_seconds`` makes them
        features = {
            name: (column_blobs(dtype, table.column(name)), column_values(table.column(name)))
            for name, dtype in view.plan.output_features
        }
        return self._write(
            view,
            self.keys.serialize_table(view, table),
            (
                [_feast_seconds(t) for t in utc.to_pylist()],
                column_values(utc.cast(pa.timestamp("us"), safe=False).cast(pa.int64())),
            ),
            features,
        )

    def _write(
        self,
        view: StreamFeatureView,
        keys: list[bytes],
        times: tuple[list[int], list[int]],
        features: dict[str, tuple[list[bytes], list[Any]]],
    ) -> WriteStats:
        """The upsert of one row per key: its serialised entity key, event time (Feast's whole
        seconds and epoch microseconds) and each feature's serialised ``Value``s and values."""
        if not keys:
            return WriteStats()
        table = self.table(view)
        if table not in self.ready_tables:
            retry_while_locked(lambda: self._add_exact_column(table))
            self.ready_tables.add(table)
        now = _feast_seconds(datetime.now(UTC))
        seconds, exact = times
        # Rows in the table's primary-key order (entity key, feature name): SQLite then touches
        # each B-tree page once, which halves a large write's time.
        columns = sorted(
            (name, blobs, value_texts(dtype, values))
            for name, dtype in view.plan.output_features
            for blobs, values in [features[name]]
        )
        data = [
            (keys[i], name, blobs[i], texts[i], seconds[i], now, exact[i])
            for i in sorted(range(len(keys)), key=keys.__getitem__)
            for name, blobs, texts in columns
        ]
        changed = 0

        def upsert() -> None:
            nonlocal changed
            before = self.conn.total_changes
            with self.lock, self.conn:
                self.upsert(table, data)
            changed = self.conn.total_changes - before

        retry_while_locked(upsert)
        written = changed // max(1, len(view.plan.output_features))
        return WriteStats(written=written, skipped_older=len(keys) - written)

    def table(self, view: StreamFeatureView) -> str:
        """The view's online table, quoted for SQL."""
        # Feast's ``compute_table_id`` of an unversioned table (``SqliteTarget.of_settings``).
        return '"' + f"{self.project}_{view.name}".replace('"', '""') + '"'

    def upsert(self, table: str, data: Sequence[tuple[Any, ...]]) -> None:
        """Newer-wins upserts of ``data`` (entity key, feature name, value, value text, event and
        created seconds, event microseconds) into ``table``, in the open transaction."""
        start = 0
        for size in statement_sizes(len(data), self.rows_per_statement):
            part = data[start : start + size]
            self.conn.execute(self._upsert_sql(table, size), list(chain.from_iterable(part)))
            start += size

    def _upsert_sql(self, table: str, rows: int) -> str:
        """The newer-wins upsert of ``rows`` rows into ``table``, one statement (built once)."""
        sql = self._statements.get((table, rows))
        if sql is None:
            values = ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * rows)
            sql = (
                f"INSERT INTO {table} (entity_key, feature_name, value, value_text, event_ts, created_ts, "
                f"{EXACT_COLUMN}) VALUES {values} ON CONFLICT(entity_key, feature_name) DO UPDATE "
                "SET value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
                f"created_ts = excluded.created_ts, {EXACT_COLUMN} = excluded.{EXACT_COLUMN} "
                # A row Feast's own writer put there has only whole seconds to compare with.
                f"WHERE excluded.{EXACT_COLUMN} >= "
                f"coalesce({table}.{EXACT_COLUMN}, {table}.event_ts * 1000000)"
            )
            self._statements[(table, rows)] = sql
        return sql

    def _add_exact_column(self, table: str) -> None:
        columns = {r[1] for r in self.conn.execute(f"PRAGMA table_info({table})")}
        if not columns:
            raise MLFSError(f"the online table {table} does not exist: run `mlfs apply` first")
        if EXACT_COLUMN not in columns:
            try:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {EXACT_COLUMN} INTEGER")
            except sqlite3.OperationalError as err:
                if "duplicate column" not in str(err):  # another writer added it just now
                    raise

    def close(self) -> None:
        self.conn.close()
