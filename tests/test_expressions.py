"""Declarative transforms: the row semantics, and Arrow evaluation equal to them wherever it runs."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.expressions import Expr, NotVectorisable, Select, col, lit, when
from transforms.plan import code_reference

ROW = {"s": "failed", "n": None, "i": 7, "f": 2.5, "z": 0, "b": True}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (col("s") == "failed", True),
        (col("n") == "failed", False),
        (col("n") == lit(None), True),
        (col("n") != "x", True),
        (col("n") < 3, None),
        (col("i") + col("n"), None),
        (col("i") / col("z"), None),
        (col("i") / 2, 3.5),
        (col("i") * col("f"), 17.5),
        (-col("i"), -7),
        (col("b") & col("n").is_null(), True),
        (lit(False) & (col("n") > 1), False),
        (lit(True) & (col("n") > 1), None),
        (lit(True) | (col("n") > 1), True),
        (~(col("n") > 1), None),
        (when(col("n") > 1, "big").otherwise("small"), "small"),
        (when(col("i") > 1, "big"), "big"),
        (when(col("i") > 100, "big"), None),
        (col("n").fill_null(0), 0),
        (col("missing").is_null(), True),
    ],
)
def test_row_semantics(expr: Expr, expected: Any) -> None:
    value = expr.eval(ROW)
    assert value == expected and type(value) is type(expected)


def test_select_filters_and_names_outputs() -> None:
    select = Select(where=col("s") == "failed", user=col("u"), one=1)
    assert select({"s": "failed", "u": "a"}) == {"user": "a", "one": 1}
    assert select({"s": "ok", "u": "a"}) is None
    assert select({"u": "a"}) is None  # null condition: not true


def test_type_errors_raise_and_truthiness_is_refused() -> None:
    with pytest.raises(TypeError):
        (col("s") < 1).eval(ROW)
    with pytest.raises(TypeError):
        (col("i") & lit(True)).eval(ROW)
    with pytest.raises(TypeError, match="no truth value"):
        bool(col("i") > 1)
    with pytest.raises(TypeError, match="literal"):
        lit([1, 2])  # type: ignore[arg-type]


def test_registry_records_the_expression_not_code() -> None:
    ref = code_reference(Select(where=col("s") == "failed", n=col("i") + 1))
    assert ref is not None
    assert ref["ref"] == "Select(n=(i + 1), where=(s == 'failed'))"
    assert '["+",["col","i"],["lit",1]]' in ref["declarative"]
    assert ref == code_reference(Select(where=col("s") == "failed", n=col("i") + 1))
    assert ref["source_sha256"] != code_reference(Select(n=col("i") + 2))["source_sha256"]  # type: ignore[index]


# -- Arrow evaluation equals the row semantics wherever it does not refuse -----------------------

COLUMNS = {
    "i": (pa.int64(), st.one_of(st.none(), st.integers(-1000, 1000), st.sampled_from([2**53 + 1, 2**62]))),
    "j": (pa.int32(), st.one_of(st.none(), st.integers(-5, 5))),
    "f": (
        pa.float64(),
        st.one_of(
            st.none(),
            st.floats(allow_nan=True, allow_infinity=True, width=64),
            st.sampled_from([0.0, 2.0**53]),
        ),
    ),
    "g": (pa.float32(), st.one_of(st.none(), st.floats(-100, 100, width=32))),
    "s": (pa.string(), st.one_of(st.none(), st.sampled_from(["", "a", "b", "failed", "é"]))),
    "b": (pa.bool_(), st.one_of(st.none(), st.booleans())),
}

LEAVES = st.one_of(
    st.sampled_from([col(name) for name in COLUMNS] + [col("absent")]),
    st.one_of(
        st.none(), st.booleans(), st.integers(-3, 3), st.floats(-2, 2), st.sampled_from(["a", "failed"])
    ).map(lit),
)


def _extend(children: st.SearchStrategy[Expr]) -> st.SearchStrategy[Expr]:
    ops = st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "+", "-", "*", "/", "&", "|"])
    binary = st.tuples(ops, children, children).map(lambda t: _apply(*t))
    comparison = st.tuples(st.sampled_from(["==", "<", ">=", "&"]), children, children).map(
        lambda t: _apply(*t)
    )
    unary = st.tuples(st.sampled_from(["neg", "not", "is_null"]), children).map(
        lambda t: {"neg": lambda e: -e, "not": lambda e: ~e, "is_null": lambda e: e.is_null()}[t[0]](t[1])
    )
    conditional = st.tuples(comparison, children, children).map(lambda t: when(t[0], t[1]).otherwise(t[2]))
    fill = st.tuples(children, children).map(lambda t: t[0].fill_null(t[1]))
    return st.one_of(binary, binary, binary, unary, conditional, fill)


def _apply(op: str, a: Expr, b: Expr) -> Expr:
    ops = {
        "==": lambda: a == b,
        "!=": lambda: a != b,
        "<": lambda: a < b,
        "<=": lambda: a <= b,
        ">": lambda: a > b,
        ">=": lambda: a >= b,
        "+": lambda: a + b,
        "-": lambda: a - b,
        "*": lambda: a * b,
        "/": lambda: a / b,
        "&": lambda: a & b,
        "|": lambda: a | b,
    }
    return ops[op]()


# Every operator over two leaves (so each operator and type pair is tried often), and deeper trees.
EXPRESSIONS = st.one_of(_extend(LEAVES), _extend(LEAVES), st.recursive(LEAVES, _extend, max_leaves=5))
CONDITIONS = st.tuples(st.sampled_from(["==", "!=", "<", ">=", "&", "|"]), LEAVES, LEAVES).map(
    lambda t: _apply(*t)
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b and type(a) is type(b)


@settings(max_examples=1000, deadline=None)
@given(
    rows=st.lists(st.fixed_dictionaries({name: values for name, (_, values) in COLUMNS.items()}), max_size=8),
    expr=EXPRESSIONS,
    where=st.one_of(st.none(), CONDITIONS),
)
def test_arrow_equals_rows(rows: list[dict[str, Any]], expr: Expr, where: Expr | None) -> None:
    schema = pa.schema([(name, arrow_type) for name, (arrow_type, _) in COLUMNS.items()])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    select = Select(where=where, out=expr)
    try:
        kept, outputs = select.arrow(batch)
    except NotVectorisable:
        return  # the engines use the row function for this batch
    values = outputs["out"].to_pylist()
    for row, keep, value in zip(batch.to_pylist(), kept.to_pylist(), values, strict=True):
        result = select(row)  # must not raise where the Arrow kernels did not
        assert keep == (result is not None)
        if result is not None:
            assert _same(result["out"], value), (
                f"{select}: row {row} gives {result['out']!r}, arrow {value!r}"
            )


@pytest.mark.parametrize("op", ["==", "!=", "<", "<=", ">", ">=", "/"])
def test_ints_beyond_float_precision_are_never_rounded(op: str) -> None:
    # float(2**55 + 1) == 2.0**55: comparing or dividing through floats would give other results
    rows = [{"i": 2**55 + 1, "f": 2.0**55, "k": 3}, {"i": 2**53 + 1, "f": 2.0**53, "k": 2**53}]
    schema = pa.schema([("i", pa.int64()), ("f", pa.float64()), ("k", pa.int64())])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)
    for right in ("f", "k"):
        select = Select(out=_apply(op, col("i"), col(right)))
        try:
            _, outputs = select.arrow(batch)
        except NotVectorisable:
            continue
        for row, value in zip(rows, outputs["out"].to_pylist(), strict=True):
            expected = select(row)
            assert expected is not None and _same(expected["out"], value), (op, right, row)
