"""Online writes through Feast's own online store (SQLite is the embedded default).

Feast's stores overwrite unconditionally, so the writer first reads the stored timestamps and
drops rows older than what is held; one writer per view is assumed (as a backfill or a keyed
streaming sink is).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from featurestore.online.base import (
    WriteStats,
    entity_key_protos,
    feature_value_protos,
    latest_per_key,
    retry_while_locked,
)
from featurestore.view import StreamFeatureView
from transforms.arrow_events import row_dicts
from transforms.plan import EVENT_TIMESTAMP

SQLITE_BUSY_TIMEOUT_MS = 120_000


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class FeastOnlineWriter:
    """Newer-wins writes of a view's latest rows through a ``feast.FeatureStore``."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.provider = store._get_provider()
        online = self.provider.online_store
        if type(online).__name__ == "SqliteOnlineStore":
            # Several streaming sinks write one SQLite file at once: let readers and writers overlap
            # (WAL) and wait for the lock instead of failing after Python's default 5 s.
            # The timeout first: switching to WAL takes a lock that another sink may hold right now.
            conn = online._get_conn(store.config)
            conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
            retry_while_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"))

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats:
        latest = latest_per_key(view, rows)
        if not latest:
            return WriteStats()
        table = self.store.get_feature_view(view.name)
        keys = entity_key_protos(view, latest)
        held = self.provider.online_read(self.store.config, table, keys)
        keep = [
            i
            for i, (held_ts, _) in enumerate(held)
            if held_ts is None or _aware(held_ts) <= latest[i][EVENT_TIMESTAMP]
        ]
        kept_rows = [latest[i] for i in keep]
        values = feature_value_protos(view, kept_rows)
        now = datetime.now(UTC)
        data = [
            (keys[i], protos, row[EVENT_TIMESTAMP], now)
            for i, row, protos in zip(keep, kept_rows, values, strict=True)
        ]
        if data:
            self.provider.online_write_batch(self.store.config, table, data, progress=None)
        return WriteStats(written=len(data), skipped_older=len(latest) - len(data))

    def write_table(self, view: StreamFeatureView, table: pa.Table) -> WriteStats:
        return self.write(view, row_dicts(table))

    def close(self) -> None:
        return None
