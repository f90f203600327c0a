"""MLFS value types as Feast's (``ValueType`` for protos, ``feast.types`` for schemas)."""

from __future__ import annotations

from typing import Any

from transforms.dtypes import DType

_VALUE_TYPES = {
    "String": "STRING",
    "Int32": "INT32",
    "Int64": "INT64",
    "Float32": "FLOAT",
    "Float64": "DOUBLE",
    "Bool": "BOOL",
    "Bytes": "BYTES",
    "UnixTimestamp": "UNIX_TIMESTAMP",
}


def value_type(dtype: DType) -> Any:
    """Feast's ``ValueType`` for an MLFS type."""
    from feast.value_type import ValueType

    if dtype.element is not None:
        return ValueType[_VALUE_TYPES[dtype.element.name] + "_LIST"]
    return ValueType[_VALUE_TYPES[dtype.name]]


def feast_dtype(dtype: DType) -> Any:
    """Feast's type object (``feast.types``) for an MLFS type."""
    from feast import types

    if dtype.element is not None:
        return types.Array(feast_dtype(dtype.element))
    return getattr(types, dtype.name)
