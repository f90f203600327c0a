"""Compiling declarative event transforms (``transforms.expressions``) to Spark column expressions.

Each expression becomes a Spark ``Column`` with exactly the row semantics of ``Expr.eval`` on
the rows it decides, plus an *undecided* flag: true on the rows where Spark's arithmetic would
differ from Python's (integer overflow, ints beyond 2**53 meeting floats). Those rows go to the
row function in Python, which gives the reference result (often a dead letter). Expressions
whose operand types would make Python raise or behave differently on every row (strings plus
numbers, booleans in arithmetic, timestamps) are not compiled at all: ``compile_select`` returns
None and the caller runs the whole view through Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transforms.expressions import Binary, Col, Expr, Lit, Select, Unary, When

_EXACT_FLOAT_INT = 2**53
_LONG_MIN = -(2**63)

# Spark type names (``DataType.typeName()``) per expression kind.
_KINDS = {
    "byte": "int",
    "short": "int",
    "integer": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "boolean": "bool",
    "void": "null",
}
_CAST = {"int": "long", "float": "double", "str": "string", "bool": "boolean"}


class NotCompilable(Exception):
    """The expression's operand types make Spark and Python disagree on every row."""


@dataclass(frozen=True)
class Compiled:
    """One expression over a Spark row: its value, when Spark cannot decide it, and its kind."""

    value: Any
    undecided: Any
    kind: str  # int, float, str, bool or null


@dataclass(frozen=True)
class CompiledSelect:
    """A ``Select`` as Spark columns: outputs, where it keeps the event, and where it is undecided."""

    outputs: dict[str, Any]
    kept: Any  # the where= condition is true (never null)
    where_undecided: Any
    undecided: Any  # any output or the condition undecided (never null)


def _null(kind: str) -> Any:
    from pyspark.sql import functions as F

    return F.lit(None).cast(_CAST.get(kind, "boolean"))


def _false() -> Any:
    from pyspark.sql import functions as F

    return F.lit(False)


def _beyond_float(c: Compiled) -> Any:
    """Where an int operand does not convert to a float exactly."""
    from pyspark.sql import functions as F

    if c.kind != "int":
        return _false()
    return F.coalesce((c.value < -_EXACT_FLOAT_INT) | (c.value > _EXACT_FLOAT_INT), _false())


def _nan(c: Compiled) -> Any:
    from pyspark.sql import functions as F

    return F.coalesce(F.isnan(c.value), _false()) if c.kind == "float" else _false()


def _as_float(c: Compiled) -> Any:
    return c.value.cast("double") if c.kind == "int" else c.value


def _typed(a: Compiled, b: Compiled) -> tuple[Any, Any]:
    """Both operands' values, a null operand taking the other's type."""
    va = _null(b.kind) if a.kind == "null" else a.value
    vb = _null(a.kind) if b.kind == "null" else b.value
    return va, vb


def _compile(expr: Expr, types: dict[str, str]) -> Compiled:
    from pyspark.sql import functions as F

    if isinstance(expr, Col):
        spark_type = types.get(expr.name)
        if spark_type is None:
            return Compiled(_null("null"), _false(), "null")
        kind = _KINDS.get(spark_type)
        if kind is None:
            raise NotCompilable(f"column {expr.name} of type {spark_type}")
        value = F.col(f"`{expr.name}`")
        return Compiled(value if kind == "null" else value.cast(_CAST[kind]), _false(), kind)
    if isinstance(expr, Lit):
        constant = expr.value
        if constant is None:
            return Compiled(_null("null"), _false(), "null")
        if isinstance(constant, bool):
            return Compiled(F.lit(constant), _false(), "bool")
        if isinstance(constant, int):
            if not _LONG_MIN <= constant < 2**63:
                raise NotCompilable(f"literal {constant} is beyond int64")
            return Compiled(F.lit(constant).cast("long"), _false(), "int")
        if isinstance(constant, float):
            return Compiled(F.lit(constant).cast("double"), _false(), "float")
        return Compiled(F.lit(constant), _false(), "str")
    if isinstance(expr, Binary):
        return _binary(expr.op, _compile(expr.left, types), _compile(expr.right, types))
    if isinstance(expr, Unary):
        return _unary(expr.op, _compile(expr.operand, types))
    if isinstance(expr, When):
        return _when(_compile(expr.condition, types), _compile(expr.then, types), _compile(expr.else_, types))
    raise NotCompilable(f"expression {expr}")


def _binary(op: str, a: Compiled, b: Compiled) -> Compiled:
    from pyspark.sql import functions as F

    undecided = a.undecided | b.undecided
    kinds = {a.kind, b.kind}
    if op in ("&", "|"):
        if kinds - {"bool", "null"}:
            raise NotCompilable(f"{op} on {a.kind} and {b.kind}")
        va, vb = (a.value.cast("boolean"), b.value.cast("boolean"))
        return Compiled(va & vb if op == "&" else va | vb, undecided, "bool")
    numeric = kinds <= {"int", "float", "null"}
    same = a.kind == b.kind or "null" in kinds
    if not (numeric or (same and kinds <= {"str", "bool", "null"})):
        raise NotCompilable(f"{op} on {a.kind} and {b.kind}")
    if op in ("==", "!=", "<", "<=", ">", ">="):
        if kinds == {"int", "float"}:
            undecided = undecided | _beyond_float(a) | _beyond_float(b)
        va, vb = _typed(a, b)
        nan = _nan(a) | _nan(b)  # Python: NaN equals nothing and orders with nothing
        if op in ("==", "!="):
            equal = va.eqNullSafe(vb) & ~nan
            return Compiled(equal if op == "==" else ~equal, undecided, "bool")
        compare = {"<": va < vb, "<=": va <= vb, ">": va > vb, ">=": va >= vb}[op]
        both = va.isNotNull() & vb.isNotNull()
        return Compiled(F.when(both & nan, _false()).otherwise(compare), undecided, "bool")
    if not numeric:
        raise NotCompilable(f"{op} on {a.kind} and {b.kind}")
    if "null" in kinds:
        kind = "float" if op == "/" or "float" in kinds else "int"
        return Compiled(_null(kind), undecided, kind)
    if op == "/":
        if kinds == {"int"}:
            undecided = undecided | _beyond_float(a) | _beyond_float(b)
        fa, fb = _as_float(a), _as_float(b)
        return Compiled(F.when(fb != 0.0, F.try_divide(fa, fb)), undecided, "float")
    if kinds == {"int"}:
        checked = {"+": F.try_add, "-": F.try_subtract, "*": F.try_multiply}[op](a.value, b.value)
        overflow = checked.isNull() & a.value.isNotNull() & b.value.isNotNull()
        return Compiled(checked, undecided | overflow, "int")
    fa, fb = _as_float(a), _as_float(b)
    return Compiled({"+": fa + fb, "-": fa - fb, "*": fa * fb}[op], undecided, "float")


def _unary(op: str, a: Compiled) -> Compiled:
    from pyspark.sql import functions as F

    if op == "is_null":
        return Compiled(a.value.isNull(), a.undecided, "bool")
    if op == "not":
        if a.kind not in ("bool", "null"):
            raise NotCompilable(f"~ on {a.kind}")
        return Compiled(~a.value.cast("boolean"), a.undecided, "bool")
    if a.kind == "null":
        return Compiled(_null("int"), a.undecided, "int")
    if a.kind == "int":
        negated = F.try_subtract(F.lit(0).cast("long"), a.value)
        return Compiled(negated, a.undecided | (negated.isNull() & a.value.isNotNull()), "int")
    if a.kind == "float":
        return Compiled(-a.value, a.undecided, "float")
    raise NotCompilable(f"- on {a.kind}")


def _when(condition: Compiled, then: Compiled, else_: Compiled) -> Compiled:
    from pyspark.sql import functions as F

    if condition.kind not in ("bool", "null"):
        raise NotCompilable("when() on a non-boolean condition")
    if then.kind != else_.kind and "null" not in (then.kind, else_.kind):
        raise NotCompilable(f"when() branches of kinds {then.kind} and {else_.kind}")
    kind = else_.kind if then.kind == "null" else then.kind
    vt, ve = _typed(then, else_)
    taken = F.coalesce(condition.value.cast("boolean"), _false())
    # Python evaluates only the branch it takes, so only that branch can leave the row undecided.
    undecided = condition.undecided | F.when(taken, then.undecided).otherwise(else_.undecided)
    return Compiled(F.when(taken, vt).otherwise(ve), undecided, kind)


def compile_select(select: Select, types: dict[str, str]) -> CompiledSelect | None:
    """``select`` over rows with these Spark column types (name to ``typeName()``), or None."""
    from pyspark.sql import functions as F

    try:
        outputs = {name: _compile(expr, types) for name, expr in select.outputs.items()}
        where = None if select.where is None else _compile(select.where, types)
    except NotCompilable:
        return None
    if where is not None and where.kind not in ("bool", "null"):
        return None
    kept = F.lit(True) if where is None else F.coalesce(where.value.cast("boolean"), _false())
    where_undecided = _false() if where is None else where.undecided
    undecided = where_undecided
    for output in outputs.values():
        undecided = undecided | output.undecided
    return CompiledSelect(
        outputs={name: c.value for name, c in outputs.items()},
        kept=kept,
        where_undecided=F.coalesce(where_undecided, _false()),
        undecided=F.coalesce(undecided, _false()),
    )
