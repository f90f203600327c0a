"""Declarative transforms compiled to Spark columns equal the row semantics on every row Spark decides."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_expressions import COLUMNS, CONDITIONS, EXPRESSIONS, _same

from backfill.spark_session import spark_session
from transforms.engines.spark_expressions import compile_select
from transforms.expressions import Expr, Select, col, lit

pytestmark = pytest.mark.slow

SPARK_TYPES = {"i": "long", "j": "int", "f": "double", "g": "float", "s": "string", "b": "boolean"}


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    yield spark_session("local[2]", "mlfs-tests")


def _frame(spark: Any, rows: list[dict[str, Any]]) -> Any:
    ddl = ", ".join(f"{name} {spark_type}" for name, spark_type in SPARK_TYPES.items())
    return spark.createDataFrame([tuple(row[n] for n in SPARK_TYPES) for row in rows], ddl)


def _evaluate(spark: Any, rows: list[dict[str, Any]], exprs: list[Expr], where: Expr | None) -> None:
    """Every compilable expression (and the condition) over ``rows`` in one Spark job, checked
    against ``Expr.eval`` on each row Spark decides."""
    frame = _frame(spark, rows)
    types = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    columns, checks = [], []
    for k, expr in enumerate(exprs):
        compiled = compile_select(Select(out=expr), types)
        if compiled is None:
            continue
        columns += [compiled.outputs["out"].alias(f"v{k}"), compiled.undecided.alias(f"u{k}")]
        checks.append((k, expr))
    condition = None if where is None else compile_select(Select(where=where, out=lit(1)), types)
    if condition is not None:
        columns += [condition.kept.alias("kept"), condition.where_undecided.alias("wu")]
    if not columns:
        return
    results = frame.select(*columns).collect()
    for row, got in zip(rows, results, strict=True):
        for k, expr in checks:
            if got[f"u{k}"]:
                continue  # left to Python
            expected = expr.eval(row)  # must not raise where Spark decided the row
            assert _same(expected, got[f"v{k}"]), (
                f"{expr}: row {row} gives {expected!r}, Spark {got[f'v{k}']!r}"
            )
        if condition is not None and where is not None and not got["wu"]:
            assert got["kept"] == (where.eval(row) is True), f"where {where}: row {row}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.fixed_dictionaries({name: values for name, (_, values) in COLUMNS.items()}),
        min_size=1,
        max_size=12,
    ),
    exprs=st.lists(EXPRESSIONS, min_size=1, max_size=25),
    where=st.one_of(st.none(), CONDITIONS),
)
def test_spark_columns_equal_rows(
    spark: Any, rows: list[dict[str, Any]], exprs: list[Expr], where: Expr | None
) -> None:
    _evaluate(spark, rows, exprs, where)


EDGES = [
    {"i": 2**63 - 1, "j": 1, "f": float("nan"), "g": -0.0, "s": "é", "b": None},
    {"i": -(2**63), "j": -1, "f": -0.0, "g": 0.0, "s": "", "b": True},
    {"i": 2**53 + 1, "j": 0, "f": 2.0**53, "g": None, "s": None, "b": False},
    {"i": 0, "j": None, "f": float("inf"), "g": 1.5, "s": "a", "b": True},
]


@pytest.mark.parametrize(
    "expr",
    [
        col("i") + 1,  # overflows on the first row: undecided there
        col("i") * col("i"),
        -col("i"),
        col("i") - col("j"),
        col("i") == col("f"),  # beyond 2**53: undecided
        col("i") < col("f"),
        col("i") / col("j"),  # a zero divisor gives null
        col("f") / col("g"),  # -0.0 is zero
        col("f") == col("f"),  # NaN equals nothing
        col("f") > 1,  # NaN orders with nothing
        col("f") <= col("g"),
        col("g") == 0,
        col("s") < "b",
        col("b") | (col("f") > 0),
    ],
)
def test_edges(spark: Any, expr: Expr) -> None:
    frame = _frame(spark, EDGES)
    types = {f.name: f.dataType.typeName() for f in frame.schema.fields}
    compiled = compile_select(Select(out=expr), types)
    assert compiled is not None
    got = frame.select(compiled.outputs["out"].alias("v"), compiled.undecided.alias("u")).collect()
    decided = 0
    for row, result in zip(EDGES, got, strict=True):
        if not result["u"]:
            decided += 1
            assert _same(expr.eval(row), result["v"]), (expr, row, result["v"])
    assert decided >= 1  # not every edge is sent to Python


def test_types_python_rejects_are_not_compiled(spark: Any) -> None:
    # Spark builds a column only with a session; alone on a worker this test must start one.
    types = {"s": "string", "i": "long", "b": "boolean", "t": "timestamp", "m": "map"}
    for expr in (
        col("s") + 1,
        col("s") < 1,
        col("b") + 1,
        col("i") & col("b"),
        col("t") > 1,
        col("m").is_null(),
    ):
        assert compile_select(Select(out=expr), types) is None, expr
    assert compile_select(Select(where=col("i"), out=col("i")), types) is None
