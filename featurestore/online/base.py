"""What every online writer shares: rows in, the latest row per key written, newer-wins."""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from featurestore.online.arrow_blobs import KEY_TYPE_NUMBERS, entity_key_column, value_blob_column
from featurestore.view import StreamFeatureView
from transforms.arrow_events import column_values, same_as_previous
from transforms.dtypes import DType
from transforms.plan import EVENT_TIMESTAMP


@dataclass
class WriteStats:
    """Keys written, and keys skipped because the store already held a newer row."""

    written: int = 0
    skipped_older: int = 0


class OnlineWriter(Protocol):
    """Writes feature rows to an online store: a row never replaces a newer feature timestamp;
    a row with the same timestamp (a late correction) does replace it."""

    def write(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> WriteStats: ...

    def write_table(self, view: StreamFeatureView, table: pa.Table) -> WriteStats:
        """``write`` of a table with one row per key (a backfill's newest rows), by columns where
        the writer can."""
        ...

    def close(self) -> None: ...


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_us(value: datetime) -> int:
    """A datetime as epoch microseconds (a naive one is UTC)."""
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    return (aware - EPOCH) // timedelta(microseconds=1)


def latest_per_key(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest row of each key; among rows with equal timestamps the last one given wins."""
    keys = view.plan.key_names
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = tuple(row[k] for k in keys)
        held = latest.get(key)
        if held is None or row[EVENT_TIMESTAMP] >= held[EVENT_TIMESTAMP]:
            latest[key] = row
    return list(latest.values())


def latest_table(view: StreamFeatureView, table: pa.Table) -> pa.Table:
    """``latest_per_key`` of a table: each key's newest row, the last one given among equal times."""
    keys = list(view.plan.key_names)
    indexed = table.append_column("_given", pa.array(np.arange(table.num_rows)))
    order = [(k, "ascending") for k in keys] + [(EVENT_TIMESTAMP, "ascending"), ("_given", "ascending")]
    ordered = indexed.sort_by(order)
    last = np.ones(table.num_rows, bool)
    last[:-1] = ~same_as_previous(ordered, keys)[1:]  # the next row holds another key
    return table.take(ordered.column("_given").filter(pa.array(last)))


def entity_key_protos(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[Any]:
    """Feast's ``EntityKey`` proto of each row, converted column by column."""
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.type_map import python_values_to_proto_values

    from featurestore.feast_types import value_type

    names = list(view.plan.key_names)
    columns = [
        python_values_to_proto_values([row[name] for row in rows], value_type(dtype))
        for name, dtype in view.plan.keys
    ]
    return [EntityKey(join_keys=names, entity_values=values) for values in zip(*columns, strict=True)]


# Feast's ``Value`` field per scalar type whose conversion ``_scalar_protos`` does itself. Not
# bytes: Feast writes ``b""`` as null when no value of the batch is longer, and as ``b""`` otherwise.
_SCALAR_FIELDS = {
    "Int32": "int32_val",
    "Int64": "int64_val",
    "Float32": "float_val",
    "Float64": "double_val",
    "String": "string_val",
    "Bool": "bool_val",
}


def _scalar_protos(field: str, values: list[Any]) -> list[Any]:
    """Feast's ``Value`` protos of a scalar column, as ``python_values_to_proto_values`` makes them
    from MLFS's typed values (None and NaN give an empty ``Value``) without its per-value checks."""
    from feast.protos.feast.types.Value_pb2 import Value

    out = []
    for value in values:
        if value is None or value != value:  # NaN is null to Feast
            out.append(Value())
        else:
            out.append(Value(**{field: value}))
    return out


def value_protos(dtype: DType, values: list[Any]) -> list[Any]:
    """A feature column's Feast ``Value`` protos, as Feast's ``python_values_to_proto_values``."""
    from feast.type_map import python_values_to_proto_values

    from featurestore.feast_types import value_type

    if dtype.element is None and dtype.name in _SCALAR_FIELDS:
        return _scalar_protos(_SCALAR_FIELDS[dtype.name], values)
    return python_values_to_proto_values(values, value_type(dtype))


def _varint(n: int) -> bytes:
    """An integer as a protobuf varint."""
    n &= (1 << 64) - 1  # a negative integer is its 64-bit two's complement, as protobuf writes it
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _encode_int(tag: bytes, bits: int) -> Callable[[Any], bytes]:
    low, high = -(1 << (bits - 1)), 1 << (bits - 1)

    def encode(value: Any) -> bytes:
        if type(value) is not int or not low <= value < high:
            raise TypeError("left to protobuf")
        return tag + _varint(value)

    return encode


def _encode_string(value: Any) -> bytes:
    if type(value) is not str:
        raise TypeError("left to protobuf")
    data = value.encode("utf-8")
    return b"\x12" + _varint(len(data)) + data


# Each plain scalar type's ``Value`` field written directly (field number and wire type as in
# Feast's Value.proto): a serialised proto per value costs more than the rest of a write.
_FLOAT64, _FLOAT32 = struct.Struct("<d"), struct.Struct("<f")
_TIMESTAMP = _encode_int(b"\x40", 64)
_ENCODERS: dict[str, Callable[[Any], bytes]] = {
    "String": _encode_string,
    "Int32": _encode_int(b"\x18", 32),
    "Int64": _encode_int(b"\x20", 64),
    "Float64": lambda v: b"\x29" + _FLOAT64.pack(_number(v)),
    "Float32": lambda v: b"\x35" + _FLOAT32.pack(_number(v)),
    "Bool": lambda v: b"\x38\x01" if v is True else b"\x38\x00" if v is False else _not_encoded(),
    "UnixTimestamp": lambda v: _TIMESTAMP(_epoch_seconds(v)),
}


def _epoch_seconds(value: Any) -> int:
    """A datetime as Feast's ``unix_timestamp_val`` holds it: whole seconds (a naive one is UTC)."""
    if not isinstance(value, datetime):
        raise TypeError("left to protobuf")
    if value.utcoffset() is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp())


def _number(value: Any) -> float:
    if type(value) is not float and type(value) is not int:
        raise TypeError("left to protobuf")
    return value


def _not_encoded() -> bytes:
    raise TypeError("left to protobuf")


def value_blobs(dtype: DType, values: list[Any]) -> list[bytes]:
    """A feature column's serialised Feast ``Value``s: the bytes of ``value_protos``, written
    directly for plain scalar types (a null or NaN is the empty ``Value``)."""
    encode = _ENCODERS.get(dtype.name) if dtype.element is None else None
    if encode is not None:
        try:
            return [b"" if v is None or v != v else encode(v) for v in values]
        except (TypeError, ValueError, OverflowError, UnicodeError):
            pass  # a value protobuf converts (or rejects) in its own way
    return [proto.SerializeToString() for proto in value_protos(dtype, values)]


def column_blobs(dtype: DType, column: pa.ChunkedArray | pa.Array) -> list[bytes]:
    """``value_blobs`` of an Arrow column, by columns where ``value_blob_column`` can."""
    blobs = value_blob_column(dtype, column)
    return value_blobs(dtype, column_values(column)) if blobs is None else blobs


def feature_value_protos(view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each row's features as Feast ``Value`` protos."""
    columns = {
        name: value_protos(dtype, [row[name] for row in rows]) for name, dtype in view.plan.output_features
    }
    return [{name: protos[i] for name, protos in columns.items()} for i in range(len(rows))]


# The types whose ``value_text`` (Feast's ``extract_text_and_num``) is the value itself, as text.
_TEXT_IS_STR = {"Int32", "Int64", "Float64", "String", "Bool"}
_NO_TEXT = {"UnixTimestamp", "Bytes"}  # and lists: Feast keeps no text for them


def value_texts(dtype: DType, values: list[Any]) -> list[str | None]:
    """The ``value_text`` Feast's SQL online stores keep beside each ``Value`` of a column."""
    if dtype.element is None and dtype.name in _TEXT_IS_STR:
        text = (lambda v: str(float(v))) if dtype.name == "Float64" else str
        # Null and NaN are an empty ``Value``, whose text is null.
        return [None if v is None or v != v else text(v) for v in values]
    if dtype.element is not None or dtype.name in _NO_TEXT:
        return [None] * len(values)
    from feast.infra.online_stores.helpers import extract_text_and_num

    return [extract_text_and_num(proto, False)[0] for proto in value_protos(dtype, values)]


_UINT32 = struct.Struct("<I")


def _key_bytes(dtype: str, value: Any) -> bytes:
    """A key value as ``serialize_entity_key`` (version 3) writes it, for the types ``KEY_TYPE_NUMBERS``."""
    if dtype == "String" and type(value) is str:
        data = value.encode("utf-8")
    elif dtype == "Int64" and type(value) is int and -(1 << 63) <= value < 1 << 63:
        data = struct.pack("<q", value)
    elif dtype == "Int32" and type(value) is int and -(1 << 31) <= value < 1 << 31:
        data = struct.pack("<i", value)
    else:
        raise TypeError("left to Feast")
    return _UINT32.pack(KEY_TYPE_NUMBERS[dtype]) + _UINT32.pack(len(data)) + data


class EntityKeys:
    """Feast's serialised entity key of each row (``serialize_entity_key``), remembered for up to
    ``limit`` keys, since a stream writes the same keys again and again. Version 3 keys of string
    and integer columns are written directly (Feast's proto round trip per key costs more than the
    store write); any other key goes through Feast."""

    def __init__(self, version: int, limit: int = 200_000) -> None:
        self.version = version
        self.limit = limit
        self._known: dict[tuple[str, tuple[Any, ...]], bytes] = {}

    def serialize(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[bytes]:
        names = view.plan.key_names
        return self.serialize_keys(view, [tuple(row[k] for k in names) for row in rows])

    def serialize_table(self, view: StreamFeatureView, table: pa.Table) -> list[bytes]:
        """``serialize`` of a table's rows, by columns where ``entity_key_column`` can."""
        names = list(view.plan.key_names)
        columns = {k: table.column(k) for k in names}
        keys = entity_key_column(names, dict(view.plan.keys), columns, self.version)
        if keys is None:
            key_columns = [column_values(columns[k]) for k in names]
            keys = self.serialize_keys(view, list(zip(*key_columns, strict=True)))
        return keys

    def serialize_keys(self, view: StreamFeatureView, keys: list[tuple[Any, ...]]) -> list[bytes]:
        """``serialize`` of key tuples (in ``view.plan.key_names`` order)."""
        wanted = [(view.name, key) for key in keys]
        missing = [i for i, key in enumerate(wanted) if key not in self._known]
        if missing and len(self._known) + len(missing) > self.limit:
            self._known.clear()
            missing = list(range(len(wanted)))
        if missing:
            encoded = self._direct(view, [keys[i] for i in missing])
            if encoded is None:
                names = view.plan.key_names
                rows = [dict(zip(names, keys[i], strict=True)) for i in missing]
                encoded = self._through_feast(view, rows)
            for i, data in zip(missing, encoded, strict=True):
                self._known[wanted[i]] = data
        return [self._known[key] for key in wanted]

    def _direct(self, view: StreamFeatureView, keys: list[tuple[Any, ...]]) -> list[bytes] | None:
        """The keys serialised without protos, or None where Feast must do it."""
        columns = dict(view.plan.keys)
        if self.version != 3 or any(columns[n].name not in KEY_TYPE_NUMBERS for n in columns):
            return None
        names = list(view.plan.key_names)
        order = sorted(range(len(names)), key=lambda i: names[i])  # Feast sorts by join key name
        prefix = _UINT32.pack(len(names)) + b"".join(
            _UINT32.pack(2) + _UINT32.pack(len(names[i].encode())) + names[i].encode() for i in order
        )
        dtypes = [columns[names[i]].name for i in order]
        try:
            return [
                prefix + b"".join(_key_bytes(dtype, key[i]) for dtype, i in zip(dtypes, order, strict=True))
                for key in keys
            ]
        except TypeError:
            return None

    def _through_feast(self, view: StreamFeatureView, rows: Sequence[dict[str, Any]]) -> list[bytes]:
        from feast.infra.key_encoding_utils import serialize_entity_key

        protos = entity_key_protos(view, rows)
        return [serialize_entity_key(p, entity_key_serialization_version=self.version) for p in protos]


def retry_while_locked(statement: Callable[[], Any], attempts: int = 20) -> None:
    """Run a SQLite statement, retrying while another writer holds the database locked."""
    import sqlite3
    import time

    for attempt in range(attempts):
        try:
            statement()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or attempt == attempts - 1:
                raise
            time.sleep(0.5)
