"""Declarative event transforms: column expressions every engine can compile instead of calling Python.

``Select(user_id=col("user_id"), failed=when(col("status") == "failed", 1).otherwise(0))`` is an
event transform like any row function (it is callable on one event, which is its reference
semantics), but engines can also evaluate it over whole Arrow batches (``Select.arrow``) or compile it
to SQL, so the per-event stage stops being per-row Python.

Semantics, defined by ``Expr.eval`` (one event as a dict):

* ``col(name)`` is the event's value (null when absent); the time field holds the normalised event time.
* ``==`` and ``!=`` are null-safe (null equals only null), otherwise Python's equality.
* ``<``, ``<=``, ``>``, ``>=``, ``+``, ``-``, ``*``, ``/`` and unary ``-`` give null when an operand is null;
  ``/`` is true division and gives null for a zero divisor. Otherwise Python's operators (a type
  error dead-letters the event as ``transform_error``).
* ``&``, ``|`` and ``~`` are three-valued logic over booleans and null.
* ``when(c, a).otherwise(b)`` is ``a`` where ``c`` is true, else ``b`` (null when ``c`` is null).
* ``Select(where=c, ...)`` drops the event (it counts as filtered) unless ``c`` is true.

The Arrow evaluation only handles types whose Arrow kernels agree with Python exactly (signed
integers, floats, strings, booleans, null; timestamps passed through) and raises ``NotVectorisable``
for anything else, so callers fall back to the row function and results never differ.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

Scalar = None | bool | int | float | str

_EXACT_FLOAT_INT = 2**53  # ints beyond this do not convert to float exactly


class NotVectorisable(Exception):
    """An expression cannot be evaluated over this Arrow batch with exactly the row semantics."""


def _kind(array: pa.Array) -> str:
    """The semantic kind of an Arrow array: int, float, str, bool, null or timestamp."""
    t = array.type
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_signed_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "str"
    if pa.types.is_timestamp(t):
        return "timestamp"
    raise NotVectorisable(f"column type {t}")


def _normalise(array: pa.Array) -> pa.Array:
    """Arrow arrays in the few types the kernels below are used on."""
    kind = _kind(array)
    if kind == "int" and array.type != pa.int64():
        return pc.cast(array, pa.int64())
    if kind == "float" and array.type != pa.float64():
        return pc.cast(array, pa.float64())  # float32 -> float64 is exact, as in Python
    if kind == "str" and array.type != pa.string():
        return pc.cast(array, pa.string())
    return array


def _fits_float(array: pa.Array) -> bool:
    if _kind(array) != "int" or len(array) == 0:
        return True
    bounds = pc.min_max(array)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return low is None or (-_EXACT_FLOAT_INT <= low and high <= _EXACT_FLOAT_INT)


def _as_float(array: pa.Array) -> pa.Array:
    return pc.cast(array, pa.float64(), safe=False) if _kind(array) == "int" else array


def _same_kind(a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Two branches of one type (null arrays take the other's type), or ``NotVectorisable``."""
    ka, kb = _kind(a), _kind(b)
    if ka == "null" and kb != "null":
        return pc.cast(a, b.type), b
    if kb == "null" and ka != "null":
        return a, pc.cast(b, a.type)
    if ka != kb or a.type != b.type:
        raise NotVectorisable(f"branches of types {a.type} and {b.type}")
    return a, b


class Expr:
    """A column expression over one event; build with ``col``, ``lit``, operators and ``when``."""

    __hash__ = None  # type: ignore[assignment]  # == builds an expression

    def eval(self, row: dict[str, Any]) -> Any:
        raise NotImplementedError

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        raise NotImplementedError

    def spec(self) -> Any:
        raise NotImplementedError

    def __bool__(self) -> bool:
        raise TypeError("an expression has no truth value: use &, |, ~ and when(), not and/or/not/if")

    def __eq__(self, other: object) -> Expr:  # type: ignore[override]
        return Binary("==", self, _wrap(other))

    def __ne__(self, other: object) -> Expr:  # type: ignore[override]
        return Binary("!=", self, _wrap(other))

    def __lt__(self, other: object) -> Expr:
        return Binary("<", self, _wrap(other))

    def __le__(self, other: object) -> Expr:
        return Binary("<=", self, _wrap(other))

    def __gt__(self, other: object) -> Expr:
        return Binary(">", self, _wrap(other))

    def __ge__(self, other: object) -> Expr:
        return Binary(">=", self, _wrap(other))

    def __add__(self, other: object) -> Expr:
        return Binary("+", self, _wrap(other))

    def __radd__(self, other: object) -> Expr:
        return Binary("+", _wrap(other), self)

    def __sub__(self, other: object) -> Expr:
        return Binary("-", self, _wrap(other))

    def __rsub__(self, other: object) -> Expr:
        return Binary("-", _wrap(other), self)

    def __mul__(self, other: object) -> Expr:
        return Binary("*", self, _wrap(other))

    def __rmul__(self, other: object) -> Expr:
        return Binary("*", _wrap(other), self)

    def __truediv__(self, other: object) -> Expr:
        return Binary("/", self, _wrap(other))

    def __rtruediv__(self, other: object) -> Expr:
        return Binary("/", _wrap(other), self)

    def __and__(self, other: object) -> Expr:
        return Binary("&", self, _wrap(other))

    def __rand__(self, other: object) -> Expr:
        return Binary("&", _wrap(other), self)

    def __or__(self, other: object) -> Expr:
        return Binary("|", self, _wrap(other))

    def __ror__(self, other: object) -> Expr:
        return Binary("|", _wrap(other), self)

    def __neg__(self) -> Expr:
        return Unary("neg", self)

    def __invert__(self) -> Expr:
        return Unary("not", self)

    def is_null(self) -> Expr:
        """True where the value is null (NaN is a value here)."""
        return Unary("is_null", self)

    def fill_null(self, value: object) -> Expr:
        """The value, or ``value`` where it is null."""
        return When(Unary("is_null", self), _wrap(value), self)

    def __str__(self) -> str:
        return _text(self.spec())

    def __repr__(self) -> str:
        return f"<expr {self}>"


class Col(Expr):
    def __init__(self, name: str) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"col() takes a field name, got {name!r:.60}")
        self.name = name

    def eval(self, row: dict[str, Any]) -> Any:
        return row.get(self.name)

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        column = columns.get(self.name)
        return pa.nulls(n) if column is None else _normalise(column)

    def spec(self) -> Any:
        return ["col", self.name]


class Lit(Expr):
    def __init__(self, value: Scalar) -> None:
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"a literal must be None, bool, int, float or str, got {value!r:.60}")
        self.value = value

    def eval(self, row: dict[str, Any]) -> Any:
        return self.value

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        value = self.value
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            raise NotVectorisable(f"literal {value} is beyond int64")
        return _normalise(pa.array([value] * n))

    def spec(self) -> Any:
        return ["lit", self.value]


def _null_safe_eq(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(a == b)


def _divide(a: Any, b: Any) -> Any:
    return None if b == 0 else a / b


def _logic_operand(value: Any, op: str) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    raise TypeError(f"{op} needs booleans, got {type(value).__name__}")


def _and(a: Any, b: Any) -> bool | None:
    x, y = _logic_operand(a, "&"), _logic_operand(b, "&")
    if x is False or y is False:
        return False
    return None if x is None or y is None else True


def _or(a: Any, b: Any) -> bool | None:
    x, y = _logic_operand(a, "|"), _logic_operand(b, "|")
    if x is True or y is True:
        return True
    return None if x is None or y is None else False


_NULL_PROPAGATING: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _divide,
}
_ARROW_COMPARE = {"<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}
_ARROW_CHECKED = {"+": pc.add_checked, "-": pc.subtract_checked, "*": pc.multiply_checked}


class Binary(Expr):
    def __init__(self, op: str, left: Expr, right: Expr) -> None:
        self.op, self.left, self.right = op, left, right

    def eval(self, row: dict[str, Any]) -> Any:
        a, b = self.left.eval(row), self.right.eval(row)
        op = self.op
        if op == "==":
            return _null_safe_eq(a, b)
        if op == "!=":
            return not _null_safe_eq(a, b)
        if op == "&":
            return _and(a, b)
        if op == "|":
            return _or(a, b)
        if a is None or b is None:
            return None
        return _NULL_PROPAGATING[op](a, b)

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        a, b = self.left.arrow(columns, n), self.right.arrow(columns, n)
        ka, kb = _kind(a), _kind(b)
        op = self.op
        if "timestamp" in (ka, kb):
            raise NotVectorisable("operators on timestamps")
        if op in ("&", "|"):
            if {ka, kb} - {"bool", "null"}:
                raise NotVectorisable(f"{op} on {ka} and {kb}")
            a, b = pc.cast(a, pa.bool_()), pc.cast(b, pa.bool_())
            return pc.and_kleene(a, b) if op == "&" else pc.or_kleene(a, b)
        numeric = {ka, kb} <= {"int", "float", "null"}
        same = ka == kb or "null" in (ka, kb)
        if not (numeric or (same and {ka, kb} <= {"str", "bool", "null"})):
            raise NotVectorisable(f"{op} on {ka} and {kb}")
        if op in ("==", "!=", "<", "<=", ">", ">="):
            if "int" in (ka, kb) and "float" in (ka, kb) and not (_fits_float(a) and _fits_float(b)):
                raise NotVectorisable("comparing floats with ints beyond 2**53")
            if "null" in (ka, kb):
                if op in ("==", "!="):
                    equal = pc.and_(pc.is_null(a), pc.is_null(b))
                    return equal if op == "==" else pc.invert(equal)
                return pa.nulls(n, pa.bool_())
            if op in ("==", "!="):
                both_null = pc.and_(pc.is_null(a), pc.is_null(b))
                equal = pc.if_else(
                    pc.or_(pc.is_null(a), pc.is_null(b)), both_null, pc.fill_null(pc.equal(a, b), False)
                )
                return equal if op == "==" else pc.invert(equal)
            return _ARROW_COMPARE[op](a, b)
        if not numeric:
            raise NotVectorisable(f"{op} on {ka} and {kb}")
        if "null" in (ka, kb):
            return pa.nulls(n, pa.float64() if op == "/" or "float" in (ka, kb) else pa.int64())
        if op == "/":
            if ka == "int" and kb == "int" and not (_fits_float(a) and _fits_float(b)):
                raise NotVectorisable("dividing ints beyond 2**53")
            fa, fb = _as_float(a), _as_float(b)
            zero = pc.fill_null(pc.equal(fb, 0.0), False)
            return pc.if_else(zero, pa.scalar(None, pa.float64()), pc.divide(fa, fb))
        if ka == "int" and kb == "int":
            return _ARROW_CHECKED[op](a, b)  # raises on overflow, where Python would not
        return _ARROW_CHECKED[op](_as_float(a), _as_float(b))

    def spec(self) -> Any:
        return [self.op, self.left.spec(), self.right.spec()]


class Unary(Expr):
    def __init__(self, op: str, operand: Expr) -> None:
        self.op, self.operand = op, operand

    def eval(self, row: dict[str, Any]) -> Any:
        value = self.operand.eval(row)
        if self.op == "is_null":
            return value is None
        if value is None:
            return None
        if self.op == "not":
            return not _logic_operand(value, "~")
        return -value

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        value = self.operand.arrow(columns, n)
        kind = _kind(value)
        if self.op == "is_null":
            return pc.is_null(value)
        if self.op == "not":
            if kind not in ("bool", "null"):
                raise NotVectorisable(f"~ on {kind}")
            return pc.invert(pc.cast(value, pa.bool_()))
        if kind not in ("int", "float", "null"):
            raise NotVectorisable(f"- on {kind}")
        return pa.nulls(n, pa.int64()) if kind == "null" else pc.negate_checked(value)

    def spec(self) -> Any:
        return [self.op, self.operand.spec()]


class When(Expr):
    def __init__(self, condition: Expr, then: Expr, otherwise: Expr) -> None:
        self.condition, self.then, self.else_ = condition, then, otherwise

    def otherwise(self, value: object) -> When:
        """The value where the condition is not true (default null)."""
        return When(self.condition, self.then, _wrap(value))

    def eval(self, row: dict[str, Any]) -> Any:
        condition = _logic_operand(self.condition.eval(row), "when()")
        return self.then.eval(row) if condition is True else self.else_.eval(row)

    def arrow(self, columns: dict[str, pa.Array], n: int) -> pa.Array:
        condition = self.condition.arrow(columns, n)
        if _kind(condition) not in ("bool", "null"):
            raise NotVectorisable("when() on a non-boolean condition")
        then, else_ = _same_kind(self.then.arrow(columns, n), self.else_.arrow(columns, n))
        return pc.if_else(pc.fill_null(pc.cast(condition, pa.bool_()), False), then, else_)

    def spec(self) -> Any:
        return ["when", self.condition.spec(), self.then.spec(), self.else_.spec()]


def _wrap(value: object) -> Expr:
    if isinstance(value, Expr):
        return value
    return Lit(value)  # type: ignore[arg-type]  # Lit checks the type


def col(name: str) -> Expr:
    """The event's field ``name`` (null when the event has none)."""
    return Col(name)


def lit(value: Scalar) -> Expr:
    """A constant."""
    return Lit(value)


def when(condition: Expr, value: object) -> When:
    """``value`` where ``condition`` is true; chain ``.otherwise(other)`` for the rest."""
    return When(_wrap(condition), _wrap(value), Lit(None))


def _text(spec: Any) -> str:
    """A readable rendering of an expression spec."""
    head = spec[0]
    if head == "col":
        return str(spec[1])
    if head == "lit":
        return repr(spec[1])
    if head == "when":
        return f"when({_text(spec[1])}, {_text(spec[2])}).otherwise({_text(spec[3])})"
    if head == "is_null":
        return f"{_text(spec[1])}.is_null()"
    if head == "not":
        return f"~{_text(spec[1])}"
    if head == "neg":
        return f"-{_text(spec[1])}"
    return f"({_text(spec[1])} {head} {_text(spec[2])})"


class Select:
    """A declarative event transform: named output expressions, optionally only ``where`` true.

    Use it as a view's ``event_transform``; it returns one row or ``None`` per event, like a row
    function, and engines evaluate it vectorised.
    """

    def __init__(self, where: Expr | None = None, **outputs: object) -> None:
        if not outputs:
            raise ValueError("Select(...) needs at least one named output, e.g. user_id=col('user_id')")
        if where is not None and not isinstance(where, Expr):
            raise TypeError(f"where= must be an expression, got {where!r:.60}")
        self.where = where
        self.outputs = {name: _wrap(value) for name, value in outputs.items()}

    def __call__(self, event: dict[str, Any]) -> dict[str, Any] | None:
        if self.where is not None and _logic_operand(self.where.eval(event), "where=") is not True:
            return None
        return {name: expr.eval(event) for name, expr in self.outputs.items()}

    def arrow(self, batch: pa.RecordBatch) -> tuple[pa.Array, dict[str, pa.Array]]:
        """Which rows are kept (a boolean array without nulls) and the outputs for every row.

        Raises ``NotVectorisable`` when the batch holds types the Arrow kernels would treat
        differently from Python (callers then use the row function).
        """
        columns = dict(zip(batch.schema.names, batch.columns, strict=True))
        n = batch.num_rows
        try:
            outputs = {name: expr.arrow(columns, n) for name, expr in self.outputs.items()}
            if self.where is None:
                kept = pa.array([True] * n, pa.bool_())
            else:
                condition = self.where.arrow(columns, n)
                if _kind(condition) not in ("bool", "null"):
                    raise NotVectorisable("where= is not boolean")
                kept = pc.fill_null(pc.cast(condition, pa.bool_()), False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise NotVectorisable(str(err)) from None
        return kept, outputs

    def spec(self) -> dict[str, Any]:
        return {
            "select": {name: expr.spec() for name, expr in self.outputs.items()},
            "where": None if self.where is None else self.where.spec(),
        }

    def __str__(self) -> str:
        parts = [f"{name}={expr}" for name, expr in self.outputs.items()]
        if self.where is not None:
            parts.append(f"where={self.where}")
        return f"Select({', '.join(parts)})"

    def reference(self) -> dict[str, str]:
        """How the registry records this transform: the expression itself, and its hash."""
        canonical = json.dumps(self.spec(), sort_keys=True, separators=(",", ":"))
        return {
            "ref": str(self),
            "declarative": canonical,
            "source_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
        }
