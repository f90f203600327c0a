"""Online writes to Redis in Feast's exact layout, so the stock Feast SDK reads them.

One hash per entity key (Feast's v3 entity-key serialisation followed by the project name); field
``mmh3("<view>:<feature>")`` (4 bytes, little-endian) holds a serialised ``feast.types.Value``;
field ``_ts:<view>`` holds a protobuf ``Timestamp``. The newer-wins check runs inside Redis (a Lua
script), so concurrent writers cannot put an older row over a newer one.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import mmh3
import pyarrow as pa
import redis

from featurestore.online.arrow_blobs import entity_key_column, value_blob_column
from featurestore.online.base import (
    EntityKeys,
    WriteStats,
    column_values,
    latest_per_key,
    value_blobs,
)
from featurestore.view import StreamFeatureView
from transforms.errors import MLFSError
from transforms.plan import EVENT_TIMESTAMP

# KEYS[1]: the entity hash. ARGV: ts field, ts bytes, seconds, nanos, then field/value pairs.
# Reads the stored protobuf Timestamp (field 1 seconds, field 2 nanos, both varints) and writes
# only when the new timestamp is not older.
_NEWER_WINS = """
local prev = redis.call('HGET', KEYS[1], ARGV[1])
if prev then
  local fields = {0, 0}
  local i = 1
  while i <= #prev do
    local tag = string.byte(prev, i)
    i = i + 1
    local value, scale = 0, 1
    repeat
      local b = string.byte(prev, i)
      i = i + 1
      value = value + (b % 128) * scale
      scale = scale * 128
    until b < 128
    local number = math.floor(tag / 8)
    if number == 1 or number == 2 then fields[number] = value end
  end
  local seconds, nanos = tonumber(ARGV[3]), tonumber(ARGV[4])
  if fields[1] > seconds or (fields[1] == seconds and fields[2] > nanos) then
    return 0
  end
end
local args = {ARGV[1], ARGV[2]}
for j = 5, #ARGV do args[#args + 1] = ARGV[j] end
redis.call('HSET', KEYS[1], unpack(args))
return 1
"""


# The options a connection string may give after ``host:port``: redis-py's own keyword names, as
# Feast passes them on (values are JSON where they parse as JSON, text otherwise).
REDIS_OPTIONS = (
    "password",
    "username",
    "db",
    "ssl",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "socket_timeout",
    "socket_connect_timeout",
    "health_check_interval",
    "client_name",
)
TEXT_OPTIONS = ("password", "username", "ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "client_name")
# MLFS's writers never wait forever on a server that does not answer (Feast's readers keep theirs).
DEFAULT_TIMEOUTS = {"socket_connect_timeout": 5.0, "socket_timeout": 10.0}


def redis_options(connection_string: str) -> tuple[str, int, dict[str, Any]]:
    """(host, port, redis-py options) of Feast's connection string
    ``host:port[,option=value...]``; an unknown option is an error."""
    parts = [p.strip() for p in connection_string.split(",") if p.strip()]
    if not parts or ":" not in parts[0] or "=" in parts[0]:
        raise MLFSError(
            f"redis connection string must start with host:port, got {_safe(connection_string)!r}"
        )
    host, _, port = parts[0].rpartition(":")
    if not port.isdigit():
        raise MLFSError(f"redis connection string: port {port!r} is not a number")
    options: dict[str, Any] = {}
    for part in parts[1:]:
        name, equals, value = part.partition("=")
        if not equals or name not in REDIS_OPTIONS:
            raise MLFSError(
                f"redis connection string: unknown option {name!r} (options: {', '.join(REDIS_OPTIONS)})"
            )
        if name in TEXT_OPTIONS:
            options[name] = unquote(value)
            continue
        try:
            options[name] = json.loads(value)
        except ValueError:
            options[name] = value
    return host, int(port), options


def _safe(connection_string: str) -> str:
    """The connection string without its password, for messages."""
    return re.sub(r"password=[^,]*", "password=***", connection_string)


def redis_client(connection_string: str) -> redis.Redis:
    """A client from Feast's connection string (``redis_options``), with timeouts by default."""
    host, port, options = redis_options(connection_string)
    return redis.Redis(host=host, port=port, **{**DEFAULT_TIMEOUTS, **options})


def store_error(client: redis.Redis, err: Exception) -> MLFSError:
    """A Redis failure as a one-line error naming the store."""
    kwargs = client.connection_pool.connection_kwargs
    where = f"{kwargs.get('host')}:{kwargs.get('port')}"
    return MLFSError(f"online store redis at {where}: {type(err).__name__}: {err}")


def field_id(name: str) -> bytes:
    """Feast's Redis hash field of ``view:feature`` (its ``_mmh3``: murmur3 32-bit, little-endian)."""
    return struct.pack("<I", mmh3.hash(name, signed=False))


class RedisOnlineWriter:
    """Writes the latest row per key of a view to Redis, newer-wins, in Feast's layout."""

    def __init__(self, client: redis.Redis, project: str, key_ttl_seconds: int | None = None) -> None:
        self.client = client
        self.project = project
        self.key_ttl_seconds = key_ttl_seconds
        try:
            client.ping()  # a wrong password or address fails here, before any work
        except redis.RedisError as err:
            raise store_error(client, err) from None
        self._script = client.register_script(_NEWER_WINS)
        self.keys = EntityKeys(3)

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats:
        latest = latest_per_key(view, rows)
        blobs = {
            name: value_blobs(dtype, [row[name] for row in latest])
            for name, dtype in view.plan.output_features
        }
        times = [row[EVENT_TIMESTAMP] for row in latest]
        return self._write(view, self.keys.serialize(view, latest), times, blobs)

    def write_table(self, view: StreamFeatureView, table: pa.Table) -> WriteStats:
        names = list(view.plan.key_names)
        keys = entity_key_column(
            names, dict(view.plan.keys), {k: table.column(k) for k in names}, self.keys.version
        )
        if keys is None:
            key_columns = [column_values(table.column(k)) for k in names]
            keys = self.keys.serialize_keys(view, list(zip(*key_columns, strict=True)))
        blobs = {}
        for name, dtype in view.plan.output_features:
            column = table.column(name)
            encoded = value_blob_column(dtype, column)
            blobs[name] = value_blobs(dtype, column_values(column)) if encoded is None else encoded
        return self._write(view, keys, column_values(table.column(EVENT_TIMESTAMP)), blobs)

    def _write(
        self, view: StreamFeatureView, keys: list[bytes], times: list[Any], blobs: dict[str, list[bytes]]
    ) -> WriteStats:
        """Newer-wins writes of one row per key: its serialised entity key, event time and each
        feature's serialised ``Value``."""
        from google.protobuf.timestamp_pb2 import Timestamp

        if not keys:
            return WriteStats()
        field_ids = {name: field_id(f"{view.name}:{name}") for name, _ in view.plan.output_features}
        ts_field = f"_ts:{view.name}"
        project = self.project.encode("utf-8")
        pipe = self.client.pipeline(transaction=False)
        for i, (when, entity_key) in enumerate(zip(times, keys, strict=True)):
            stamp = Timestamp()
            stamp.FromDatetime(when)
            if stamp.seconds < 0:
                raise MLFSError(f"view {view.name!r}: online timestamps before 1970 are not supported")
            key = entity_key + project
            args: list[Any] = [ts_field, stamp.SerializeToString(), stamp.seconds, stamp.nanos]
            for name, column in blobs.items():
                args.extend((field_ids[name], column[i]))
            self._script(keys=[key], args=args, client=pipe)
            if self.key_ttl_seconds:
                pipe.expire(key, self.key_ttl_seconds)
        try:
            results = pipe.execute()
        except redis.RedisError as err:  # the stream's job restarts from its last checkpoint
            raise store_error(self.client, err) from None
        script_results = results[0::2] if self.key_ttl_seconds else results
        written = sum(1 for r in script_results if r == 1)
        return WriteStats(written=written, skipped_older=len(keys) - written)

    def close(self) -> None:
        self.client.close()
