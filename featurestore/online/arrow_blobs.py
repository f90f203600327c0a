"""Feast's serialised ``Value``s and entity keys of whole Arrow columns, in NumPy.

A backfill writes the newest row of every key at once (50,000 keys are 150,000 values for a view
of three features); per-value Python encoding cost more than the store's own writes. These build
the same bytes as ``base.value_blobs`` and ``EntityKeys`` (tests check them equal) for the plain
column types, and return None for anything else, which the per-value path then writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.arrow_events import one_array, python_values
from transforms.dtypes import DType

_MAX_VARINT = 10  # a 64-bit varint's bytes
_NOTHING = pa.scalar(b"", pa.large_binary())  # the separator of joined bytes


def _varints(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each unsigned 64-bit value as a protobuf varint: a (rows, 10) byte matrix and each row's
    length in bytes."""
    rest = values.astype(np.uint64, copy=True)
    out = np.empty((len(rest), _MAX_VARINT), np.uint8)
    lengths = np.ones(len(rest), np.int64)
    for i in range(_MAX_VARINT):
        low = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest >>= np.uint64(7)
        more = rest != 0
        out[:, i] = low | (more.astype(np.uint8) << np.uint8(7))
        lengths += more
    return out, lengths


def _binary(matrix: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """A binary array whose row ``i`` is the first ``lengths[i]`` bytes of ``matrix[i]``."""
    keep = np.arange(matrix.shape[1]) < lengths[:, None]
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    data = np.ascontiguousarray(matrix[keep])
    return pa.Array.from_buffers(
        pa.large_binary(), len(lengths), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )


def _tagged(tag: int, body: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """``tag`` then each row's body bytes."""
    matrix = np.empty((body.shape[0], body.shape[1] + 1), np.uint8)
    matrix[:, 0] = tag
    matrix[:, 1:] = body
    return _binary(matrix, lengths + 1)


def _fixed_bytes(values: np.ndarray, dtype: str) -> np.ndarray:
    """Each value's little-endian bytes as a (rows, width) matrix."""
    kind = np.dtype(dtype).newbyteorder("<")
    little = np.ascontiguousarray(values.astype(kind))
    return little.view(np.uint8).reshape(len(values), kind.itemsize)


# Feast's ``Value`` field (number << 3 | wire type) and the Arrow type each plain scalar needs.
_VARINT_FIELDS = {"Int32": (0x18, pa.int32()), "Int64": (0x20, pa.int64())}
_FIXED_FIELDS = {"Float64": (0x29, pa.float64(), "f8"), "Float32": (0x35, pa.float32(), "f4")}


def value_blob_column(dtype: DType, column: pa.ChunkedArray | pa.Array) -> list[bytes] | None:
    """``base.value_blobs`` of a whole column (null and NaN the empty ``Value``), or None where the
    column's type is not the plain Arrow type of ``dtype``."""
    array = one_array(column)
    if dtype.element is not None:
        return None
    empty = array.is_null().to_numpy(zero_copy_only=False)
    if dtype.name in _VARINT_FIELDS and array.type == _VARINT_FIELDS[dtype.name][1]:
        tag, _ = _VARINT_FIELDS[dtype.name]
        values = array.fill_null(0).to_numpy().astype(np.int64).view(np.uint64)
        body, lengths = _varints(values)
    elif dtype.name in _FIXED_FIELDS and array.type == _FIXED_FIELDS[dtype.name][1]:
        tag, _, width = _FIXED_FIELDS[dtype.name]
        values = array.fill_null(0).to_numpy()
        empty |= np.isnan(values)
        body = _fixed_bytes(values, width)
        lengths = np.full(len(values), body.shape[1], np.int64)
    elif dtype.name == "Bool" and array.type == pa.bool_():
        tag = 0x38
        body = array.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8)[:, None]
        lengths = np.ones(len(body), np.int64)
    elif dtype.name == "String" and array.type in (pa.string(), pa.large_string()):
        return _string_blobs(array, empty)
    else:
        return None
    lengths = np.where(empty, -1, lengths)  # -1 + the tag's byte: an empty ``Value``
    return python_values(_tagged(tag, body, lengths))


def _string_blobs(array: pa.Array, empty: np.ndarray) -> list[bytes]:
    """Field 2 (``string_val``, length-delimited) of each string; null the empty ``Value``."""
    data = array.cast(pa.large_binary())
    sizes = pc.binary_length(data).fill_null(0).to_numpy().astype(np.uint64)
    head, lengths = _varints(sizes)
    headers = _tagged(0x12, head, np.where(empty, -1, lengths))
    return python_values(pc.binary_join_element_wise(headers, data.fill_null(b""), _NOTHING))


def timestamp_blobs(micros: list[int]) -> list[bytes]:
    """Serialised protobuf ``Timestamp``s of epoch microseconds (at least 0): field 1 seconds,
    field 2 nanos, each left out where it is zero, as protobuf does."""
    seconds, rest = np.divmod(np.asarray(micros, np.int64), 1_000_000)
    parts = []
    for tag, values in ((0x08, seconds), (0x10, rest * 1000)):
        body, lengths = _varints(values.view(np.uint64))
        parts.append(_tagged(tag, body, np.where(values == 0, -1, lengths)))
    return python_values(pc.binary_join_element_wise(*parts, _NOTHING))


KEY_TYPE_NUMBERS = {"String": 2, "Int32": 3, "Int64": 4}  # Feast's ValueType numbers of the keys MLFS writes
# The Arrow types each key type is encoded from here.
_KEY_ARROW_TYPES = {
    "String": (pa.string(), pa.large_string()),
    "Int32": (pa.int32(),),
    "Int64": (pa.int64(),),
}


def entity_key_column(
    names: list[str], dtypes: dict[str, DType], columns: dict[str, Any], version: int
) -> list[bytes] | None:
    """Feast's ``serialize_entity_key`` (version 3) of each row's key columns, or None where a key
    type, column type or null needs Feast's own serialisation."""
    if version != 3:
        return None
    arrays = {}
    for name in names:
        column = columns[name]
        array = one_array(column)
        kinds = _KEY_ARROW_TYPES.get(dtypes[name].name)
        if kinds is None or array.type not in kinds or array.null_count:
            return None
        arrays[name] = array
    order = sorted(names)  # Feast sorts a key's columns by join key name
    rows = len(arrays[names[0]])
    prefix = np.array([len(order)], "<u4").tobytes() + b"".join(
        np.array([2, len(n.encode())], "<u4").tobytes() + n.encode() for n in order
    )
    parts: list[Any] = [pa.array([prefix] * rows, pa.large_binary())]
    for name in order:
        type_number = KEY_TYPE_NUMBERS[dtypes[name].name]
        array = arrays[name]
        if dtypes[name].name == "String":
            data = array.cast(pa.large_binary())
            sizes = pc.binary_length(data).to_numpy().astype(np.uint32)
        else:
            width = "i8" if dtypes[name].name == "Int64" else "i4"
            body = _fixed_bytes(array.to_numpy(), width)
            data = _binary(body, np.full(rows, body.shape[1], np.int64))
            sizes = np.full(rows, body.shape[1], np.uint32)
        header = np.empty((rows, 2), "<u4")
        header[:, 0] = type_number
        header[:, 1] = sizes
        parts += [_binary(header.view(np.uint8).reshape(rows, 8), np.full(rows, 8, np.int64)), data]
    return python_values(pc.binary_join_element_wise(*parts, _NOTHING))
