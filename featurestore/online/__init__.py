"""Online stores: the latest row per key, readable by the stock Feast SDK."""

from __future__ import annotations

from typing import Any

from featurestore.config import RepoSettings, feast_store
from featurestore.online.base import OnlineWriter, WriteStats, latest_per_key


def open_online_writer(settings: RepoSettings, store: Any | None = None) -> OnlineWriter:
    """The writer for the repository's configured online store (Feast's own writer, from ``store``
    or a new Feast store, only for layouts MLFS does not write itself)."""
    if settings.online_type == "redis":
        from featurestore.online.redis_writer import RedisOnlineWriter, redis_client

        online = settings.online_store
        return RedisOnlineWriter(
            redis_client(str(online.get("connection_string", "localhost:6379"))),
            settings.project,
            key_ttl_seconds=online.get("key_ttl_seconds"),
        )
    from featurestore.online.feast_writer import FeastOnlineWriter
    from featurestore.online.sqlite_writer import SqliteOnlineWriter, SqliteTarget

    target = SqliteTarget.of_settings(settings)
    if target is not None:
        return SqliteOnlineWriter(target)
    return FeastOnlineWriter(store if store is not None else feast_store(settings))


__all__ = ["OnlineWriter", "WriteStats", "latest_per_key", "open_online_writer"]
