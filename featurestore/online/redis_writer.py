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

from featurestore.online.arrow_blobs import timestamp_blobs
from featurestore.online.base import (
    EntityKeys,
    WriteStats,
    column_blobs,
    epoch_us,
    latest_per_key,
    value_blobs,
)
from featurestore.view import StreamFeatureView
from transforms.arrow_events import column_values
from transforms.errors import MLFSError
from transforms.plan import EVENT_TIMESTAMP

# KEYS: the entity hashes. ARGV[1]: the ts field; ARGV[2]: F, the number of features; ARGV[3]:
# seconds until each key expires (0: never); ARGV[4 .. 3+F]: the feature fields; then, per key, its
# ts bytes, seconds, nanos and F values. A key is written only when the protobuf Timestamp it holds
# (field 1 seconds, field 2 nanos, both varints) is not newer. Returns how many keys were written.
_NEWER_WINS = """
local features, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local written = 0
local at = 4 + features
for k = 1, #KEYS do
  local seconds, nanos = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
  local newer = true
  local prev = redis.call('HGET', KEYS[k], ARGV[1])
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
    newer = not (fields[1] > seconds or (fields[1] == seconds and fields[2] > nanos))
  end
  if newer then
    local args = {ARGV[1], ARGV[at]}
    for j = 1, features do
      args[#args + 1] = ARGV[3 + j]
      args[#args + 1] = ARGV[at + 2 + j]
    end
    redis.call('HSET', KEYS[k], unpack(args))
    written = written + 1
  end
  if ttl > 0 then redis.call('EXPIRE', KEYS[k], ttl) end
  at = at + 3 + features
end
return written
"""


KEYS_PER_CALL = 500  # keys per script call: each call holds the server for about a millisecond

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


def resp_command(args: list[bytes]) -> bytes:
    """A command in Redis's wire protocol (RESP): redis-py packs each argument in Python, which
    cost more than the rest of a write."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in args)


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
        self._sha = self._load_script()
        self.keys = EntityKeys(3)

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats:
        latest = latest_per_key(view, rows)
        blobs = {
            name: value_blobs(dtype, [row[name] for row in latest])
            for name, dtype in view.plan.output_features
        }
        times = [epoch_us(row[EVENT_TIMESTAMP]) for row in latest]
        return self._write(view, self.keys.serialize(view, latest), times, blobs)

    def write_table(self, view: StreamFeatureView, table: pa.Table) -> WriteStats:
        blobs = {name: column_blobs(dtype, table.column(name)) for name, dtype in view.plan.output_features}
        times = table.column(EVENT_TIMESTAMP).cast(pa.timestamp("us", "UTC"), safe=False)
        return self._write(
            view, self.keys.serialize_table(view, table), column_values(times.cast(pa.int64())), blobs
        )

    def _write(
        self, view: StreamFeatureView, keys: list[bytes], times: list[int], blobs: dict[str, list[bytes]]
    ) -> WriteStats:
        """Newer-wins writes of one row per key: its serialised entity key, event time (epoch
        microseconds) and each feature's serialised ``Value``, ``KEYS_PER_CALL`` keys per script
        call, every call of the batch sent at once."""
        if not keys:
            return WriteStats()
        if min(times) < 0:
            raise MLFSError(f"view {view.name!r}: online timestamps before 1970 are not supported")
        head = [
            f"_ts:{view.name}".encode(),
            b"%d" % len(blobs),
            b"%d" % (self.key_ttl_seconds or 0),
            *(field_id(f"{view.name}:{name}") for name in blobs),
        ]
        project = self.project.encode("utf-8")
        columns = list(blobs.values())
        stamps = timestamp_blobs(times)
        calls = []
        for start in range(0, len(keys), KEYS_PER_CALL):
            chunk = range(start, min(start + KEYS_PER_CALL, len(keys)))
            args = [b"EVALSHA", self._sha, b"%d" % len(chunk), *(keys[i] + project for i in chunk), *head]
            for i in chunk:
                seconds, micros = divmod(times[i], 1_000_000)
                args += [stamps[i], b"%d" % seconds, b"%d" % (micros * 1000)]
                args += [column[i] for column in columns]
            calls.append(resp_command(args))
        written = sum(self._send(calls))
        return WriteStats(written=written, skipped_older=len(keys) - written)

    def _send(self, calls: list[bytes]) -> list[int]:
        """Each packed script call's reply, all sent in one write (loading the script where the
        server lost it, as after a restart: a call's writes are idempotent)."""
        pool = self.client.connection_pool
        for attempt in range(2):
            try:
                connection = pool.get_connection()  # connects, if the pool has no connection
            except redis.RedisError as err:
                raise store_error(self.client, err) from None
            try:
                connection.send_packed_command(calls)
                replies = []
                for _ in calls:
                    try:
                        replies.append(connection.read_response())
                    except redis.ResponseError as err:  # read every reply before giving up
                        replies.append(err)
            except redis.RedisError as err:  # the stream's job restarts from its last checkpoint
                connection.disconnect()
                raise store_error(self.client, err) from None
            finally:
                pool.release(connection)
            errors = [r for r in replies if isinstance(r, redis.ResponseError)]
            if not errors:
                return replies
            if attempt or not all(isinstance(e, redis.exceptions.NoScriptError) for e in errors):
                raise store_error(self.client, errors[0])
            self._sha = self._load_script()
        raise AssertionError("unreachable")

    def _load_script(self) -> bytes:
        try:
            return str(self.client.script_load(_NEWER_WINS)).encode()
        except redis.RedisError as err:
            raise store_error(self.client, err) from None

    def close(self) -> None:
        self.client.close()
