"""Feature value types and the one coercion rule every engine applies to them.

The names mirror Feast's types (``String``, ``Int64``, ...) so definitions read like Feast
definitions, but importing this module does not import Feast (which takes seconds), so engine
workers that load a view stay fast. ``registry.feast_objects`` maps them to Feast's types.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from transforms.timeutil import ms_to_datetime, parse_event_time

_INT_BOUNDS = {"Int32": (-(2**31), 2**31 - 1), "Int64": (-(2**63), 2**63 - 1)}


@dataclass(frozen=True)
class DType:
    """A feature value type; ``element`` is set for arrays."""

    name: str
    element: DType | None = None

    def __str__(self) -> str:
        return f"Array({self.element})" if self.element is not None else self.name

    @property
    def is_numeric(self) -> bool:
        return self.name in ("Int32", "Int64", "Float32", "Float64")

    @property
    def is_integer(self) -> bool:
        return self.name in ("Int32", "Int64")

    @property
    def is_float(self) -> bool:
        return self.name in ("Float32", "Float64")


String = DType("String")
Int32 = DType("Int32")
Int64 = DType("Int64")
Float32 = DType("Float32")
Float64 = DType("Float64")
Bool = DType("Bool")
Bytes = DType("Bytes")
UnixTimestamp = DType("UnixTimestamp")

SCALARS: dict[str, DType] = {
    t.name: t for t in (String, Int32, Int64, Float32, Float64, Bool, Bytes, UnixTimestamp)
}


def Array(element: DType) -> DType:
    """An array of ``element`` values (used by ``LastK``)."""
    if element.element is not None:
        raise ValueError("nested arrays are not supported")
    return DType("Array", element)


def dtype_from_string(text: str) -> DType:
    """Parse ``str(dtype)`` back (used when reading specs from the registry)."""
    if text.startswith("Array(") and text.endswith(")"):
        return Array(dtype_from_string(text[6:-1]))
    try:
        return SCALARS[text]
    except KeyError:
        raise ValueError(f"unknown type {text!r}") from None


class CoercionError(ValueError):
    """A value does not fit its declared type (the event goes to the dead letter)."""


def is_null(value: Any) -> bool:
    """Whether an input value is null: None, or a float NaN (NaN is null on every engine; the Arrow
    and Spark lowerings test ``is_nan`` beside ``is_null``)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def coerce(value: Any, dtype: DType) -> Any:
    """Return ``value`` as the Python value of ``dtype``, ``None`` for null.

    Rules (the same in every engine): ints are accepted where floats are expected, never the
    reverse; bools are not numbers; float NaN is null and an infinity does not fit (the event is a
    ``wrong_type`` dead letter, so it never poisons a sum); timestamps accept everything
    ``parse_event_time`` accepts and become UTC datetimes with millisecond precision.
    """
    if value is None:
        return None
    name = dtype.name
    if name == "String":
        if isinstance(value, str):
            return value
    elif name in _INT_BOUNDS:
        if isinstance(value, int) and not isinstance(value, bool):
            low, high = _INT_BOUNDS[name]
            if low <= value <= high:
                return int(value)
            raise CoercionError(f"{value} is out of range for {name}")
    elif name in ("Float32", "Float64"):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                as_float = float(value)
            except OverflowError:  # an integer beyond any float
                raise CoercionError(f"{name} must be finite, got an integer beyond any float") from None
            if math.isnan(as_float):
                return None
            if math.isinf(as_float):
                raise CoercionError(f"{name} must be finite, got {as_float}")
            return as_float
    elif name == "Bool":
        if isinstance(value, bool):
            return value
    elif name == "Bytes":
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
    elif name == "UnixTimestamp":
        try:
            return ms_to_datetime(parse_event_time(value))
        except ValueError as err:
            raise CoercionError(str(err)) from None
    elif name == "Array":
        assert dtype.element is not None
        if isinstance(value, (list, tuple)):
            return [coerce(v, dtype.element) for v in value]
    raise CoercionError(f"expected {dtype}, got {type(value).__name__} {value!r:.60}")


def feature_value(value: Any, dtype: DType) -> Any:
    """An aggregation result as the stored feature value of ``dtype``.

    ``UnixTimestamp`` feature values are floored to whole seconds, because Feast's ``Value`` type
    (what online stores hold) has no finer unit; flooring everywhere keeps offline (training) and
    online (serving) values identical. Event times themselves keep milliseconds.
    """
    value = coerce(value, dtype)
    if value is None:
        return None
    if dtype.name == "UnixTimestamp":
        return value.replace(microsecond=0)
    if dtype.element is not None and dtype.element.name == "UnixTimestamp":
        return [None if v is None else v.replace(microsecond=0) for v in value]
    return value


def holds_values_of(arrow_type: Any, dtype: DType) -> bool:
    """Whether a column of ``arrow_type`` (a pyarrow type) can hold values that ``coerce`` accepts
    for ``dtype``: a history column whose type cannot is refused before a backfill starts, instead
    of making every row a ``wrong_type`` dead letter."""
    import pyarrow as pa

    types = pa.types
    if types.is_null(arrow_type):
        return True
    if types.is_dictionary(arrow_type):
        return holds_values_of(arrow_type.value_type, dtype)
    name = dtype.name
    if name == "String":
        return bool(types.is_string(arrow_type) or types.is_large_string(arrow_type))
    if name in _INT_BOUNDS:
        return bool(types.is_integer(arrow_type))
    if name in ("Float32", "Float64"):
        return bool(types.is_integer(arrow_type) or types.is_floating(arrow_type))
    if name == "Bool":
        return bool(types.is_boolean(arrow_type))
    if name == "Bytes":
        return bool(types.is_binary(arrow_type) or types.is_large_binary(arrow_type))
    if name == "UnixTimestamp":  # what parse_event_time accepts
        return bool(
            types.is_timestamp(arrow_type)
            or types.is_string(arrow_type)
            or types.is_large_string(arrow_type)
            or types.is_integer(arrow_type)
            or types.is_floating(arrow_type)
        )
    if name == "Array":
        assert dtype.element is not None
        is_list = types.is_list(arrow_type) or types.is_large_list(arrow_type)
        return bool(is_list and holds_values_of(arrow_type.value_type, dtype.element))
    return False
